"""The VoxelMorph-style registration parts: warp, scaling and squaring, U-Net, losses and the unit bridge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrct_registration.errors import GeometryError
from mrct_registration.image import Grid
from mrct_registration.learned.registration_net import (
    DiffeomorphicRegistrationNet,
    RegistrationUNet3d,
    SpatialTransformer3d,
    VecInt,
    gradient_smoothness_loss,
    local_ncc_loss,
)
from mrct_registration.phantom import PhantomConfig
from mrct_registration.transforms import DisplacementField, jacobian_determinant

SMALL = dict(encoder_channels=(8, 16, 16), decoder_channels=(16, 16, 8))


def _blob(shape=(16, 16, 16), centre=(8.0, 8.0, 8.0), sigma=2.5) -> torch.Tensor:
    """A Gaussian blob [1, 1, D, H, W] centred at ``centre`` (z, y, x voxels)."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return torch.from_numpy(np.exp(-r2 / (2 * sigma ** 2)).astype(np.float32))[None, None]


def _smooth_velocity(seed: int, shape=(16, 16, 16), amplitude_voxels: float = 3.0) -> torch.Tensor:
    """A smooth random velocity [1, 3, D, H, W] in voxels: coarse noise, trilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=g)
    v = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return v * (amplitude_voxels / v.abs().max())


def test_zero_displacement_is_the_identity_warp():
    image = torch.randn(2, 3, 6, 7, 9, generator=torch.Generator().manual_seed(0))
    warped = SpatialTransformer3d()(image, torch.zeros(2, 3, 6, 7, 9))
    torch.testing.assert_close(warped, image, rtol=0, atol=1e-6)


def test_zero_velocity_integrates_to_zero_and_the_net_starts_at_the_identity():
    assert torch.equal(VecInt(7)(torch.zeros(1, 3, 8, 8, 8)), torch.zeros(1, 3, 8, 8, 8))
    torch.manual_seed(0)
    net = DiffeomorphicRegistrationNet(**SMALL)
    moving, fixed = _blob(), _blob(centre=(8.0, 8.0, 10.0))
    warped, displacement = net(moving, fixed)
    assert displacement.abs().max() < 1e-3  # the flow layer is initialised near zero
    torch.testing.assert_close(warped, moving, rtol=0, atol=1e-3)


@pytest.mark.parametrize("shift", [(0, 0, 2), (1, -2, 3)])
def test_constant_translation_warps_by_that_shift(shift):
    image = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(1))
    displacement = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 12, 12, 12)
    warped = SpatialTransformer3d()(image, displacement)[0, 0].numpy()
    # warped(p) = image(p + shift) = roll(image, -shift)(p) wherever p + shift stays inside the grid
    expected = np.roll(image[0, 0].numpy(), [-s for s in shift], axis=(0, 1, 2))
    interior = tuple(slice(max(0, -s), 12 - max(0, s)) for s in shift)
    np.testing.assert_allclose(warped[interior], expected[interior], atol=1e-5)


def test_scaling_and_squaring_of_a_smooth_velocity_does_not_fold():
    grid = Grid((16, 16, 16), (1.5, 1.5, 2.5))
    velocity = _smooth_velocity(seed=2, amplitude_voxels=3.0)
    displacement = VecInt(7)(velocity)
    field = DisplacementField.from_torch(displacement, grid)
    det = jacobian_determinant(field)
    assert det.min() > 0.0
    assert field.magnitude_mm().max() > 2.0  # not a trivially small deformation


def test_integrating_v_then_minus_v_composes_to_the_identity():
    velocity = _smooth_velocity(seed=3, shape=(24, 24, 24), amplitude_voxels=2.0)
    integrate, transformer = VecInt(7), SpatialTransformer3d()
    forward, backward = integrate(velocity), integrate(-velocity)
    # (id + forward) o (id + backward): p -> p + backward(p) + forward(p + backward(p))
    composed = backward + transformer(forward, backward)
    interior = composed[..., 3:-3, 3:-3, 3:-3]
    assert forward.abs().max() > 1.5
    # trilinear resampling of the squarings leaves ~0.08 voxel here (0.01 voxel away from the steepest spots)
    assert interior.abs().max() < 0.15  # voxels


def test_local_ncc_is_minus_one_for_identical_images_and_near_zero_for_unrelated_ones():
    # zero-mean noise: the zero padding at the border then adds no spurious shared structure
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 1, 16, 16, 16, generator=g), torch.randn(1, 1, 16, 16, 16, generator=g)
    same = local_ncc_loss(a, a).item()
    unrelated = local_ncc_loss(a, b).item()
    assert same == pytest.approx(-1.0, abs=1e-3)
    assert unrelated > -0.05
    assert local_ncc_loss(a, 3.0 * a).item() == pytest.approx(-1.0, abs=1e-3)  # invariant to intensity scale


def test_gradient_smoothness_is_zero_for_a_translation_and_positive_otherwise():
    translation = torch.ones(1, 3, 8, 8, 8) * 2.0
    assert gradient_smoothness_loss(translation).item() == 0.0
    assert gradient_smoothness_loss(_smooth_velocity(seed=5, shape=(8, 8, 8))).item() > 0.0


def test_optimising_on_a_shifted_blob_lowers_the_ncc_loss():
    torch.manual_seed(0)
    net = DiffeomorphicRegistrationNet(encoder_channels=(4, 8, 8), decoder_channels=(8, 8, 4))
    fixed, moving = _blob(), _blob(centre=(8.0, 8.0, 10.0))  # moving is fixed shifted by 2 voxels along x
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)

    def ncc() -> float:
        with torch.no_grad():
            return local_ncc_loss(fixed, net(moving, fixed)[0]).item()

    before = ncc()
    for _ in range(30):
        warped, displacement = net(moving, fixed)
        loss = local_ncc_loss(fixed, warped) + 0.01 * gradient_smoothness_loss(displacement)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = ncc()
    assert after < before - 0.05, (before, after)  # seen: -0.83 -> -0.99


def test_network_displacement_maps_landmarks_in_mm_like_the_spatial_transformer():
    grid = PhantomConfig.small().pct_grid()  # (48, 64, 64) voxels, anisotropic mm spacing
    torch.manual_seed(6)
    net = DiffeomorphicRegistrationNet(**SMALL)
    torch.nn.init.normal_(net.unet.flow.weight, std=0.02)  # a non-trivial (still smooth-ish) deformation
    points_mm = grid.physical_points()  # (nz, ny, nx, 3), (x, y, z) mm
    direction = np.array([0.6, -0.48, 0.64])  # unit vector: the moving image is a linear ramp in mm
    moving = torch.from_numpy((points_mm @ direction).astype(np.float32))[None, None]
    fixed = torch.from_numpy(np.cos(points_mm[..., 0] / 20.0).astype(np.float32))[None, None]
    with torch.no_grad():
        warped, displacement = net(moving, fixed)
    field = DisplacementField.from_torch(displacement, grid)
    assert 0.05 < displacement.abs().max().item() < 3.0  # voxels: moves, but landmarks stay inside

    rng = np.random.default_rng(0)
    landmarks = np.stack([rng.integers(4, n - 4, size=10) for n in grid.shape], axis=-1)  # (k, j, i)
    fixed_mm = points_mm[landmarks[:, 0], landmarks[:, 1], landmarks[:, 2]]
    moving_mm = field.map_points(fixed_mm)
    # trilinear sampling reproduces a linear ramp exactly, so warped(p) = ramp(x_fixed + u(x_fixed))
    warped_at = warped[0, 0].numpy()[landmarks[:, 0], landmarks[:, 1], landmarks[:, 2]]
    np.testing.assert_allclose(warped_at, moving_mm @ direction, atol=1e-2)
    # and the mm displacement is the voxel displacement through the grid's spacing
    u_vox = displacement[0].numpy()[:, landmarks[:, 0], landmarks[:, 1], landmarks[:, 2]].T  # (z, y, x)
    np.testing.assert_allclose(moving_mm - fixed_mm, u_vox[:, ::-1] * np.array(grid.spacing_mm), atol=1e-4)


def test_bad_shapes_raise_geometry_errors():
    with pytest.raises(GeometryError, match=r"\[B, 3, D, H, W\]"):
        SpatialTransformer3d()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(GeometryError, match="spatial shape"):
        SpatialTransformer3d()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 4))
    with pytest.raises(GeometryError, match="divisible by 8"):
        RegistrationUNet3d()(torch.zeros(1, 2, 12, 16, 16))
    with pytest.raises(GeometryError, match="same shape"):
        DiffeomorphicRegistrationNet(**SMALL)(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 8))
    with pytest.raises(GeometryError):
        local_ncc_loss(torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        local_ncc_loss(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), window=4)
