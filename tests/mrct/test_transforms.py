"""Dense displacement fields in mm: the convention, composition, inversion, warping, Jacobian, torch layout."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from mrct_registration.errors import GeometryError
from mrct_registration.image import Grid, Image
from mrct_registration.io import to_sitk
from mrct_registration.phantom.motion import rotation_matrix
from mrct_registration.transforms import (
    DisplacementField,
    compose,
    field_from_sitk_transform,
    invert,
    invert_points,
    jacobian_determinant,
    warp_image,
    warp_labels,
)

OBLIQUE = tuple(rotation_matrix(np.deg2rad([10.0, -5.0, 20.0])).ravel())


def _grid(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Grid:
    return Grid((20, 24, 28), (2.0, 1.5, 3.0), (-20.0, -15.0, -30.0), direction)


def _blob_image(grid: Grid) -> Image:
    x = grid.physical_points()
    value = np.exp(-np.sum(((x - np.array([3.0, -2.0, 4.0])) / np.array([9.0, 7.0, 11.0])) ** 2, axis=-1))
    return Image(value.astype(np.float32), grid)


def _smooth_field(grid: Grid, seed: int, amplitude_mm: float) -> DisplacementField:
    rng = np.random.default_rng(seed)
    u = np.stack([ndimage.gaussian_filter(rng.normal(size=grid.shape), 4.0, mode="nearest") for _ in range(3)], -1)
    u *= amplitude_mm / np.abs(u).max()
    return DisplacementField(u.astype(np.float32), grid)


def test_moving_point_is_fixed_point_plus_displacement():
    grid = _grid()
    field = DisplacementField.from_affine(grid, np.eye(3), [4.0, -2.0, 1.0])
    points = np.array([[0.0, 0.0, 0.0], [5.0, 3.0, -7.0]])
    assert np.allclose(field.map_points(points), points + [4.0, -2.0, 1.0])


def test_warping_with_a_shift_pulls_content_from_the_shifted_position():
    grid = _grid()
    image = _blob_image(grid)
    warped = warp_image(image, DisplacementField.from_affine(grid, np.eye(3), [6.0, 0.0, 0.0]))
    # warped(x) = image(x + 6 mm): the blob centre moves to x = 3 - 6 = -3 mm
    peak = grid.physical_points()[np.unravel_index(np.argmax(warped.array), grid.shape)]
    assert abs(peak[0] - (-3.0)) <= grid.spacing_mm[0]


def test_identity_field_leaves_images_and_labels_unchanged():
    grid = _grid(OBLIQUE)
    image = _blob_image(grid)
    identity = DisplacementField.identity(grid)
    assert np.allclose(warp_image(image, identity).array, image.array, atol=1e-5)
    labels = image.with_array((image.array > 0.5).astype(np.uint8))
    assert np.array_equal(warp_labels(labels, identity).array, labels.array)


def test_warp_matches_simpleitk_resample_with_the_same_transform():
    """Our convention is ITK's: resampling with a SimpleITK transform and with its sampled field agree."""
    grid = _grid(OBLIQUE)
    image = _blob_image(grid)
    transform = sitk.Euler3DTransform((1.0, 2.0, 0.0), 0.1, -0.05, 0.2, (3.0, -2.0, 4.0))
    field = field_from_sitk_transform(transform, grid)
    ours = warp_image(image, field, fill_value=0.0).array
    reference = sitk.GetArrayFromImage(sitk.Resample(to_sitk(image), to_sitk(image), transform, sitk.sitkLinear, 0.0))
    assert np.abs(ours - reference).max() < 1e-4


def test_labels_are_warped_with_nearest_neighbour_and_keep_their_values():
    grid = _grid()
    labels = Image(np.random.default_rng(0).integers(0, 5, grid.shape).astype(np.uint8), grid)
    warped = warp_labels(labels, _smooth_field(grid, 1, 3.0))
    assert warped.array.dtype == np.uint8 and set(np.unique(warped.array)) <= set(range(5))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), amplitude=st.floats(0.5, 4.0))
def test_inverse_composed_with_field_is_identity(seed, amplitude):
    grid = _grid()
    field = _smooth_field(grid, seed, amplitude)
    inverse = invert(field)
    round_trip = compose(inverse, field)  # x -> x + u(x) -> back
    assert np.abs(round_trip.displacement_mm[3:-3, 3:-3, 3:-3]).max() < 0.05


@pytest.mark.parametrize("point_map", [lambda z: -z, lambda z: 3.0 * z + 1.0, lambda z: z + np.nan],
                         ids=["mirror", "expanding", "nan"])
def test_inversion_of_a_non_contractive_map_raises_naming_the_residual(point_map):
    targets = np.random.default_rng(0).uniform(-20.0, 20.0, (5, 3))
    with pytest.raises(GeometryError, match="did not converge: largest residual"):
        invert_points(point_map, targets)


def test_field_inversion_reports_non_convergence_instead_of_returning_a_wrong_inverse():
    grid = _grid()
    field = _smooth_field(grid, 0, 1.0)
    inverse = invert(field, tol_mm=1e-4)  # contractive: converges
    assert np.isfinite(inverse.displacement_mm).all()
    with pytest.raises(GeometryError, match="after 2 fixed-point iterations"):
        invert(field, iterations=2, tol_mm=1e-9)


def test_compose_with_identity_returns_the_field():
    grid = _grid()
    field = _smooth_field(grid, 3, 3.0)
    identity = DisplacementField.identity(grid)
    assert np.allclose(compose(field, identity).displacement_mm, field.displacement_mm, atol=1e-5)
    assert np.allclose(compose(identity, field).displacement_mm, field.displacement_mm, atol=1e-5)


def test_compose_of_two_shifts_is_their_sum_on_another_grid():
    mid, fixed = _grid(), Grid((10, 12, 14), (3.0, 3.0, 3.0), (-10.0, -10.0, -10.0))
    a = DisplacementField.from_affine(mid, np.eye(3), [1.0, 2.0, 3.0])
    b = DisplacementField.from_affine(fixed, np.eye(3), [-4.0, 0.5, 2.0])
    c = compose(a, b)
    assert c.grid == fixed and np.allclose(c.displacement_mm, [-3.0, 2.5, 5.0], atol=1e-5)


def test_jacobian_determinant_of_an_affine_map_is_its_determinant():
    matrix = np.diag([1.1, 0.9, 1.2]) @ rotation_matrix(np.deg2rad([5.0, 10.0, -3.0]))
    field = DisplacementField.from_affine(_grid(OBLIQUE), matrix, [1.0, 2.0, 3.0])
    assert np.allclose(jacobian_determinant(field), np.linalg.det(matrix), atol=1e-4)


def test_jacobian_flags_folding():
    grid = _grid()
    field = DisplacementField.from_affine(grid, np.diag([-1.0, 1.0, 1.0]), [0.0, 0.0, 0.0])  # a mirror folds space
    assert (jacobian_determinant(field) < 0).all()


def test_torch_voxel_displacement_converts_to_mm_with_spacing_and_direction():
    grid = _grid(OBLIQUE)
    tensor = torch.zeros(1, 3, *grid.shape)
    tensor[0, 0] = 1.0  # one voxel along D (= z, the k axis)
    tensor[0, 2] = 2.0  # two voxels along W (= x, the i axis)
    field = DisplacementField.from_torch(tensor, grid)
    expected = grid.index_to_physical_matrix @ np.array([2.0, 0.0, 1.0])
    assert np.allclose(field.displacement_mm[0, 0, 0], expected, atol=1e-5)
    assert torch.allclose(field.to_torch(), tensor, atol=1e-5)
    assert np.allclose(DisplacementField.from_torch(field.to_torch("mm"), grid, units="mm").displacement_mm,
                       field.displacement_mm, atol=1e-5)


def test_bad_shapes_raise_geometry_errors():
    grid = _grid()
    with pytest.raises(GeometryError):
        DisplacementField(np.zeros((*grid.shape, 2), np.float32), grid)
    with pytest.raises(GeometryError):
        DisplacementField(np.zeros((5, 5, 5, 3), np.float32), grid)
    with pytest.raises(GeometryError):
        DisplacementField.from_torch(torch.zeros(2, 3, *grid.shape), grid)
    with pytest.raises(GeometryError):
        Image(np.zeros((4, 4)), grid)
    with pytest.raises(GeometryError):
        Grid((4, 4, 4), (1.0, 1.0, 1.0), direction=(1, 1, 0, 0, 1, 0, 0, 0, 1))


@settings(max_examples=30, deadline=None)
@given(
    spacing=st.tuples(*[st.floats(0.3, 6.0)] * 3),
    origin=st.tuples(*[st.floats(-300.0, 300.0)] * 3),
    angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
    index=st.tuples(*[st.floats(-5.0, 50.0)] * 3),
)
def test_index_to_physical_and_back_is_the_identity_for_any_grid(spacing, origin, angles, index):
    grid = Grid((8, 9, 10), spacing, origin, tuple(rotation_matrix(np.asarray(angles)).ravel()))
    point = grid.index_to_physical(np.asarray(index))
    assert np.allclose(grid.physical_to_index(point), index, atol=1e-6)


def test_fields_on_different_grids_cannot_be_compared():
    from mrct_registration.metrics import endpoint_error_mm

    a = DisplacementField.identity(_grid())
    b = DisplacementField.identity(Grid((20, 24, 28), (2.0, 1.5, 3.0), (0.0, 0.0, 0.0)))
    with pytest.raises(GeometryError, match="one grid"):
        endpoint_error_mm(a, b)
