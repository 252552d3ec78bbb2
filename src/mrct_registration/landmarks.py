"""Named landmark sets (tumour centroids, vessel bifurcations) in one image's physical space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GeometryError


@dataclass(frozen=True, eq=False)
class Landmarks:
    """``points_mm`` (N, 3) in LPS mm, row n named ``names[n]`` of kind ``kinds[n]``."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    points_mm: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.points_mm, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3 or not (len(self.names) == len(self.kinds) == p.shape[0]):
            raise GeometryError(f"landmarks need N names, N kinds and (N, 3) points; got {len(self.names)}, "
                                f"{len(self.kinds)}, {p.shape}")
        object.__setattr__(self, "points_mm", p)

    def of_kind(self, kind: str) -> Landmarks:
        keep = [i for i, k in enumerate(self.kinds) if k == kind]
        return Landmarks(tuple(self.names[i] for i in keep), tuple(self.kinds[i] for i in keep), self.points_mm[keep])

    def with_points(self, points_mm: np.ndarray) -> Landmarks:
        return Landmarks(self.names, self.kinds, points_mm)

    def __len__(self) -> int:
        return len(self.names)
