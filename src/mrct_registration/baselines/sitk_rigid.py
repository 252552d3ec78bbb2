"""Rigid registration with SimpleITK (Euler 3D, multi-resolution), the FLIRT-like baseline.

With the Mattes mutual-information metric it aligns MR to CT; with ``metric="ncc"`` or ``"mse"`` it is
the mono-modal variant, which is expected to fail across modalities (shown in the tests).
"""

from __future__ import annotations

import SimpleITK as sitk

from ..errors import RegistrationFailedError
from ..image import Image
from ..io import to_sitk
from ..transforms import field_from_sitk_transform
from .base import RegistrationResult, StageTimer, check_pair

METRICS = ("mattes", "ncc", "mse")


class SitkRigidRegistration:
    def __init__(self, metric: str = "mattes", bins: int = 32, sampling: float = 0.2, iterations: int = 200,
                 shrink_factors: tuple[int, ...] = (4, 2, 1), seed: int = 12345) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric, self.bins, self.sampling, self.iterations = metric, bins, sampling, iterations
        self.shrink_factors, self.seed = shrink_factors, seed
        self.name = {"mattes": "sitk-rigid-mi", "ncc": "sitk-rigid-ncc", "mse": "sitk-rigid-mse"}[metric]

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        check_pair(fixed, moving)
        timer = StageTimer()
        with timer.stage("prepare"):
            f = sitk.Cast(to_sitk(fixed), sitk.sitkFloat32)
            m = sitk.Cast(to_sitk(moving), sitk.sitkFloat32)
            initial = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                                        sitk.CenteredTransformInitializerFilter.GEOMETRY)
            method = sitk.ImageRegistrationMethod()
            if self.metric == "mattes":
                method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=self.bins)
            elif self.metric == "ncc":
                method.SetMetricAsCorrelation()
            else:
                method.SetMetricAsMeanSquares()
            method.SetMetricSamplingStrategy(method.RANDOM)
            method.SetMetricSamplingPercentage(self.sampling, self.seed)
            method.SetInterpolator(sitk.sitkLinear)
            method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                             numberOfIterations=self.iterations,
                                                             gradientMagnitudeTolerance=1e-8)
            method.SetOptimizerScalesFromPhysicalShift()
            method.SetShrinkFactorsPerLevel(list(self.shrink_factors))
            method.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in self.shrink_factors])
            method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
            method.SetInitialTransform(initial, inPlace=False)
        with timer.stage("optimise"):
            try:
                transform = method.Execute(f, m)
            except RuntimeError as exc:
                raise RegistrationFailedError(f"SimpleITK rigid registration ({self.metric}) failed: {exc}") from exc
        with timer.stage("to_field"):
            field = field_from_sitk_transform(transform, fixed.grid)
        return RegistrationResult(self.name, field, timer.seconds)
