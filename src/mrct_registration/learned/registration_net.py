"""Unsupervised deformable registration network (VoxelMorph-style; Wei et al. 2019, Sec. 2.3).

Small modules that each do one geometric thing, after VoxelMorph (Balakrishnan et al. 2019; Dalca et al.
2019, diffeomorphic variant) and MONAI's ``Warp`` / ``DVF2DDF``:

- :class:`SpatialTransformer3d` warps an image by a dense displacement in voxels;
- :class:`VecInt` integrates a stationary velocity field by scaling and squaring;
- :class:`RegistrationUNet3d` maps (moving, fixed) to a velocity field;
- :class:`DiffeomorphicRegistrationNet` chains the three;
- :func:`local_ncc_loss` (similarity) and :func:`gradient_smoothness_loss` (diffusion regulariser).

Tensor conventions (all of them): images are ``[B, C, D, H, W]`` with D, H, W = z, y, x of the *fixed*
grid; displacements and velocities are ``[B, 3, D, H, W]`` in **voxels** of the fixed grid with channels
in (z, y, x) order. The displacement ``u`` means ``warped(p) = moving(p + u(p))`` at every fixed voxel
``p``, the package convention x_moving = x_fixed + u(x_fixed) in index space, so
``DisplacementField.from_torch(u, fixed_grid)`` (defaults ``units="voxel"``, ``channel_order="zyx"``)
gives the field in mm, LPS, on the fixed grid. This assumes moving and fixed images are sampled on the
same grid (the moving image is resampled onto the fixed grid first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeometryError

PADDING_MODES = ("border", "zeros")


def _check_field(field: torch.Tensor, name: str = "displacement") -> None:
    if field.ndim != 5 or field.shape[1] != 3:
        raise GeometryError(f"{name} must have shape [B, 3, D, H, W] (voxels, z/y/x channels), got {tuple(field.shape)}")


class SpatialTransformer3d(nn.Module):
    """Pull-back warp: ``warped[b, :, p] = image[b, :, p + u[b, :, p]]`` with ``u`` in voxels, (z, y, x).

    Inputs: ``image`` ``[B, C, D, H, W]``, ``displacement`` ``[B, 3, D, H, W]`` (voxels of the image grid;
    channel 0 moves along D = z, 1 along H = y, 2 along W = x). Output: ``[B, C, D, H, W]``.

    Sampling uses ``grid_sample`` with ``align_corners=True``: normalised -1 and +1 are the *centres* of
    the first and last voxels, so voxel index ``i`` maps to ``2 i / (n - 1) - 1`` and a zero displacement
    samples every voxel centre (identity up to float32 round-off). Points that land outside the grid
    take the nearest edge value (``padding_mode="border"``, the package's edge-extension of fields and
    a safe choice when warping velocity fields) or 0 (``"zeros"``, VoxelMorph's default). ``mode`` is
    ``"bilinear"`` (trilinear in 3D) for intensities and fields, ``"nearest"`` for labels.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        _check_field(displacement)
        if image.ndim != 5:
            raise GeometryError(f"image must have shape [B, C, D, H, W], got {tuple(image.shape)}")
        if image.shape[2:] != displacement.shape[2:] or image.shape[0] != displacement.shape[0]:
            raise GeometryError(f"image {tuple(image.shape)} and displacement {tuple(displacement.shape)} must share "
                                "the batch size and the spatial shape [D, H, W]")
        sizes = displacement.shape[2:]
        axes = [torch.arange(n, dtype=displacement.dtype, device=displacement.device) for n in sizes]
        identity = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # [3, D, H, W], (z, y, x) indices
        locations = identity.unsqueeze(0) + displacement
        # index -> [-1, 1] (align_corners=True); a size-1 axis stays at its only voxel
        normalised = torch.stack(
            [2.0 * locations[:, c] / (n - 1) - 1.0 if n > 1 else torch.zeros_like(locations[:, c])
             for c, n in enumerate(sizes)],
            dim=-1,
        )  # [B, D, H, W, 3] in (z, y, x)
        grid = normalised.flip(-1)  # grid_sample wants (x, y, z) in the last dimension
        return F.grid_sample(image, grid, mode=self.mode, padding_mode=self.padding_mode, align_corners=True)


class VecInt(nn.Module):
    """Scaling and squaring: the displacement of exp(v) for a stationary velocity field ``v``.

    ``v`` and the output are ``[B, 3, D, H, W]`` in voxels, (z, y, x) channels. The field is scaled by
    ``1 / 2**steps`` and composed with itself ``steps`` times, ``u <- u + u o (id + u)`` (Arsigny et al.
    2006; VoxelMorph's ``VecInt``). For a smooth ``v`` whose scaled version is small (``|v| / 2**steps``
    well under one voxel) the result is a diffeomorphism (det J > 0), and exp(-v) is its inverse.
    ``steps=0`` returns ``v`` itself (no integration).
    """

    def __init__(self, steps: int = 7) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = steps
        # fields are edge-extended outside the grid, as DisplacementField is
        self.transformer = SpatialTransformer3d(padding_mode="border")

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        _check_field(velocity, "velocity")
        displacement = velocity / (2 ** self.steps)
        for _ in range(self.steps):
            displacement = displacement + self.transformer(displacement, displacement)
        return displacement


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class RegistrationUNet3d(nn.Module):
    """A small 3D U-Net: ``[B, 2 C, D, H, W]`` (moving and fixed concatenated) -> velocity ``[B, 3, D, H, W]``.

    The encoder halves the resolution ``len(encoder_channels)`` times with stride-2 convolutions; the
    decoder upsamples (nearest) and concatenates the skip connections, as in VoxelMorph. D, H and W must
    be divisible by ``2 ** len(encoder_channels)``. The output is in voxels, (z, y, x) channels; the last
    convolution starts near zero (weights N(0, 1e-5), bias 0) so training begins at the identity.
    """

    def __init__(self, in_channels: int = 2, encoder_channels: tuple[int, ...] = (16, 32, 32),
                 decoder_channels: tuple[int, ...] = (32, 32, 16)) -> None:
        super().__init__()
        if len(decoder_channels) != len(encoder_channels) or not encoder_channels:
            raise ValueError(f"need as many decoder as encoder levels (>= 1), got {encoder_channels}, {decoder_channels}")
        self.in_channels = in_channels
        self.levels = len(encoder_channels)
        self.stem = _conv_block(in_channels, encoder_channels[0])
        self.down = nn.ModuleList()
        previous = encoder_channels[0]
        for channels in encoder_channels:
            self.down.append(_conv_block(previous, channels, stride=2))
            previous = channels
        skip_channels = [encoder_channels[0], *encoder_channels[:-1]][::-1]  # full resolution is the last skip
        self.up = nn.ModuleList()
        for channels, skip in zip(decoder_channels, skip_channels):
            self.up.append(_conv_block(previous + skip, channels))
            previous = channels
        self.flow = nn.Conv3d(previous, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise GeometryError(f"input must have shape [B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        factor = 2 ** self.levels
        if any(n % factor for n in x.shape[2:]):
            raise GeometryError(f"spatial shape {tuple(x.shape[2:])} must be divisible by {factor} "
                                f"({self.levels} halvings); pad or crop the volumes")
        skips = [self.stem(x)]
        h = skips[0]
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for block in self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1))
        return self.flow(h)


class DiffeomorphicRegistrationNet(nn.Module):
    """moving, fixed ``[B, C, D, H, W]`` (same grid) -> (warped moving ``[B, C, D, H, W]``, displacement).

    The U-Net predicts a stationary velocity (voxels), :class:`VecInt` integrates it (``int_steps=0``:
    the U-Net output is used as the displacement directly) and :class:`SpatialTransformer3d` warps the
    moving image. The displacement is ``[B, 3, D, H, W]`` in voxels, (z, y, x) channels, on the fixed
    grid; convert with ``DisplacementField.from_torch(displacement, fixed_grid)``.
    """

    def __init__(self, image_channels: int = 1, int_steps: int = 7,
                 encoder_channels: tuple[int, ...] = (16, 32, 32), decoder_channels: tuple[int, ...] = (32, 32, 16),
                 padding_mode: str = "border") -> None:
        super().__init__()
        self.unet = RegistrationUNet3d(2 * image_channels, encoder_channels, decoder_channels)
        self.integrate = VecInt(int_steps)
        self.transformer = SpatialTransformer3d(padding_mode=padding_mode)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if moving.shape != fixed.shape:
            raise GeometryError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape; "
                                "resample the moving image onto the fixed grid first")
        velocity = self.unet(torch.cat([moving, fixed], dim=1))
        displacement = self.integrate(velocity)
        return self.transformer(moving, displacement), displacement


def local_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Negative mean squared local normalised cross-correlation (VoxelMorph's ``NCC``), a scalar.

    ``fixed`` and ``warped``: ``[B, 1, D, H, W]``, any intensity unit (NCC is invariant to a scale of
    either image, and to an offset in windows away from the border). Statistics are sums over a ``window``^3 cube (zero-padded at
    the border). Per voxel cc = cov^2 / (var_f var_w + eps) lies in [0, 1], so the loss lies in [-1, 0]:
    -1 for identical images whose every window has contrast, about 0 for unrelated ones. Flat windows
    (zero variance) give cc = 0. The zero padding counts as image near the border, so for images far
    from zero mean, border windows of unrelated images still correlate a little; normalise intensities
    (e.g. to zero mean) before training.

    ``weight`` (optional, ``[B, 1, D, H, W]``, on the images' device): a binary mask, 1 where a voxel counts
    and 0 where it does not, e.g. in the probe hole of an iCT. Each window's statistics are then sums over its
    valid voxels only (normalised convolution), so a hole neither adds to nor distorts the correlation of the
    windows that touch it, and the loss is the mean of cc over the valid voxels. Windows without a valid
    voxel count as flat (cc = 0). The volume's border then ends the data instead of counting as zero-valued
    image, so an all-ones mask gives a slightly different loss near the border than no mask.
    """
    if fixed.shape != warped.shape or fixed.ndim != 5 or fixed.shape[1] != 1:
        raise GeometryError(f"fixed and warped must both be [B, 1, D, H, W], got {tuple(fixed.shape)} and {tuple(warped.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of voxels, got {window}")
    n = float(window ** 3)

    def box_sum(t: torch.Tensor) -> torch.Tensor:
        # a box sum with zero padding; average pooling computes it many times faster than a window^3 convolution
        return F.avg_pool3d(t, window, stride=1, padding=window // 2, count_include_pad=True) * n

    if weight is None:
        f_sum, w_sum = box_sum(fixed), box_sum(warped)
        cross = box_sum(fixed * warped) - f_sum * w_sum / n
        f_var = box_sum(fixed * fixed) - f_sum * f_sum / n
        w_var = box_sum(warped * warped) - w_sum * w_sum / n
        cc = cross * cross / (f_var.clamp_min(0.0) * w_var.clamp_min(0.0) + eps)
        return -cc.mean()
    if weight.shape != fixed.shape:
        raise GeometryError(f"weight must have the images' shape {tuple(fixed.shape)}, got {tuple(weight.shape)}")
    if weight.device != fixed.device:
        raise ValueError(f"weight is on {weight.device} but the images are on {fixed.device}")
    weight = weight.to(fixed.dtype)
    if not bool(((weight == 0) | (weight == 1)).all()):
        raise ValueError("weight must be a binary mask (0 or 1 per voxel)")
    count = box_sum(weight)
    safe = count.clamp_min(1.0)
    f_sum, w_sum = box_sum(weight * fixed), box_sum(weight * warped)
    cross = box_sum(weight * fixed * warped) - f_sum * w_sum / safe
    f_var = box_sum(weight * fixed * fixed) - f_sum * f_sum / safe
    w_var = box_sum(weight * warped * warped) - w_sum * w_sum / safe
    cc = cross * cross / (f_var.clamp_min(0.0) * w_var.clamp_min(0.0) + eps)
    cc = torch.where(count >= 1.0, cc, torch.zeros_like(cc))
    total = weight.sum()
    if total <= 0:
        raise ValueError("weight has no valid voxel: the similarity is undefined")
    return -(cc * weight).sum() / total


def gradient_smoothness_loss(displacement: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: mean squared forward difference of ``displacement`` along z, y and x.

    ``displacement``: ``[B, 3, D, H, W]`` in voxels; the result is a scalar in voxel^2 / voxel^2 (the
    average over the three axes of the mean of |du/dp|^2), 0 for any constant field (a translation).
    """
    _check_field(displacement)
    dz = displacement[:, :, 1:] - displacement[:, :, :-1]
    dy = displacement[:, :, :, 1:] - displacement[:, :, :, :-1]
    dx = displacement[..., 1:] - displacement[..., :-1]
    return ((dz ** 2).mean() + (dy ** 2).mean() + (dx ** 2).mean()) / 3.0
