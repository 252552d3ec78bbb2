"""Known motions between the phantom's images: rigid repositioning, breathing and smooth diffeomorphic
deformation, and the local push of tissue along an inserted needle.

A :class:`Motion` maps points of a *fixed* image's space to the *moving* image's space,
x_moving = rigid(x + d(x)), where d = exp(v) - id is a stationary velocity field v integrated by scaling
and squaring (Arsigny et al. 2006), so the deformation is diffeomorphic and its inverse is found by
fixed-point iteration (:func:`mrct_registration.transforms.invert_points`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..image import Grid
from ..transforms import DisplacementField, invert_points


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """R = Rz @ Ry @ Rx for rotations (rx, ry, rz) in radians about the x, y, z axes."""
    rx, ry, rz = np.asarray(angles_rad, dtype=np.float64)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


@dataclass(frozen=True, eq=False)
class RigidMotion:
    """x -> R (x - c) + c + t, with R a rotation, c the rotation centre and t the translation (mm)."""

    rotation: np.ndarray
    center_mm: np.ndarray
    translation_mm: np.ndarray

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        return (points_mm - self.center_mm) @ self.rotation.T + self.center_mm + self.translation_mm

    def inverse(self, points_mm: np.ndarray) -> np.ndarray:
        return (points_mm - self.center_mm - self.translation_mm) @ self.rotation + self.center_mm


def motion_grid(spacing_mm: float = 6.0, half_extent_mm: tuple[float, float, float] = (190.0, 160.0, 170.0)) -> Grid:
    """The coarse grid, centred on the canonical frame, on which velocity fields are stored."""
    n = [int(np.ceil(2 * h / spacing_mm)) + 1 for h in half_extent_mm]
    origin = [-(ni - 1) * spacing_mm / 2 for ni in n]
    return Grid((n[2], n[1], n[0]), (spacing_mm,) * 3, tuple(origin))


def exponentiate(velocity: DisplacementField, steps: int = 7) -> DisplacementField:
    """exp(v) - id by scaling and squaring: d <- v / 2^steps, then ``steps`` times d(x) <- d(x) + d(x + d(x))."""
    d = DisplacementField((velocity.displacement_mm / 2.0**steps).astype(np.float64), velocity.grid)
    x = velocity.grid.physical_points()
    for _ in range(steps):
        d = DisplacementField(d.displacement_mm + d.displacement_at(x + d.displacement_mm), velocity.grid)
    return DisplacementField(d.displacement_mm.astype(np.float32), velocity.grid)


def breathing_velocity(grid: Grid, center_mm: np.ndarray, shift_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """A smooth bump moving the upper abdomen by ``shift_mm`` at ``center_mm``, fading with distance."""
    x = grid.physical_points()
    weight = np.exp(-np.sum((x - center_mm) ** 2, axis=-1) / (2 * sigma_mm**2))
    return weight[..., None] * np.asarray(shift_mm)


def random_smooth_velocity(grid: Grid, rng: np.random.Generator, amplitude_mm: float, smoothness_mm: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled so its largest vector has length ``amplitude_mm``."""
    sigma_vox = [smoothness_mm / s for s in grid.spacing_mm[::-1]]
    v = np.stack([ndimage.gaussian_filter(rng.normal(size=grid.shape), sigma_vox, mode="nearest") for _ in range(3)], -1)
    return v * (amplitude_mm / max(float(np.linalg.norm(v, axis=-1).max()), 1e-12))


def needle_push_velocity(grid: Grid, entry_mm: np.ndarray, tip_mm: np.ndarray, push_mm: float, sigma_mm: float) -> np.ndarray:
    """Tissue next to an inserted needle is dragged along it: in the fixed (intra-procedural) space the
    tissue now at x came from x - push * direction, so v points against the insertion direction."""
    x = grid.physical_points()
    ab = tip_mm - entry_mm
    t = np.clip(((x - entry_mm) @ ab) / float(ab @ ab), 0.0, 1.0)
    dist = np.linalg.norm(x - (entry_mm + t[..., None] * ab), axis=-1)
    direction = ab / np.linalg.norm(ab)
    return -push_mm * np.exp(-(dist**2) / (2 * sigma_mm**2))[..., None] * direction


@dataclass(frozen=True, eq=False)
class Motion:
    """x_moving = rigid(x + d(x)) for fixed-space points x (mm)."""

    deformation: DisplacementField  # exp(v) - id on a coarse motion grid
    rigid: RigidMotion

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        points_mm = np.asarray(points_mm, dtype=np.float64)
        return self.rigid(self.deformation.map_points(points_mm))

    def inverse(self, points_mm: np.ndarray) -> np.ndarray:
        """Moving-space points -> fixed-space points (exact up to the fixed-point tolerance, 1e-4 mm)."""
        return invert_points(self, np.asarray(points_mm, dtype=np.float64))

    def field_on(self, grid: Grid) -> DisplacementField:
        """This motion as a displacement field on a fixed image's grid (our registration convention)."""
        return DisplacementField.from_point_map(grid, self)


def sample_rigid(rng: np.random.Generator, max_angle_deg: float, max_shift_mm: float, center_mm: np.ndarray) -> RigidMotion:
    angles = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg, size=3))
    return RigidMotion(rotation_matrix(angles), np.asarray(center_mm, dtype=np.float64), rng.uniform(-max_shift_mm, max_shift_mm, 3))
