"""Inpainting losses that need no downloaded weights.

Liu et al. (2018, Sec. 3.3) combine L1 on the hole and valid regions, perceptual and style losses on
ImageNet VGG-16 features, and total variation over the hole's one-pixel dilation. VGG weights cannot be
downloaded here, so the perceptual and style terms are replaced by an L1 on finite-difference image
gradients over the same dilated hole (edges carry most of what a perceptual loss rewards on CT).

All functions take (N, 1, H, W) tensors in normalised HU (see :mod:`.partial_conv`) and a validity mask
``valid`` (N, 1, H, W), 1 on known pixels and 0 in the hole. Means are over the region's pixels, so a term
does not shrink when the hole is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GeometryError

_EPS = 1e-6


def _check(output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
    if output.ndim != 4 or output.shape[1] != 1:
        raise GeometryError(f"expected (N, 1, H, W) tensors, got output shape {tuple(output.shape)}")
    if target.shape != output.shape or valid.shape != output.shape:
        raise GeometryError(f"output {tuple(output.shape)}, target {tuple(target.shape)} and valid mask "
                            f"{tuple(valid.shape)} must have the same shape")


def _masked_mean(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return (values * region).sum() / (region.sum() * values.shape[1] / region.shape[1] + _EPS)


def dilated_hole(valid: torch.Tensor) -> torch.Tensor:
    """The hole grown by one pixel (3x3 neighbourhood): the region P of Liu et al.'s TV term, (N, 1, H, W)."""
    return F.max_pool2d(1.0 - valid, kernel_size=3, stride=1, padding=1)


def hole_l1(output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the hole pixels (normalised HU)."""
    _check(output, target, valid)
    return _masked_mean((output - target).abs(), 1.0 - valid)


def valid_l1(output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the known pixels (zero for a composited output)."""
    _check(output, target, valid)
    return _masked_mean((output - target).abs(), valid)


def _differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along H and W, zero-padded to (N, C, H, W)."""
    dy = F.pad(x[:, :, 1:, :] - x[:, :, :-1, :], (0, 0, 0, 1))
    dx = F.pad(x[:, :, :, 1:] - x[:, :, :, :-1], (0, 1, 0, 0))
    return dy, dx


def hole_total_variation(output: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of ``output`` over the hole's one-pixel dilation (normalised HU / pixel)."""
    _check(output, output, valid)
    dy, dx = _differences(output)
    return _masked_mean(dy.abs() + dx.abs(), dilated_hole(valid))


def hole_gradient_l1(output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 between the image gradients of output and target over the hole's one-pixel dilation."""
    _check(output, target, valid)
    (oy, ox), (ty, tx) = _differences(output), _differences(target)
    return _masked_mean((oy - ty).abs() + (ox - tx).abs(), dilated_hole(valid))


@dataclass(frozen=True)
class InpaintingLossWeights:
    """Hole, valid and TV weights follow Liu et al. (6, 1, 0.1); the gradient weight is ours."""

    hole: float = 6.0
    valid: float = 1.0
    total_variation: float = 0.1
    gradient: float = 1.0


def inpainting_loss(output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    weights: InpaintingLossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the four terms, and each term's value (detached floats) for logging."""
    w = weights or InpaintingLossWeights()
    terms = {
        "hole": hole_l1(output, target, valid),
        "valid": valid_l1(output, target, valid),
        "total_variation": hole_total_variation(output, valid),
        "gradient": hole_gradient_l1(output, target, valid),
    }
    total = (w.hole * terms["hole"] + w.valid * terms["valid"] + w.total_variation * terms["total_variation"]
             + w.gradient * terms["gradient"])
    return total, {name: float(value.detach()) for name, value in terms.items()}
