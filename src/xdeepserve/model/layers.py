"""Small building blocks shared by the units: RMSNorm and rotary position embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import RopeConfig


class FusedLinear(nn.Linear):
    """One matmul for several projections of the same input (q/k/v, or gate/up); ``part_sizes`` are
    the output rows of each part, in order. The loader fills the parts from the checkpoint's separate
    tensors."""

    def __init__(self, in_features: int, part_sizes: list[int], bias: bool) -> None:
        super().__init__(in_features, sum(part_sizes), bias=bias)
        self.part_sizes = tuple(part_sizes)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (as the reference implementations do)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # one fused kernel instead of seven small ones (the decode step is launch-bound)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(rope: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (``dim // 2``,) and the cos/sin magnitude factor for a rotary config."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    if rope.kind == "linear":
        return inv_freq / rope.factor, 1.0
    if rope.kind != "yarn":
        return inv_freq, 1.0
    # YaRN: interpolate the low frequencies, keep the high ones, with a linear ramp in between.
    factor = rope.factor
    orig = rope.original_max_position or 4096
    if rope.mscale and rope.mscale_all_dim:
        attn_factor = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
    else:
        attn_factor = _yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low = max(math.floor(correction_dim(rope.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rope.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1.0 - ramp
    inv_interp = inv_freq / factor
    return inv_interp * (1 - extrapolation) + inv_freq * extrapolation, attn_factor


class RotaryEmbedding(nn.Module):
    """Rotary embedding over the last ``dim`` channels, indexed by absolute token position.

    ``interleaved`` follows DeepSeek's checkpoint layout, where rotary pairs are adjacent channels; the
    output is written de-interleaved (evens then odds). That is a fixed permutation applied to both q and
    k, so q·k is the same as with the interleaved layout.
    """

    def __init__(self, rope: RopeConfig, dim: int, max_positions: int) -> None:
        super().__init__()
        inv_freq, scale = rope_inv_freq(rope, dim)
        self.interleaved = rope.interleaved
        freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]
        self.register_buffer("cos", freqs.cos() * scale, persistent=False)
        self.register_buffer("sin", freqs.sin() * scale, persistent=False)
        self._memo: tuple | None = None  # (positions, dtype, cos, sin) of the last CPU call

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Every layer of a step passes the same positions tensor: on the CPU, look cos/sin up once per
        # step, not once per layer. The memo keeps a reference to the tensor, so identity cannot be
        # confused with a later tensor at the same address; the runner builds positions afresh every
        # step on the CPU. (Not on CUDA, where captured graphs refill static position buffers.)
        memo = self._memo
        if memo is not None and memo[0] is positions and memo[1] == dtype:
            return memo[2], memo[3]
        cos = self.cos[positions].unsqueeze(1).to(dtype)
        sin = self.sin[positions].unsqueeze(1).to(dtype)
        if not positions.is_cuda:
            self._memo = (positions, dtype, cos, sin)
        return cos, sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [tokens, heads, dim]; positions: [tokens] absolute positions."""
        cos, sin = self._cos_sin(positions, x.dtype)
        if self.interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
        else:
            half = x.shape[-1] // 2
            x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
