"""The optional second refinement of the CT-CT stage on a finer working grid (``fine_shape``, ``fine_steps``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mrct_registration.errors import GeometryError
from mrct_registration.image import Grid, Image
from mrct_registration.learned.ctct_registration import (
    LearnedCtCtRegistration,
    NetworkGeometry,
    ct_to_tensor,
    hole_weight,
    resolve_device,
    upsample_velocity,
    working_grid,
)
from mrct_registration.learned.registration_net import DiffeomorphicRegistrationNet, local_ncc_loss
from mrct_registration.transforms import jacobian_determinant


def test_upsampled_velocity_keeps_the_field_in_mm():
    v = torch.zeros(1, 3, 4, 6, 8)
    v[:, 0], v[:, 1], v[:, 2] = 1.0, 2.0, -3.0
    up = upsample_velocity(v, (8, 12, 16))
    assert up.shape == (1, 3, 8, 12, 16)
    # twice as many voxels along each axis: the same displacement in mm is twice as many voxels
    assert torch.allclose(up[0, :, 3, 5, 7], torch.tensor([2.0, 4.0, -6.0]))
    assert torch.allclose(upsample_velocity(v, (4, 6, 8)), v)


def _net() -> DiffeomorphicRegistrationNet:
    torch.manual_seed(0)
    net = DiffeomorphicRegistrationNet(int_steps=5, encoder_channels=(4, 8, 8), decoder_channels=(8, 8, 4))
    with torch.no_grad():  # the network predicts zero velocity: the refinement alone moves the field
        for p in net.unet.parameters():
            p.zero_()
    return net


def test_fine_steps_need_a_fine_shape():
    with pytest.raises(GeometryError):
        LearnedCtCtRegistration(_net(), NetworkGeometry(working_shape=(8, 8, 8)), None, fine_steps=5)
    with pytest.raises(ValueError):
        LearnedCtCtRegistration(_net(), NetworkGeometry(working_shape=(8, 8, 8)), None, fine_shape=(16, 16, 16),
                                fine_steps=-1)


def test_fine_refinement_recovers_a_known_shift_without_folding():
    rng = np.random.default_rng(0)
    grid = Grid((32, 32, 32), (2.0, 2.0, 2.0))
    texture = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    texture = 300.0 * texture / texture.std()
    shift = 2  # voxels = 4 mm along x; x_moving = x + u(x) with u = +4 mm along x
    fixed = Image(texture[4:36, 4:36, 4:36].astype(np.float32), grid)
    moving = Image(texture[4:36, 4:36, 4 - shift:36 - shift].astype(np.float32), grid)
    geometry = NetworkGeometry(working_shape=(8, 8, 8), ncc_window=5, smoothness_weight=1.0)
    coarse_only = LearnedCtCtRegistration(_net(), geometry, None).run(fixed, moving).registration
    fine = LearnedCtCtRegistration(_net(), geometry, None, fine_shape=(32, 32, 32), fine_steps=40, fine_lr=0.2)
    result = fine.run(fixed, moving).registration
    assert list(result.stage_seconds) == ["inpaint", "resample", "network", "refine", "to_field"]
    truth = np.array([2.0 * shift, 0.0, 0.0])  # mm, (x, y, z)
    inner = (slice(8, 24),) * 3
    err = lambda f: np.linalg.norm(f.displacement_mm[inner] - truth, axis=-1).mean()  # noqa: E731
    assert err(result.field) < 0.5 * err(coarse_only.field)
    assert (jacobian_determinant(result.field) > 0).all()


def test_masked_ncc_ignores_the_fixed_image_where_the_weight_is_zero():
    torch.manual_seed(1)
    fixed = torch.rand(1, 1, 12, 12, 12)
    warped = 2.0 * fixed + 0.1 * torch.rand(1, 1, 12, 12, 12)
    weight = torch.ones_like(fixed)
    weight[..., 4:8, 4:8, 4:8] = 0.0
    spoiled = fixed.clone()
    spoiled[..., 4:8, 4:8, 4:8] = 50.0 * torch.rand(4, 4, 4)  # e.g. a bright probe or a bad inpainting
    masked = local_ncc_loss(fixed, warped, 5, weight=weight)
    assert local_ncc_loss(spoiled, warped, 5, weight=weight).item() == pytest.approx(masked.item(), abs=1e-6)
    # without the mask the spoiled region changes the loss, and correlated images score close to -1 either way
    assert abs(local_ncc_loss(spoiled, warped, 5).item() - local_ncc_loss(fixed, warped, 5).item()) > 0.02
    assert masked.item() < -0.8
    with pytest.raises(GeometryError):
        local_ncc_loss(fixed, warped, 5, weight=weight[..., :-1])
    with pytest.raises(ValueError):
        local_ncc_loss(fixed, warped, 5, weight=torch.zeros_like(fixed))


def test_hole_weight_leaves_out_the_hole_and_its_margin_on_the_working_grid():
    grid = Grid((20, 20, 20), (2.0, 2.0, 3.0))  # (x, y, z) mm: z is coarser, to catch an axis mix-up
    hole = np.zeros(grid.shape, dtype=bool)
    hole[8:12, 8:12, 7:12] = True  # (z, y, x)
    work = working_grid(grid, (10, 10, 10))  # 4 x 4 x 6 mm voxels over the same box; centres at fine 2k + 0.5
    assert hole_weight(None, grid, work, 5.0) is None and hole_weight(hole, grid, work, None) is None
    assert hole_weight(np.zeros_like(hole), grid, work, 5.0) is None
    tight, wide = hole_weight(hole, grid, work, 0.0), hole_weight(hole, grid, work, 8.0)
    assert tight.shape == (1, 1, 10, 10, 10) and set(torch.unique(wide).tolist()) == {0.0, 1.0}
    assert tight[0, 0, 5, 5, 5] == 0 and wide[0, 0, 5, 5, 5] == 0  # the centre of the hole
    assert tight[0, 0, 5, 5, 3] == 0  # its centre (fine x 6.5) is outside, but it overlaps the hole at x = 7
    # beside the hole along x (2 mm voxels) the 8 mm margin reaches; along z (3 mm voxels) it does not
    assert tight[0, 0, 5, 5, 7] == 1 and wide[0, 0, 5, 5, 7] == 0
    assert wide[0, 0, 7, 5, 5] == 1
    assert (wide <= tight).all() and wide[0, 0, 0, 0, 0] == 1
    with pytest.raises(ValueError):
        LearnedCtCtRegistration(_net(), NetworkGeometry(working_shape=(8, 8, 8)), None, hole_margin_mm=-1.0)


def test_masked_ncc_needs_a_binary_weight_on_the_images_device():
    fixed = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="binary"):
        local_ncc_loss(fixed, fixed, 3, weight=torch.full_like(fixed, 0.5))


def test_refinement_inputs_low_pass_and_window_as_configured():
    rng = np.random.default_rng(2)
    grid = Grid((16, 16, 16), (2.0, 2.0, 2.0))
    ct = Image((50.0 + 15.0 * rng.normal(size=grid.shape)).astype(np.float32), grid)  # liver HU and noise
    sharp = ct_to_tensor(ct, grid, (-100.0, 110.0))
    blurred = ct_to_tensor(ct, grid, (-100.0, 110.0), blur_mm=1.5)
    assert blurred.std() < 0.6 * sharp.std()  # the low-pass removes most of the white noise
    assert abs(float(blurred.mean()) - float(sharp.mean())) < 0.01
    geometry = NetworkGeometry(working_shape=(8, 8, 8))
    for bad in (dict(refine_blur_mm=-1.0), dict(refine_window=(110.0, -100.0)), dict(refine_window=(0.0,))):
        with pytest.raises((ValueError, GeometryError)):
            LearnedCtCtRegistration(_net(), geometry, None, **bad)


def test_devices_are_checked_with_a_clear_message():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="only 'cpu' and CUDA"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            LearnedCtCtRegistration(_net(), NetworkGeometry(working_shape=(8, 8, 8)), None, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refinement_on_cuda_matches_the_cpu_result():
    rng = np.random.default_rng(0)
    grid = Grid((32, 32, 32), (2.0, 2.0, 2.0))
    texture = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    texture = 300.0 * texture / texture.std()
    fixed = Image(texture[4:36, 4:36, 4:36].astype(np.float32), grid)
    moving = Image(texture[4:36, 4:36, 2:34].astype(np.float32), grid)
    geometry = NetworkGeometry(working_shape=(8, 8, 8), ncc_window=5, smoothness_weight=1.0)
    fields = {}
    for device in ("cpu", "cuda"):
        reg = LearnedCtCtRegistration(_net(), geometry, None, refine_steps=10, refine_lr=0.1, fine_shape=(32, 32, 32),
                                      fine_steps=20, fine_lr=0.2, device=device)
        fields[device] = reg.run(fixed, moving).registration.field.displacement_mm
    inner = (slice(8, 24),) * 3
    assert np.abs(fields["cuda"][inner] - fields["cpu"][inner]).mean() < 0.05  # mm; float reductions differ
