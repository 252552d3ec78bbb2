"""Dense displacement fields in physical space, and the geometric operations on them.

Convention (one for the whole package, the ITK/ANTs one):

    A registration of a *moving* image onto a *fixed* image is a displacement field ``u`` stored on the
    fixed image's grid, in millimetres, with components (x, y, z) in LPS physical coordinates, such that

        x_moving = x_fixed + u(x_fixed).

    Warping the moving image onto the fixed grid is "pull back": ``warped(x) = moving(x + u(x))``.
    A field named ``pmr_to_ict`` registers moving pMR onto fixed iCT (it lives on the iCT grid).

Between voxel centres ``u`` is trilinearly interpolated and outside its grid it is extended by the
nearest edge value, so a field is a transform of all of space. Chains are composed first and the moving
image resampled once (Wei et al. 2019, Sec. 2: pMR->iCT is the composition of pMR->pCT and pCT->iCT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import GeometryError
from .image import Grid, Image

PointMap = Callable[[np.ndarray], np.ndarray]


def _map_coords(array: np.ndarray, grid: Grid, points_mm: np.ndarray, order: int, mode: str, cval: float) -> np.ndarray:
    """Sample a scalar (nz, ny, nx) array at physical points (..., 3); returns values of shape (...)."""
    idx = grid.physical_to_index(points_mm)
    coords = np.stack([idx[..., 2], idx[..., 1], idx[..., 0]], axis=0)
    if mode != "constant":
        return ndimage.map_coordinates(array, coords, order=order, mode=mode, cval=cval, prefilter=False)
    # A voxel covers +-0.5 index around its centre: points there take the edge value (as in ITK), so round-off
    # at the border (index -1e-12) never turns an edge voxel into fill; farther points get ``cval``.
    shape = np.asarray(array.shape, dtype=np.float64).reshape(3, *([1] * (coords.ndim - 1)))
    outside = np.any((coords < -0.5) | (coords > shape - 0.5), axis=0)
    values = ndimage.map_coordinates(array, coords, order=order, mode="nearest", prefilter=False)
    values[outside] = cval
    return values


def sample_image(image: Image, points_mm: np.ndarray, order: int = 1, fill_value: float = 0.0) -> np.ndarray:
    """Values of ``image`` at physical points (..., 3) mm: trilinear (order=1) or nearest (order=0).

    Points outside the image grid get ``fill_value``.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest, labels) or 1 (linear, intensities), got {order}")
    return _map_coords(image.array, image.grid, points_mm, order, "constant", fill_value)


@dataclass(frozen=True, eq=False)
class DisplacementField:
    """u(x) on ``grid``: ``displacement_mm`` has shape (nz, ny, nx, 3), components (x, y, z) in mm (LPS)."""

    displacement_mm: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        d = self.displacement_mm
        if not isinstance(d, np.ndarray) or d.ndim != 4 or d.shape[-1] != 3:
            raise GeometryError(f"displacement_mm must have shape (nz, ny, nx, 3), got {getattr(d, 'shape', type(d))}")
        if tuple(d.shape[:3]) != self.grid.shape:
            raise GeometryError(f"field shape {d.shape[:3]} does not match grid shape {self.grid.shape}")

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def identity(cls, grid: Grid) -> DisplacementField:
        return cls(np.zeros((*grid.shape, 3), dtype=np.float32), grid)

    @classmethod
    def from_point_map(cls, grid: Grid, point_map: PointMap) -> DisplacementField:
        """u(x) = point_map(x) - x at every voxel centre of ``grid`` (point_map: fixed mm -> moving mm)."""
        x = grid.physical_points()
        return cls((point_map(x) - x).astype(np.float32), grid)

    @classmethod
    def from_affine(cls, grid: Grid, matrix: np.ndarray, translation_mm: np.ndarray) -> DisplacementField:
        """The field of x_moving = matrix @ x_fixed + translation_mm."""
        matrix, translation_mm = np.asarray(matrix, dtype=np.float64), np.asarray(translation_mm, dtype=np.float64)
        return cls.from_point_map(grid, lambda x: x @ matrix.T + translation_mm)

    @classmethod
    def from_torch(cls, displacement, grid: Grid, units: str = "voxel", channel_order: str = "zyx") -> DisplacementField:
        """From a PyTorch (or numpy) displacement tensor of shape (3, D, H, W) or (1, 3, D, H, W).

        This is the layout VoxelMorph's ``SpatialTransformer`` and MONAI's ``Warp`` use: D, H, W = z, y, x
        of ``grid`` and, by default, channels in the same (z, y, x) order and in *voxel* units. Pass
        ``units="mm"`` / ``channel_order="xyz"`` for a network that predicts physical displacements.
        """
        array = displacement.detach().cpu().numpy() if hasattr(displacement, "detach") else np.asarray(displacement)
        if array.ndim == 5:
            if array.shape[0] != 1:
                raise GeometryError(f"expected a batch of one field, got batch size {array.shape[0]}")
            array = array[0]
        if array.ndim != 4 or array.shape[0] != 3:
            raise GeometryError(f"expected a (3, D, H, W) displacement tensor, got shape {array.shape}")
        if tuple(array.shape[1:]) != grid.shape:
            raise GeometryError(f"tensor spatial shape {array.shape[1:]} does not match grid shape {grid.shape}")
        if channel_order not in ("zyx", "xyz") or units not in ("voxel", "mm"):
            raise ValueError(f"channel_order must be 'zyx' or 'xyz' and units 'voxel' or 'mm', got {channel_order}, {units}")
        channels_last = np.moveaxis(array, 0, -1).astype(np.float64)
        if channel_order == "zyx":
            channels_last = channels_last[..., ::-1]
        if units == "voxel":
            channels_last = channels_last @ grid.index_to_physical_matrix.T
        return cls(channels_last.astype(np.float32), grid)

    def to_torch(self, units: str = "voxel"):
        """The inverse of :meth:`from_torch` with channel order (z, y, x): a float32 tensor (1, 3, D, H, W)."""
        import torch

        d = self.displacement_mm.astype(np.float64)
        if units == "voxel":
            d = d @ np.linalg.inv(self.grid.index_to_physical_matrix).T
        elif units != "mm":
            raise ValueError(f"units must be 'voxel' or 'mm', got {units!r}")
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(d[..., ::-1], -1, 0)[None]).astype(np.float32))

    # -- evaluation ---------------------------------------------------------------------------------------

    def displacement_at(self, points_mm: np.ndarray) -> np.ndarray:
        """u at arbitrary physical points (..., 3), trilinear inside the grid, edge-extended outside."""
        points_mm = np.asarray(points_mm, dtype=np.float64)
        return np.stack(
            [_map_coords(self.displacement_mm[..., c], self.grid, points_mm, 1, "nearest", 0.0) for c in range(3)],
            axis=-1,
        )

    def map_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Fixed-space points (..., 3) mm -> their moving-space positions x + u(x)."""
        points_mm = np.asarray(points_mm, dtype=np.float64)
        return points_mm + self.displacement_at(points_mm)

    def magnitude_mm(self) -> np.ndarray:
        return np.linalg.norm(self.displacement_mm, axis=-1)


def compose(moving_to_mid: DisplacementField, mid_to_fixed: DisplacementField) -> DisplacementField:
    """Chain two registrations into one field on the fixed grid.

    ``moving_to_mid`` (on the mid grid): x_moving = x_mid + a(x_mid); ``mid_to_fixed`` (on the fixed grid):
    x_mid = x_fixed + b(x_fixed). Result c on the fixed grid: c(x) = b(x) + a(x + b(x)).
    """
    x = mid_to_fixed.grid.physical_points()
    b = mid_to_fixed.displacement_mm.astype(np.float64)
    c = b + moving_to_mid.displacement_at(x + b)
    return DisplacementField(c.astype(np.float32), mid_to_fixed.grid)


def invert_points(point_map: PointMap, targets_mm: np.ndarray, iterations: int = 50, tol_mm: float = 1e-4) -> np.ndarray:
    """Solve point_map(z) = t for z by fixed-point iteration z <- z - (point_map(z) - t).

    Converges when point_map = id + u with |grad u| < 1 (a diffeomorphism close to identity), which holds
    for the smooth phantom motions and for regularised registrations. Raises :class:`GeometryError` naming
    the largest residual |point_map(z) - t| when it is still above ``tol_mm`` after ``iterations`` steps
    (a map that is not contractive there, e.g. folding or very large local deformation).
    """
    targets_mm = np.asarray(targets_mm, dtype=np.float64)
    z = targets_mm.copy()
    worst = float("inf")
    for _ in range(iterations):
        residual = point_map(z) - targets_mm
        worst = float(np.max(np.abs(residual))) if residual.size else 0.0
        if worst < tol_mm:
            return z
        z -= residual
    residual = point_map(z) - targets_mm
    worst = float(np.max(np.abs(residual))) if residual.size else 0.0
    if not worst < tol_mm:  # also catches NaN
        raise GeometryError(f"inversion did not converge: largest residual {worst:.3g} mm after {iterations} "
                            f"fixed-point iterations (tolerance {tol_mm:g} mm); the map is not close enough to a "
                            f"diffeomorphism near the identity (|grad u| >= 1 somewhere)")
    return z


def invert(field: DisplacementField, grid: Grid | None = None, iterations: int = 50,
           tol_mm: float = 1e-4) -> DisplacementField:
    """The inverse field w on ``grid`` (default: the field's own grid): x_fixed = x_moving + w(x_moving).

    Fixed-point iteration w(y) <- -u(y + w(y)), i.e. :func:`invert_points` applied to every voxel centre;
    raises :class:`GeometryError` when it does not converge to ``tol_mm``.
    """
    grid = grid or field.grid
    y = grid.physical_points()
    z = invert_points(field.map_points, y, iterations=iterations, tol_mm=tol_mm)
    return DisplacementField((z - y).astype(np.float32), grid)


def warp_image(moving: Image, field: DisplacementField, fill_value: float | None = None) -> Image:
    """Resample ``moving`` onto ``field.grid`` with trilinear interpolation (one resampling).

    Outside the moving image's field of view the value is ``fill_value`` (default: the image minimum, i.e.
    air for CT and background for MR).
    """
    fill = float(moving.array.min()) if fill_value is None else float(fill_value)
    values = sample_image(moving, field.map_points(field.grid.physical_points()), order=1, fill_value=fill)
    return Image(values.astype(np.float32), field.grid, dict(moving.meta))


def warp_labels(moving: Image, field: DisplacementField) -> Image:
    """Resample a label map onto ``field.grid`` with nearest-neighbour interpolation (labels stay labels)."""
    values = sample_image(moving, field.map_points(field.grid.physical_points()), order=0, fill_value=0)
    return Image(values.astype(moving.array.dtype), field.grid, dict(moving.meta))


def jacobian_determinant(field: DisplacementField) -> np.ndarray:
    """det(I + du/dx) of x -> x + u(x) at every voxel, with derivatives in physical space (mm/mm).

    Central differences inside, one-sided at the border. Values <= 0 mark folding.
    """
    u = field.displacement_mm.astype(np.float64)
    # d u_c / d index_a, a in (k, j, i) -> reorder to (i, j, k) to match the index_to_physical matrix
    grads = np.stack([np.stack(np.gradient(u[..., c], axis=(0, 1, 2)), axis=-1)[..., ::-1] for c in range(3)], axis=-2)
    du_dx = grads @ np.linalg.inv(field.grid.index_to_physical_matrix)
    return np.linalg.det(np.eye(3) + du_dx)


# ---------------------------------------------------------------------------------------------- SimpleITK


def field_to_sitk(field: DisplacementField) -> sitk.Image:
    """A float64 vector image that ``sitk.DisplacementFieldTransform`` accepts."""
    image = sitk.GetImageFromArray(field.displacement_mm.astype(np.float64), isVector=True)
    image.SetSpacing(field.grid.spacing_mm)
    image.SetOrigin(field.grid.origin_mm)
    image.SetDirection(field.grid.direction)
    return image


def field_from_sitk(image: sitk.Image) -> DisplacementField:
    """An ITK displacement-field image (the same fixed->moving convention as ours) -> DisplacementField."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise GeometryError(
            f"expected a 3D image of 3-vectors, got {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components"
        )
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return DisplacementField(array, Grid(array.shape[:3], image.GetSpacing(), image.GetOrigin(), image.GetDirection()))


def field_from_sitk_transform(transform: sitk.Transform, grid: Grid) -> DisplacementField:
    """Sample any SimpleITK transform (fixed point -> moving point) as a displacement field on ``grid``."""
    f = sitk.TransformToDisplacementFieldFilter()
    f.SetOutputPixelType(sitk.sitkVectorFloat64)
    f.SetSize(list(grid.size_xyz))
    f.SetOutputSpacing(grid.spacing_mm)
    f.SetOutputOrigin(grid.origin_mm)
    f.SetOutputDirection(grid.direction)
    return field_from_sitk(f.Execute(transform))
