"""MR <-> CT synthesis for the pre-procedural stage: a 2D Cycle-GAN with a mutual-information constraint
(Wei et al. 2019, Sec. 2.1).

An unpaired Cycle-GAN (Zhu et al. 2017) can translate MR into a plausible CT whose anatomy has drifted:
nothing in its losses ties *where* structures are in the output to where they were in the input, only
that the cycle comes back. Wei et al. add a mutual-information term between each input and its
translation, which is high only when the output's intensities are a (any, not necessarily monotonic)
function of the input's at the same pixels, so structures stay in place. The MI here is our own
differentiable Parzen-window estimate, :func:`parzen_mutual_information`.

Tensors are ``[B, 1, H, W]`` axial slices in [0, 1]: CT as ``(HU + 1000) / 2000`` clipped
(:func:`ct_to_unit`), MR divided by its volume's 99th percentile and clipped (:func:`mr_to_unit`).
H and W must be divisible by 4 (two stride-2 levels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeometryError

CT_RANGE_HU = (-1000.0, 1000.0)


def ct_to_unit(hu: np.ndarray | torch.Tensor):
    lo, hi = CT_RANGE_HU
    return ((hu - lo) / (hi - lo)).clip(0.0, 1.0)


def unit_to_ct(x: np.ndarray | torch.Tensor):
    lo, hi = CT_RANGE_HU
    return x * (hi - lo) + lo


def mr_to_unit(mr: np.ndarray) -> np.ndarray:
    """An MR volume (arbitrary units) scaled by its 99th percentile to about [0, 1], clipped."""
    return np.clip(mr / max(float(np.percentile(mr, 99)), 1e-6), 0.0, 1.0).astype(np.float32)


def parzen_mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 24, sigma: float | None = None,
                              eps: float = 1e-10) -> torch.Tensor:
    """Mutual information (nats) of the intensities of ``a`` and ``b`` pixel by pixel, mean over the batch.

    ``a``, ``b``: ``[B, ...]`` in [0, 1], same shape. Each intensity is spread over ``bins`` Gaussian
    kernels (centres evenly in [0, 1], width ``sigma``, default one bin spacing) and normalised to sum
    to one, the joint histogram is the mean outer product of the two weightings, and
    MI = sum p(i, j) log(p(i, j) / (p(i) p(j))). Differentiable in both inputs; 0 for independent images,
    up to log(bins) for images that are functions of each other.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise GeometryError(f"a and b must share one shape [B, ...], got {tuple(a.shape)} and {tuple(b.shape)}")
    sigma = sigma if sigma is not None else 1.0 / (bins - 1)
    centres = torch.linspace(0.0, 1.0, bins, dtype=a.dtype, device=a.device)

    def weights(x: torch.Tensor) -> torch.Tensor:  # [B, N, bins], rows sum to one
        w = torch.exp(-0.5 * ((x.reshape(x.shape[0], -1, 1) - centres) / sigma) ** 2)
        return w / (w.sum(dim=-1, keepdim=True) + eps)

    wa, wb = weights(a), weights(b)
    joint = wa.transpose(1, 2) @ wb / wa.shape[1]  # [B, bins, bins]
    pa, pb = joint.sum(dim=2, keepdim=True), joint.sum(dim=1, keepdim=True)
    mi = (joint * (torch.log(joint + eps) - torch.log(pa @ pb + eps))).sum(dim=(1, 2))
    return mi.mean()


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=True)]


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
                                  *_norm_act(channels),
                                  nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
                                  nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SliceTranslator(nn.Module):
    """Generator: ``[B, 1, H, W]`` in [0, 1] -> ``[B, 1, H, W]`` in [0, 1] (Zhu et al.'s ResNet generator,
    narrower: two stride-2 levels, ``residual_blocks`` blocks at quarter resolution)."""

    def __init__(self, channels: int = 16, residual_blocks: int = 4) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 7, padding=3, padding_mode="reflect"), *_norm_act(c),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), *_norm_act(2 * c),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), *_norm_act(4 * c),
            *[_Residual(4 * c) for _ in range(residual_blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4 * c, 2 * c, 3, padding=1), *_norm_act(2 * c),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * c, c, 3, padding=1), *_norm_act(c),
            nn.Conv2d(c, 1, 7, padding=3, padding_mode="reflect"), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] % 4 or x.shape[3] % 4:
            raise GeometryError(f"input must be [B, 1, H, W] with H, W divisible by 4, got {tuple(x.shape)}")
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: ``[B, 1, H, W]`` -> ``[B, 1, H/8, W/8]`` real/fake scores (least-squares GAN)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1), nn.InstanceNorm2d(4 * c), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * c, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def translate_volume(generator: SliceTranslator, volume_unit: np.ndarray) -> np.ndarray:
    """Apply a generator to every axial slice of a (nz, ny, nx) volume in [0, 1] (ny, nx zero-padded to /4)."""
    nz, ny, nx = volume_unit.shape
    x = torch.from_numpy(np.ascontiguousarray(volume_unit, dtype=np.float32))[:, None]
    x = F.pad(x, (0, -nx % 4, 0, -ny % 4), mode="replicate")
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        out = torch.cat([generator(x[i : i + 8]) for i in range(0, nz, 8)])
    generator.train(was_training)
    return out[:, 0, :ny, :nx].numpy()
