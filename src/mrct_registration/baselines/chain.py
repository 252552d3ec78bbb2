"""The paper's route built from classical parts: register pMR to pCT before the procedure (multimodal, no time
pressure), register pCT to iCT during it (mono-modal CT-CT), and compose the two fields so the pMR is resampled
once (Wei et al. 2019, Sec. 2). Only the second registration and the composition count as intra-procedural time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..image import Image
from ..transforms import compose
from .base import Registration, RegistrationResult, StageTimer, check_pair


@runtime_checkable
class ChainRegistration(Protocol):
    """fixed (iCT), intermediate (pCT), moving (pMR) -> RegistrationResult on the fixed grid."""

    name: str

    def register_via(self, fixed: Image, intermediate: Image, moving: Image) -> RegistrationResult: ...


class TwoStageRegistration:
    """pMR -> pCT with ``pre`` (stages prefixed ``pre_``), pCT -> iCT with ``intra`` (``intra_``), then compose."""

    def __init__(self, name: str, pre: Registration, intra: Registration) -> None:
        self.name, self.pre, self.intra = name, pre, intra

    def register_via(self, fixed: Image, intermediate: Image, moving: Image) -> RegistrationResult:
        check_pair(fixed, intermediate)
        check_pair(intermediate, moving)
        pre = self.pre.register(intermediate, moving)
        intra = self.intra.register(fixed, intermediate)
        timer = StageTimer()
        with timer.stage("intra_compose"):
            field = compose(pre.field, intra.field)
        stages = {f"pre_{k}": v for k, v in pre.stage_seconds.items()}
        stages.update({f"intra_{k}": v for k, v in intra.stage_seconds.items()})
        stages.update(timer.seconds)
        return RegistrationResult(self.name, field, stages)
