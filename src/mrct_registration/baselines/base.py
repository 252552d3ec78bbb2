"""The one interface every registration method implements, and its result type."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import GeometryError
from ..image import Image
from ..transforms import DisplacementField


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """A registration of ``moving`` onto ``fixed``: ``field`` lives on the fixed grid (x_moving = x + u(x), mm),
    ``stage_seconds`` holds the wall time of each stage in the order they ran."""

    method: str
    field: DisplacementField
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.stage_seconds.values()))


@runtime_checkable
class Registration(Protocol):
    """fixed image, moving image -> RegistrationResult (field on the fixed grid)."""

    name: str

    def register(self, fixed: Image, moving: Image) -> RegistrationResult: ...


class StageTimer:
    """Collects named wall-clock stages: ``with timer.stage("optimise"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def check_pair(fixed: Image, moving: Image) -> None:
    for role, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, Image):
            raise TypeError(f"{role} must be an mrct_registration Image, got {type(image).__name__}")
        if min(image.grid.shape) < 4:
            raise GeometryError(f"{role} image {image.grid.shape} is too small for 3D registration (need >= 4 voxels per axis)")
