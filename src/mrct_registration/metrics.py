"""Registration accuracy measures on the fixed grid: overlap (Dice), surface distance (HD95), landmark
error (TRE), dense end-point error against the ground-truth field, and folding (det J <= 0)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import GeometryError
from .image import Grid
from .landmarks import Landmarks
from .transforms import DisplacementField, jacobian_determinant


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|) of two boolean masks of one shape; 1.0 when both are empty."""
    if a.shape != b.shape:
        raise GeometryError(f"masks must have one shape, got {a.shape} and {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95_mm(a: np.ndarray, b: np.ndarray, grid: Grid) -> float:
    """95th percentile of the symmetric surface-to-surface distances (mm) of two masks on ``grid``.

    Infinite when exactly one mask is empty, 0 when both are.
    """
    if a.shape != b.shape or a.shape != grid.shape:
        raise GeometryError(f"masks {a.shape}, {b.shape} must match the grid {grid.shape}")
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    sampling = grid.spacing_mm[::-1]
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return float(np.percentile(np.concatenate([dist_to_b[sa], dist_to_a[sb]]), 95))


def target_registration_errors_mm(field: DisplacementField, fixed: Landmarks, moving: Landmarks) -> np.ndarray:
    """|x_fixed + u(x_fixed) - x_moving| per landmark pair (mm); the two sets must name the same points."""
    if fixed.names != moving.names:
        raise GeometryError(f"landmark names differ: {fixed.names} vs {moving.names}")
    return np.linalg.norm(field.map_points(fixed.points_mm) - moving.points_mm, axis=1)


def endpoint_error_mm(field: DisplacementField, truth: DisplacementField, mask: np.ndarray | None = None) -> float:
    """Mean |u - u_true| (mm) over ``mask`` (all voxels by default); both fields on one grid."""
    field.grid.require_same(truth.grid, "estimated and ground-truth fields")
    err = np.linalg.norm(field.displacement_mm - truth.displacement_mm, axis=-1)
    if mask is not None:
        if mask.shape != err.shape:
            raise GeometryError(f"mask shape {mask.shape} does not match field grid {err.shape}")
        err = err[mask.astype(bool)]
    return float(err.mean()) if err.size else float("nan")


def folding_percent(field: DisplacementField, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels (inside ``mask`` if given) where det J <= 0, i.e. the map folds."""
    det = jacobian_determinant(field)
    if mask is not None:
        det = det[mask.astype(bool)]
    return 100.0 * float(np.mean(det <= 0.0)) if det.size else 0.0
