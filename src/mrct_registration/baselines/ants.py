"""ANTs registrations through antspyx: Rigid (Mattes MI), SyN with Mattes MI for direct multimodal
pMR -> iCT, and SyN with cross-correlation (CC) for CT-CT.

ANTs' forward transforms map fixed points to moving points, our convention; antsApplyTransforms composes
the whole list (affine + warp) into one displacement field on the fixed grid, which is read back as a
:class:`DisplacementField`.

Reproducibility. :data:`ANTS_SEED` is the one random seed of the ANTs baselines: every registration passes it
to antsRegistration (``--random-seed``, through antspyx's ``ants.config``; with an older antspyx, through
``ANTS_RANDOM_SEED``). That fixes the metric sampling, but with more than one ITK thread the multi-threaded
metric sums still differ from run to run (about ±0.01 liver Dice per case for SyN-MI). Exactly repeatable
runs need one ITK thread: ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` set before ANTs runs its first
registration in the process (``mrct-reg eval`` and ``register`` do this by default; ``--threads N`` trades
repeatability for speed). antspyx's own ``set_ants_deterministic(on=True)`` is not used: it also forces
one thread but refuses every transform type except its ``antsRegistrationSyN*Repro`` presets.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import RegistrationFailedError
from ..image import Image
from ..transforms import DisplacementField, field_from_sitk
from .base import RegistrationResult, StageTimer, check_pair

ANTS_SEED = 20190731


def seed_ants() -> None:
    """Make the next ANTs registrations use :data:`ANTS_SEED` (the only place the ANTs seed is set)."""
    import ants

    config = getattr(ants, "config", None)
    if config is not None and hasattr(config, "set_ants_deterministic"):
        # on=False sets only the seed: on=True would refuse our "Rigid"/"SyN" transform types (see above)
        config.set_ants_deterministic(on=False, seed_value=ANTS_SEED)
    else:
        os.environ["ANTS_RANDOM_SEED"] = str(ANTS_SEED)


def to_ants(image: Image):
    import ants

    return ants.from_numpy(
        np.ascontiguousarray(image.array.transpose(2, 1, 0)).astype(np.float32),
        origin=list(image.grid.origin_mm),
        spacing=list(image.grid.spacing_mm),
        direction=image.grid.direction_matrix,
    )


def ants_transforms_to_field(fixed: Image, transform_files: list[str], workdir: Path) -> DisplacementField:
    """Compose ANTs forward transforms (applied last-to-first, as antsApplyTransforms does) into one field."""
    import ants

    fixed_ants = to_ants(fixed)
    composed = ants.apply_transforms(fixed_ants, fixed_ants, transformlist=list(transform_files),
                                     compose=str(workdir / "composed_"))
    if not isinstance(composed, str) or not Path(composed).exists():
        raise RegistrationFailedError(f"antsApplyTransforms did not write a composed field (got {composed!r})")
    field = field_from_sitk(sitk.ReadImage(composed, sitk.sitkVectorFloat64))
    if not field.grid.matches(fixed.grid, atol_mm=1e-2):
        raise RegistrationFailedError(f"ANTs composed field grid {field.grid} differs from the fixed grid {fixed.grid}")
    return DisplacementField(field.displacement_mm, fixed.grid)


class AntsRegistration:
    """``kind``: "rigid" (Rigid, Mattes MI), "syn-mi" (affine + SyN, Mattes MI) or "syn-cc" (affine + SyN, CC)."""

    KINDS = {"rigid": "ants-rigid", "syn-mi": "ants-syn-mi", "syn-cc": "ants-syncc"}

    def __init__(self, kind: str = "syn-mi", reg_iterations: tuple[int, ...] = (40, 20, 0), cc_radius: int = 2) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {tuple(self.KINDS)}, got {kind!r}")
        self.kind, self.reg_iterations, self.cc_radius = kind, tuple(reg_iterations), cc_radius
        self.name = self.KINDS[kind]

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        import ants

        check_pair(fixed, moving)
        seed_ants()
        timer = StageTimer()
        with tempfile.TemporaryDirectory(prefix="mrct_ants_") as tmp:
            workdir = Path(tmp)
            with timer.stage("prepare"):
                f, m = to_ants(fixed), to_ants(moving)
            with timer.stage("optimise"):
                kwargs = {"outprefix": str(workdir / "reg_"), "aff_metric": "mattes"}
                if self.kind == "rigid":
                    kwargs["type_of_transform"] = "Rigid"
                else:
                    kwargs.update(type_of_transform="SyN", reg_iterations=self.reg_iterations)
                    kwargs.update(syn_metric="mattes", syn_sampling=32) if self.kind == "syn-mi" else kwargs.update(
                        syn_metric="CC", syn_sampling=self.cc_radius)
                try:
                    out = ants.registration(f, m, **kwargs)
                except Exception as exc:  # antspyx raises bare RuntimeError/ValueError from the C++ side
                    raise RegistrationFailedError(f"ANTs {self.name} failed: {exc}") from exc
            with timer.stage("to_field"):
                field = ants_transforms_to_field(fixed, out["fwdtransforms"], workdir)
        return RegistrationResult(self.name, field, timer.seconds)
