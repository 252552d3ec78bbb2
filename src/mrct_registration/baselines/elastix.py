"""elastix (through itk-elastix): rigid initialisation then a cubic B-spline with Mattes MI
(AdvancedMattesMutualInformation), multi-resolution, the classical deformable MI baseline.

transformix writes the displacement T(x) - x on the fixed image domain, with T mapping fixed to moving
points (the ITK convention, which is ours).
"""

from __future__ import annotations

import tempfile

import numpy as np

from ..errors import RegistrationFailedError
from ..image import Image
from ..transforms import DisplacementField
from .base import RegistrationResult, StageTimer, check_pair


def to_itk(image: Image):
    import itk

    out = itk.GetImageFromArray(np.ascontiguousarray(image.array.astype(np.float32)))
    out.SetSpacing([float(s) for s in image.grid.spacing_mm])
    out.SetOrigin([float(s) for s in image.grid.origin_mm])
    out.SetDirection(itk.GetMatrixFromArray(image.grid.direction_matrix.astype(np.float64)))
    return out


class ElastixBsplineRegistration:
    name = "elastix-bspline-mi"

    def __init__(self, grid_spacing_mm: float = 24.0, iterations: int = 150, resolutions: int = 3,
                 samples: int = 2048, seed: int = 20190731) -> None:
        self.grid_spacing_mm, self.iterations, self.resolutions = grid_spacing_mm, iterations, resolutions
        self.samples, self.seed = samples, seed

    def _parameters(self):
        import itk

        params = itk.ParameterObject.New()
        common = {
            "Metric": ["AdvancedMattesMutualInformation"],
            "NumberOfHistogramBins": ["32"],
            "NumberOfSpatialSamples": [str(self.samples)],
            "NumberOfResolutions": [str(self.resolutions)],
            "MaximumNumberOfIterations": [str(self.iterations)],
            "RandomSeed": [str(self.seed)],
            "WriteResultImage": ["false"],
        }
        rigid = params.GetDefaultParameterMap("rigid", self.resolutions)
        bspline = params.GetDefaultParameterMap("bspline", self.resolutions, self.grid_spacing_mm)
        for pmap in (rigid, bspline):
            for key, value in common.items():
                pmap[key] = value
        rigid["AutomaticTransformInitialization"] = ["true"]
        rigid["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
        params.AddParameterMap(rigid)
        params.AddParameterMap(bspline)
        return params

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        import itk  # imported before timing: itk loads its modules lazily (seconds on first use)

        check_pair(fixed, moving)
        itk.ParameterObject.New()
        timer = StageTimer()
        with timer.stage("prepare"):
            f, m = to_itk(fixed), to_itk(moving)
            params = self._parameters()
        with timer.stage("optimise"):
            try:
                _, result_params = itk.elastix_registration_method(f, m, parameter_object=params, log_to_console=False)
            except Exception as exc:  # itk raises RuntimeError with elastix's log message
                raise RegistrationFailedError(f"elastix failed: {exc}") from exc
        with timer.stage("to_field"):
            # transformix also writes the field to its output directory (default: the working
            # directory); keep it out of the user's way
            with tempfile.TemporaryDirectory(prefix="mrct-transformix-") as scratch:
                deformation = itk.transformix_deformation_field(m, result_params, output_directory=scratch)
                array = np.asarray(itk.GetArrayFromImage(deformation), dtype=np.float32)
            if array.shape != (*fixed.grid.shape, 3):
                raise RegistrationFailedError(f"transformix returned a field of shape {array.shape}, expected "
                                              f"{(*fixed.grid.shape, 3)}")
        return RegistrationResult(self.name, DisplacementField(array, fixed.grid), timer.seconds)
