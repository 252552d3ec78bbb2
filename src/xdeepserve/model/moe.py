"""FFN units: dense SwiGLU FFN, MoE routers, routed experts and the MoE block.

The MoE block is three separable steps so a deployment can place them apart (xDeepServe's
Transformerless, paper §5): :meth:`Router.forward` (on the attention side: hidden -> expert ids and
gate weights), :meth:`Experts.forward` (on the expert side: tokens grouped by expert), and the shared
experts (wherever the hidden state is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import FusedLinear


class DenseFFN(nn.Module):
    """SwiGLU FFN: ``down(silu(gate(x)) * up(x))``, with gate and up fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = FusedLinear(hidden, [intermediate, intermediate], bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Router(nn.Module):
    """Top-k gating. Returns ``(topk_ids [T, k] long, topk_weights [T, k] fp32)``.

    - ``softmax``: softmax over all experts, top-k, optional renormalisation (Qwen3-MoE, Mixtral).
    - ``sigmoid_grouped``: DeepSeek-V3 — sigmoid scores, selection biased by ``e_score_correction_bias``,
      only the ``topk_group`` groups with the best top-2 sums are eligible, gate weights are the unbiased
      scores (renormalised if configured) times ``routed_scaling_factor``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.router
        self.num_experts, self.top_k = cfg.num_experts, cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.scaling = cfg.routed_scaling_factor
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        if self.kind == "sigmoid_grouped":
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "softmax":
            logits = F.linear(x, self.weight)
            probs = logits.float().softmax(dim=-1)
            weights, ids = probs.topk(self.top_k, dim=-1)
            if self.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            return ids, weights
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()
        choice = scores + self.e_score_correction_bias
        if self.n_group > 1:
            t = choice.shape[0]
            grouped = choice.view(t, self.n_group, -1)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            keep = group_scores.topk(self.topk_group, dim=-1).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            choice = choice.masked_fill(~group_mask.unsqueeze(-1).expand_as(grouped).reshape(t, -1), float("-inf"))
        ids = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, weights * self.scaling


def _grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cuda" or dtype != torch.bfloat16 or not hasattr(torch, "_grouped_mm"):
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


PADDED_BMM_MAX_PAIRS = 512  # (token, expert) pairs up to which the padded batched matmul is used


class Experts(nn.Module):
    """Routed experts with stacked weights: ``w13 [E, 2I, H]`` (gate rows then up rows), ``w2 [E, H, I]``.

    Tokens are sorted by expert and each expert runs once over its contiguous slice (never token by
    token). On Hopper GPUs in bf16 one ``torch._grouped_mm`` call runs all experts; the token counts
    are computed with a scatter (no host sync), so the step stays capturable in a CUDA graph.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.num_experts, self.intermediate = num_experts, intermediate
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, intermediate))

    def tokens_per_expert(self, topk_ids: torch.Tensor) -> torch.Tensor:
        flat = topk_ids.reshape(-1)
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=flat.device)
        return counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        t, k = topk_ids.shape
        order = self.sort_by_expert(topk_ids)
        token_of = order // k
        xs = x.index_select(0, token_of)
        counts = self.tokens_per_expert(topk_ids)
        if _grouped_mm_available(x.device, x.dtype):
            ys = self.run_grouped(xs, counts)
        elif xs.shape[0] <= PADDED_BMM_MAX_PAIRS:
            ys = self.run_padded(xs, counts)
        else:
            ys = self.run_loop(xs, counts)
        ys = ys * topk_weights.reshape(-1)[order].unsqueeze(-1).to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, ys)

    def sort_by_expert(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """Permutation of the flattened (token, slot) pairs that groups them by expert, stable.

        On CUDA, ranks from a one-hot cumulative sum replace a radix sort (measured 27 µs per layer
        at 1,024 pairs on an H200, more than the rest of the routing glue together)."""
        flat = topk_ids.reshape(-1)
        if not flat.is_cuda:
            return torch.argsort(flat, stable=True)
        onehot = F.one_hot(flat, self.num_experts).to(torch.int32)
        counts = onehot.sum(0)
        rank = onehot.cumsum(0).gather(1, flat[:, None]).squeeze(1) - 1
        dest = (torch.cumsum(counts, 0) - counts)[flat] + rank
        return torch.empty_like(flat).scatter_(0, dest.long(), torch.arange(flat.numel(), device=flat.device))

    def run_grouped(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """All experts in two ``torch._grouped_mm`` calls; rows of ``xs`` are sorted by expert."""
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        h = torch._grouped_mm(xs, self.w13.transpose(-2, -1), offs=offs)
        gate, up = h.split(self.intermediate, dim=-1)
        return torch._grouped_mm(F.silu(gate) * up, self.w2.transpose(-2, -1), offs=offs)

    def run_padded(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Small batches: every expert's rows padded to the busiest expert's count, then one batched
        matmul per projection instead of two small matmuls per expert (decode on CPU is call-bound)."""
        counts_l = counts.tolist()
        cap = max(counts_l)
        starts = torch.cumsum(counts, 0) - counts
        expert_of = torch.repeat_interleave(torch.arange(self.num_experts, device=xs.device), counts)
        slot = torch.arange(xs.shape[0], device=xs.device) - starts[expert_of] + expert_of * cap
        padded = xs.new_zeros(self.num_experts * cap, xs.shape[1])
        padded[slot] = xs
        h = torch.bmm(padded.view(self.num_experts, cap, -1), self.w13.transpose(1, 2))
        gate, up = h.split(self.intermediate, dim=-1)
        y = torch.bmm(F.silu(gate) * up, self.w2.transpose(1, 2))
        return y.view(self.num_experts * cap, -1)[slot]

    def run_loop(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """One matmul pair per expert over its contiguous slice (needs the counts on the host)."""
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n:
                gate, up = F.linear(xs[start : start + n], self.w13[e]).split(self.intermediate, dim=-1)
                ys[start : start + n] = F.linear(F.silu(gate) * up, self.w2[e])
                start += n
        return ys

    @property
    def capturable(self) -> bool:
        """Whether forward runs without host syncs (so it can be captured in a CUDA graph)."""
        return _grouped_mm_available(self.w13.device, self.w13.dtype)


class MoE(nn.Module):
    """Router + routed experts (+ shared experts for DeepSeek)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_experts = (
            DenseFFN(cfg.hidden_size, cfg.shared_expert_intermediate_size) if cfg.num_shared_experts else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, weights = self.gate(x)
        out = self.experts(x, ids, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
