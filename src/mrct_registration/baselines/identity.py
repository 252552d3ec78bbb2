"""The do-nothing baseline: u = 0, i.e. the images are assumed to be aligned in scanner coordinates."""

from __future__ import annotations

from ..image import Image
from ..transforms import DisplacementField
from .base import RegistrationResult, StageTimer, check_pair


class IdentityRegistration:
    name = "identity"

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        check_pair(fixed, moving)
        timer = StageTimer()
        with timer.stage("to_field"):
            field = DisplacementField.identity(fixed.grid)
        return RegistrationResult(self.name, field, timer.seconds)
