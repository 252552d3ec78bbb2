"""Voxel grids in physical space and images on them.

Conventions used throughout the package (ITK/DICOM "LPS" world):

* Physical coordinates are in millimetres, axes x = patient Left, y = Posterior, z = Superior.
* Spacing, origin and the direction-matrix columns are given in (x, y, z) order, as in SimpleITK.
* Arrays are indexed ``array[k, j, i]`` (z, y, x), exactly as ``SimpleITK.GetArrayFromImage`` returns
  them and as PyTorch lays out volumes (N, C, D, H, W) with D = z, H = y, W = x.
* The physical point of continuous index (i, j, k) is ``origin + direction @ (spacing * (i, j, k))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GeometryError


@dataclass(frozen=True)
class Grid:
    """A regular 3D voxel grid placed in physical (LPS, mm) space.

    shape: array shape (nz, ny, nx); spacing_mm, origin_mm: (x, y, z); direction: 3x3 row-major, columns
    are the physical directions of the index axes i, j, k.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.asarray(self.direction).ravel()))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"a grid needs a 3D shape (nz, ny, nx) of positive sizes, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise GeometryError(f"spacing_mm must be 3 positive values (x, y, z), got {self.spacing_mm}")
        if len(self.origin_mm) != 3:
            raise GeometryError(f"origin_mm must be 3 values (x, y, z), got {self.origin_mm}")
        if len(self.direction) != 9:
            raise GeometryError(f"direction must be a 3x3 matrix, got {len(self.direction)} values")
        d = self.direction_matrix
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise GeometryError(f"direction must be orthonormal, got\n{d}")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """3x3 matrix M with physical = origin + M @ (i, j, k)."""
        return self.direction_matrix @ np.diag(self.spacing_mm)

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        return (self.shape[2], self.shape[1], self.shape[0])

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices (..., 3) in (i, j, k) order -> physical points (..., 3) in mm."""
        return np.asarray(index_xyz, dtype=np.float64) @ self.index_to_physical_matrix.T + np.asarray(self.origin_mm)

    def physical_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Physical points (..., 3) in mm -> continuous indices (..., 3) in (i, j, k) order."""
        inv = np.linalg.inv(self.index_to_physical_matrix)
        return (np.asarray(points_mm, dtype=np.float64) - np.asarray(self.origin_mm)) @ inv.T

    def physical_points(self, dtype: type = np.float64) -> np.ndarray:
        """Physical position of every voxel centre, shape (nz, ny, nx, 3), components (x, y, z) in mm."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in self.shape), indexing="ij")
        return self.index_to_physical(np.stack([i, j, k], axis=-1)).astype(dtype)

    def center_mm(self) -> np.ndarray:
        return self.index_to_physical((np.asarray(self.size_xyz, dtype=np.float64) - 1.0) / 2.0)

    def matches(self, other: Grid, atol_mm: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=1e-6)
            and np.allclose(self.origin_mm, other.origin_mm, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def require_same(self, other: Grid, what: str = "images") -> None:
        if not self.matches(other):
            raise GeometryError(f"{what} must share one grid, got\n  {self}\n  {other}")


@dataclass(frozen=True, eq=False)
class Image:
    """A scalar volume on a grid. ``array`` has shape ``grid.shape`` = (nz, ny, nx)."""

    array: np.ndarray
    grid: Grid
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise GeometryError(
                f"an image array must be a 3D numpy array (nz, ny, nx), got {getattr(self.array, 'shape', type(self.array))}"
            )
        if tuple(self.array.shape) != self.grid.shape:
            raise GeometryError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    def with_array(self, array: np.ndarray) -> Image:
        """The same geometry holding other values."""
        return Image(np.asarray(array), self.grid, dict(self.meta))
