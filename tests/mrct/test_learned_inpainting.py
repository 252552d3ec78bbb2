"""Specifications of the inpainting stage's building blocks: partial convolution, its U-Net, hole masks,
the two classical baselines and the losses (Wei et al. 2019, Sec. 2.2; Liu et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrct_registration.errors import GeometryError
from mrct_registration.learned import (
    INPAINTING_BASELINES,
    PartialConv2d,
    PartialConvUNet2d,
    inpaint_volume,
    inpainting_loss,
    metal_hole_mask,
    network_inpainter,
    normalise_hu,
    synthetic_probe_mask,
)
from mrct_registration.learned.losses import dilated_hole, hole_l1, hole_total_variation
from mrct_registration.phantom import PhantomConfig, generate_case, train_seeds


@pytest.fixture(scope="module")
def tiny_case():
    """The smallest phantom preset (CT 48x48x40) with probe, from the training seed range."""
    return generate_case(train_seeds(1, start=3)[0], PhantomConfig.tiny())


@pytest.fixture(scope="module")
def probe_slice(tiny_case):
    """(streaked iCT slice, clean iCT slice, true probe mask) where the needle covers the most pixels."""
    probe = tiny_case.probe_mask.array > 0
    k = int(np.argmax(probe.sum(axis=(1, 2))))
    return tiny_case.ict.array[k], tiny_case.ict_clean.array[k], probe[k]


def _conv_pair(seed: int = 0) -> tuple[PartialConv2d, torch.Tensor]:
    torch.manual_seed(seed)
    pconv = PartialConv2d(2, 3, 3, padding=1)
    return pconv, torch.randn(1, 2, 7, 9)


def test_partial_conv_with_all_valid_mask_is_an_ordinary_conv_up_to_border_renormalisation():
    pconv, x = _conv_pair()
    y, new_valid = pconv(x, torch.ones(1, 1, 7, 9))
    plain = pconv.conv(x)
    assert torch.allclose(y[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], atol=1e-6)  # interior: nothing missing
    # at the border the zero padding counts as hole: the bias-free response is scaled by 9 / (valid count)
    counts = F.conv2d(torch.ones(1, 1, 7, 9), torch.ones(1, 1, 3, 3), padding=1)
    bias = pconv.conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(y, (plain - bias) * 9.0 / counts + bias, atol=1e-5)
    assert torch.equal(new_valid, torch.ones(1, 1, 7, 9))


def test_partial_conv_ignores_values_under_the_hole():
    pconv, x = _conv_pair(1)
    valid = torch.ones(1, 1, 7, 9)
    valid[..., 2:5, 3:6] = 0
    y, _ = pconv(x, valid)
    x_changed = x.clone()
    x_changed[..., 2:5, 3:6] = 1e4 * torch.randn(1, 2, 3, 3)
    y_changed, _ = pconv(x_changed, valid)
    assert torch.equal(y, y_changed)


def test_partial_conv_mask_update_marks_windows_with_any_valid_pixel():
    pconv = PartialConv2d(1, 1, 3, padding=1)
    valid = torch.zeros(1, 1, 5, 5)
    valid[0, 0, 0, 0] = 1  # one known pixel in a corner
    _, new_valid = pconv(torch.randn(1, 1, 5, 5), valid)
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, :2, :2] = 1  # the windows (3x3, centred) that contain pixel (0, 0)
    assert torch.equal(new_valid, expected)
    # a window with no valid pixel outputs exactly zero (no bias)
    y, _ = pconv(torch.randn(1, 1, 5, 5), valid)
    assert torch.all(y[0, 0, 2:, :] == 0) and torch.all(y[0, 0, :, 2:] == 0)


def test_partial_conv_rejects_a_mask_of_the_wrong_shape():
    pconv, x = _conv_pair()
    with pytest.raises(GeometryError, match="validity mask"):
        pconv(x, torch.ones(1, 1, 7, 8))


def test_unet_keeps_known_pixels_exactly_and_returns_the_input_shape():
    torch.manual_seed(0)
    net = PartialConvUNet2d(base_channels=8, depth=3)
    x = torch.randn(2, 1, 48, 40)
    valid = torch.from_numpy(~np.stack([synthetic_probe_mask((48, 40), np.random.default_rng(s)) for s in (0, 1)]))
    valid = valid[:, None].float()
    out = net(x, valid)
    assert out.shape == x.shape
    assert torch.equal(out[valid.bool()], x[valid.bool()])
    assert not torch.equal(out[~valid.bool()], x[~valid.bool()])


def test_unet_rejects_sizes_it_cannot_halve_and_mismatched_masks():
    net = PartialConvUNet2d(base_channels=4, depth=3)
    with pytest.raises(GeometryError, match="divisible by 8"):
        net(torch.zeros(1, 1, 44, 48), torch.ones(1, 1, 44, 48))
    with pytest.raises(GeometryError, match="validity mask"):
        net(torch.zeros(1, 1, 48, 48), torch.ones(1, 1, 40, 48))


def test_metal_threshold_mask_covers_the_simulated_needle(tiny_case, probe_slice):
    streaked, _, needle = probe_slice
    hole = metal_hole_mask(streaked)
    assert hole[needle].all()
    assert hole.sum() < 0.05 * hole.size  # the needle and its rim, not the bone or the body
    volume_hole = metal_hole_mask(tiny_case.ict.array)
    probe = tiny_case.probe_mask.array > 0
    assert volume_hole[probe].mean() >= 0.8  # only faint partial-volume ends of the needle may be missed
    untouched = ~probe.any(axis=(1, 2))
    assert not volume_hole[untouched].any()  # no false alarms (bone) on slices the needle does not cross


def test_synthetic_probe_masks_are_seeded_and_moderate():
    a = synthetic_probe_mask((64, 64), np.random.default_rng(7))
    b = synthetic_probe_mask((64, 64), np.random.default_rng(7))
    c = synthetic_probe_mask((64, 64), np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.005 < a.mean() < 0.2
    with pytest.raises(GeometryError):
        synthetic_probe_mask((64,), np.random.default_rng(0))


@pytest.mark.parametrize("method", sorted(INPAINTING_BASELINES))
def test_inpainting_baseline_reduces_the_error_in_the_hole_against_the_clean_ict(method, probe_slice):
    streaked, clean, _ = probe_slice
    hole = metal_hole_mask(streaked)
    filled = INPAINTING_BASELINES[method](streaked, hole)
    assert filled.shape == streaked.shape and filled.dtype == np.float32
    error_filled = np.abs(filled - clean)[hole].mean()
    error_streaked = np.abs(streaked - clean)[hole].mean()
    assert error_filled < 0.7 * error_streaked


@pytest.mark.parametrize("method", sorted(INPAINTING_BASELINES))
def test_inpainting_baseline_rejects_a_mask_of_another_shape(method):
    with pytest.raises(GeometryError, match="does not match"):
        INPAINTING_BASELINES[method](np.zeros((16, 16)), np.zeros((16, 15), dtype=bool))


def test_losses_vanish_for_a_perfect_fill_and_tv_lives_on_the_dilated_hole():
    target = torch.randn(1, 1, 16, 16)
    valid = torch.ones(1, 1, 16, 16)
    valid[..., 6:9, 6:9] = 0
    total, terms = inpainting_loss(target, target, valid)
    assert float(total) == pytest.approx(terms["total_variation"] * 0.1) and terms["hole"] == 0.0
    assert int(dilated_hole(valid).sum()) == 25
    bumped = target.clone()
    bumped[..., 0, 0] += 10.0  # far from the hole: neither hole L1 nor hole TV sees it
    assert float(hole_l1(bumped, target, valid)) == 0.0
    assert float(hole_total_variation(bumped, valid)) == pytest.approx(float(hole_total_variation(target, valid)))


def test_a_short_seeded_training_run_lowers_the_hole_l1(tiny_case):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pct = tiny_case.pct.array  # artifact-free: the fill target is the slice itself
    slices = np.stack([pct[k] for k in np.linspace(8, pct.shape[0] - 8, 6).astype(int)])
    target = normalise_hu(torch.from_numpy(slices[:, None].copy()))
    valid = torch.from_numpy(~np.stack([synthetic_probe_mask(s.shape, rng) for s in slices]))[:, None].float()
    corrupted = target * valid  # what is under the hole must not matter; zero it
    net = PartialConvUNet2d(base_channels=8, depth=3)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    with torch.no_grad():
        before = float(hole_l1(net(corrupted, valid), target, valid))
    for _ in range(40):
        loss, _ = inpainting_loss(net(corrupted, valid), target, valid)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = float(hole_l1(net(corrupted, valid), target, valid))
    assert after < 0.7 * before


def test_network_inpainter_fills_only_the_hole_of_slices_of_any_size(tiny_case):
    torch.manual_seed(0)
    inpaint = network_inpainter(PartialConvUNet2d(base_channels=4, depth=3))
    ict = tiny_case.ict.array[:, :45, :]  # 45 rows: not a multiple of 8, padded inside
    hole = metal_hole_mask(ict)
    filled = inpaint_volume(ict, hole, inpaint)
    assert filled.shape == ict.shape and filled.dtype == np.float32
    assert np.array_equal(filled[~hole], ict[~hole])
    assert np.all(filled[hole] != ict[hole])
    with pytest.raises(GeometryError, match="same shape"):
        inpaint_volume(ict, hole[:-1], inpaint)
