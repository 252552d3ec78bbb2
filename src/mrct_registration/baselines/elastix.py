"""elastix (through itk-elastix): rigid initialisation then a cubic B-spline with Mattes MI
(AdvancedMattesMutualInformation), multi-resolution, the classical deformable MI baseline.

transformix writes the displacement T(x) - x on the fixed image domain, with T mapping fixed to moving
points (the ITK convention, which is ours).
"""

from __future__ import annotations

import tempfile

import numpy as np

from ..errors import MrctError, RegistrationFailedError
from ..image import Grid, Image
from ..transforms import DisplacementField
from .base import RegistrationResult, StageTimer, check_pair


def _load_itk_elastix() -> None:
    """Warm-up: itk loads its wrapped modules lazily on first attribute access, and the elastix module takes
    seconds to load. Touch it once here so that this load is not counted in the timed stages."""
    import itk

    itk.ParameterObject.New()


def itk_grid(image) -> Grid:
    """The :class:`Grid` (shape, spacing, origin, direction) of an itk image."""
    import itk

    size = [int(v) for v in image.GetLargestPossibleRegion().GetSize()]  # (x, y, z)
    return Grid(tuple(size[::-1]), tuple(float(v) for v in image.GetSpacing()),
                tuple(float(v) for v in image.GetOrigin()),
                tuple(np.asarray(itk.GetArrayFromMatrix(image.GetDirection()), dtype=np.float64).ravel()))


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
        import itk

        check_pair(fixed, moving)
        _load_itk_elastix()  # before timing
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
                try:
                    grid = itk_grid(deformation)
                except MrctError as exc:
                    raise RegistrationFailedError(f"transformix returned a field with an unusable grid: {exc}") from exc
            # the field is attached to the fixed grid below: its whole geometry must be that grid, as for ANTs
            if array.shape != (*fixed.grid.shape, 3) or not grid.matches(fixed.grid, atol_mm=1e-2):
                raise RegistrationFailedError(f"transformix returned a field of shape {array.shape} on {grid}; "
                                              f"expected shape {(*fixed.grid.shape, 3)} on the fixed grid {fixed.grid}")
        return RegistrationResult(self.name, DisplacementField(array, fixed.grid), timer.seconds)
