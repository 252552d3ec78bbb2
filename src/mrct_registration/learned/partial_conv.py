"""Partial convolution (Liu et al., "Image Inpainting for Irregular Holes Using Partial Convolutions", ECCV
2018, Sec. 3.1) and a small partial-convolution U-Net for filling the probe and streak region of an iCT
slice (Wei et al. 2019, Sec. 2.2).

Mask convention (as in Liu et al.): ``valid`` is 1 on known pixels and 0 in the hole. Image tensors are
CT slices in normalised HU, ``hu / HU_SCALE`` (water 0, air -1, cortical bone about +0.7), see
:func:`normalise_hu`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeometryError

HU_SCALE = 1000.0  # HU per normalised unit: water 0, air -1


def normalise_hu(hu: torch.Tensor) -> torch.Tensor:
    """HU -> network units (``hu / 1000``); the inverse is :func:`denormalise_hu`."""
    return hu / HU_SCALE


def denormalise_hu(x: torch.Tensor) -> torch.Tensor:
    """Network units -> HU (``x * 1000``)."""
    return x * HU_SCALE


def _check_image_and_mask(x: torch.Tensor, valid: torch.Tensor, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise GeometryError(f"expected an image tensor (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise GeometryError(f"expected {channels} image channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if valid.ndim != 4 or valid.shape[0] != x.shape[0] or valid.shape[2:] != x.shape[2:] \
            or valid.shape[1] not in (1, x.shape[1]):
        raise GeometryError(f"the validity mask must be (N, 1 or C, H, W) matching the image {tuple(x.shape)}, "
                            f"got {tuple(valid.shape)}")


class PartialConv2d(nn.Module):
    """A 2D convolution over valid pixels only (Liu et al. 2018, Eq. 1-2).

    For each output position with window X (image) and M (validity), the output is
    ``W^T (X * M) * sum(1) / sum(M) + b`` where ``sum(M) > 0`` and 0 elsewhere; ``sum(1)`` counts the window
    (in_channels x k x k), so pixels in the hole (and zero padding, which counts as hole) do not enter, and
    the result is rescaled to the fraction of valid inputs. The bias is added after the rescaling and only
    where the window saw a valid pixel. The updated mask is 1 where ``sum(M) > 0``.

    forward(x, valid): x (N, C_in, H, W); valid (N, 1, H, W) (shared by all channels) or (N, C_in, H, W),
    values in {0, 1}. Returns (y (N, C_out, H', W'), new_valid (N, 1, H', W')), with H', W' as for
    ``nn.Conv2d`` with the same kernel, stride and padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.register_buffer("window_ones", torch.ones(1, in_channels, kernel_size, kernel_size), persistent=False)
        self.window_size = float(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image_and_mask(x, valid, self.conv.in_channels)
        valid = valid.to(x.dtype).expand(-1, x.shape[1], -1, -1)
        with torch.no_grad():
            valid_count = F.conv2d(valid, self.window_ones, stride=self.conv.stride, padding=self.conv.padding)
            new_valid = (valid_count > 0).to(x.dtype)
            scale = self.window_size / valid_count.clamp(min=1.0) * new_valid
        y = F.conv2d(x * valid, self.conv.weight, None, self.conv.stride, self.conv.padding) * scale
        if self.conv.bias is not None:
            y = y + self.conv.bias.view(1, -1, 1, 1) * new_valid
        return y, new_valid


class PartialConvUNet2d(nn.Module):
    """A U-Net of partial convolutions that fills holes in CT slices (Liu et al. 2018, Sec. 3.2, scaled down).

    Encoder: ``depth`` stride-2 partial convs (kernel 5 then 3, ReLU), channels ``base_channels * 2**level``
    capped at ``8 * base_channels``. Decoder: nearest-neighbour upsampling of image and mask, concatenation
    with the encoder's image and mask at the same scale (the input slice itself at full resolution), a 3x3
    partial conv and LeakyReLU(0.2); a last 3x3 partial conv gives one channel without activation.

    forward(x, valid): x (N, 1, H, W) in normalised HU, valid (N, 1, H, W) in {0, 1}; H and W divisible by
    ``2**depth``. Returns (N, 1, H, W) in normalised HU, composited so that known pixels are kept exactly:
    ``valid * x + (1 - valid) * prediction``.
    """

    def __init__(self, base_channels: int = 16, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be >= 1, got depth={depth}, base={base_channels}")
        self.depth = depth
        widths = [1] + [base_channels * 2 ** min(level, 3) for level in range(depth)]
        self.encoder = nn.ModuleList(
            PartialConv2d(widths[i], widths[i + 1], 5 if i == 0 else 3, stride=2, padding=2 if i == 0 else 1)
            for i in range(depth)
        )
        # decoder level i merges the upsampled widths[i + 1] features with the skip at widths[i]
        self.decoder = nn.ModuleList(
            PartialConv2d(widths[i + 1] + widths[i], max(widths[i], base_channels), 3, padding=1)
            for i in reversed(range(depth))
        )
        self.head = PartialConv2d(base_channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        _check_image_and_mask(x, valid, 1)
        if valid.shape[1] != 1:
            raise GeometryError(f"the validity mask must have one channel, got {tuple(valid.shape)}")
        step = 2 ** self.depth
        if x.shape[2] % step or x.shape[3] % step:
            raise GeometryError(f"height and width must be divisible by {step} (depth {self.depth}), "
                                f"got {tuple(x.shape[2:])}; pad the slice first")
        valid = valid.to(x.dtype)
        skips = [(x, valid)]
        h, m = x, valid
        for conv in self.encoder:
            h, m = conv(h, m)
            h = F.relu(h)
            skips.append((h, m))
        skips.pop()  # the deepest level is the decoder's starting point, not a skip
        for conv in self.decoder:
            skip_h, skip_m = skips.pop()
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            m = F.interpolate(m, scale_factor=2, mode="nearest")
            mask = torch.cat([m.expand(-1, h.shape[1], -1, -1), skip_m.expand(-1, skip_h.shape[1], -1, -1)], 1)
            h, m = conv(torch.cat([h, skip_h], 1), mask)
            h = F.leaky_relu(h, 0.2)
        prediction, _ = self.head(h, m)
        return valid * x + (1.0 - valid) * prediction
