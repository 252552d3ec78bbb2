"""Hole masks for the inpainting stage: what to fill at test time, and what to hide during training.

Convention: a *hole* mask is a boolean array, True where pixels are to be filled (the network's ``valid``
is its complement). At test time the hole comes from the iCT alone (a metal threshold plus dilation, no
ground truth, Wei et al. 2019, Sec. 2.2); during self-supervised training it is drawn on artifact-free
pCT slices as a thick needle line plus thin radial streak lines through it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import GeometryError

METAL_THRESHOLD_HU = 1200.0  # above cortical bone with noise (< ~950 HU in the phantom), below the steel core


def metal_hole_mask(ct_hu: np.ndarray, threshold_hu: float = METAL_THRESHOLD_HU, dilation_px: int = 2) -> np.ndarray:
    """Probe hole of an iCT slice (ny, nx) or volume (nz, ny, nx): ``HU > threshold_hu``, dilated in-plane.

    The dilation (a disc of radius ``dilation_px`` pixels, per slice) covers the needle's partial-volume rim
    and the brightest streaks next to it. Returns a bool array of the input's shape.
    """
    ct_hu = np.asarray(ct_hu)
    if ct_hu.ndim not in (2, 3):
        raise GeometryError(f"expected a CT slice (ny, nx) or volume (nz, ny, nx), got shape {ct_hu.shape}")
    if dilation_px < 0:
        raise ValueError(f"dilation_px must be >= 0, got {dilation_px}")
    hole = ct_hu > threshold_hu
    if dilation_px == 0 or not hole.any():
        return hole
    r = np.arange(-dilation_px, dilation_px + 1)
    disc = (r[:, None] ** 2 + r[None, :] ** 2) <= dilation_px**2
    structure = disc if ct_hu.ndim == 2 else disc[None]
    return ndimage.binary_dilation(hole, structure=structure)


def _distance_to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def synthetic_probe_mask(shape: tuple[int, int], rng: np.random.Generator, needle_width_px: tuple[float, float] = (2.0, 5.0),
                         n_streaks: tuple[int, int] = (2, 6), streak_width_px: float = 1.0,
                         streak_length_fraction: tuple[float, float] = (0.3, 0.8)) -> np.ndarray:
    """A training hole (ny, nx): a needle and the streaks it would cause, at random (seeded by ``rng``).

    The needle is a segment of width ``needle_width_px`` (pixels, uniform in the range) from a point near the
    slice border to a point in the central half; ``n_streaks`` (inclusive range) thin lines of width
    ``streak_width_px`` cross it at a random point along it, at random angles, each with a length of
    ``streak_length_fraction`` (of the slice diagonal) centred on the needle. Returns a bool array.
    """
    if len(shape) != 2 or min(shape) < 4:
        raise GeometryError(f"a training slice shape must be (ny, nx) with both >= 4, got {shape}")
    ny, nx = shape
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    points = np.stack([yy, xx], axis=-1)
    size = np.array([ny, nx], dtype=np.float64)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    start = size / 2 + 0.45 * size * np.array([np.sin(angle), np.cos(angle)])
    tip = size * rng.uniform(0.25, 0.75, size=2)
    hole = _distance_to_segment(points, start, tip) <= rng.uniform(*needle_width_px) / 2
    diagonal = float(np.hypot(ny, nx))
    for _ in range(rng.integers(n_streaks[0], n_streaks[1] + 1)):
        centre = start + rng.uniform(0.2, 1.0) * (tip - start)
        theta = rng.uniform(0.0, np.pi)
        half = rng.uniform(*streak_length_fraction) * diagonal / 2
        offset = half * np.array([np.sin(theta), np.cos(theta)])
        hole |= _distance_to_segment(points, centre - offset, centre + offset) <= streak_width_px / 2
    return hole
