"""Expert-parallel dispatch and combine over the pull-based exchange (paper §3.2).

``dispatch`` sends every (token, top-k slot) pair to the rank that owns the chosen expert; the receiver
gets its rows grouped by local expert, ready for grouped expert compute. ``combine`` sends the expert
outputs back along the same routes; each token's owner sums them weighted by the gate. Optionally the
dispatched hidden states travel as INT8 with one fp32 scale per row, quantised inside dispatch
(halving bf16 traffic, quartering fp32).

Wire format of one payload (source -> destination): ``int32 local_expert[n]`` then ``n`` rows, each the
hidden state in the activation dtype, or ``int8[H]`` followed by its ``float32`` scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Exchange(Protocol):
    """What dispatch/combine need from a transport: :class:`~xdeepserve.xccl.group.XcclGroup`, or a
    baseline with the same contract (the benchmark's gloo ``all_to_all_single``)."""

    rank: int
    world_size: int

    def alltoallv(self, sends: list[np.ndarray], event_id: int) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class ExpertPlacement:
    """Which rank holds each (global) expert, and its index among that rank's experts."""

    owner: torch.Tensor  # [E] long
    local_index: torch.Tensor  # [E] long

    @classmethod
    def contiguous(cls, num_experts: int, world_size: int) -> ExpertPlacement:
        if num_experts % world_size:
            raise ValueError(f"{num_experts} experts do not split evenly over {world_size} ranks")
        per = num_experts // world_size
        e = torch.arange(num_experts)
        return cls(owner=e // per, local_index=e % per)

    def local_experts(self, rank: int) -> torch.Tensor:
        """Global ids of the experts on ``rank``, in local-index order."""
        mine = (self.owner == rank).nonzero().flatten()
        return mine[torch.argsort(self.local_index[mine])]


@dataclass
class DispatchHandle:
    """What combine needs to route outputs back: per destination, the flat (token * k + slot) pair
    indices in the order their rows were sent; per source, how many rows came; and the permutation
    that grouped the received rows by local expert."""

    sent_pairs: list[torch.Tensor]
    recv_counts: list[int]
    expert_order: torch.Tensor
    num_tokens: int
    top_k: int
    weights: torch.Tensor  # [T, k] gate weights of the owner's tokens
    dtype: torch.dtype
    hidden: int


def _quantize_rows(rows: torch.Tensor) -> np.ndarray:
    scale = rows.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / 127.0
    q = torch.round(rows.float() / scale).clamp_(-127, 127).to(torch.int8)
    packed = torch.cat([q.view(torch.uint8), scale.reshape(-1).contiguous().view(torch.uint8).reshape(-1, 4)], dim=1)
    return packed.contiguous().numpy()


def _row_bytes(hidden: int, dtype: torch.dtype, int8: bool) -> int:
    return hidden + 4 if int8 else hidden * torch.tensor([], dtype=dtype).element_size()


def dispatch(
    group: Exchange,
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    placement: ExpertPlacement,
    *,
    event_id: int,
    int8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DispatchHandle]:
    """Returns ``(rows [R, H], local_expert [R], tokens_per_local_expert [E_local], handle)``; rows are
    grouped by local expert (stable in source order)."""
    t, k = topk_ids.shape
    hidden = x.shape[1]
    flat = topk_ids.reshape(-1)
    dest = placement.owner[flat]
    local = placement.local_index[flat].to(torch.int32)
    sends, sent_pairs = [], []
    for d in range(group.world_size):
        pairs = (dest == d).nonzero().flatten()
        rows = x.index_select(0, pairs // k)
        body = _quantize_rows(rows) if int8 else rows.contiguous().view(torch.uint8).numpy()
        sends.append(np.concatenate([local[pairs].numpy().view(np.uint8), body.reshape(-1)]))
        sent_pairs.append(pairs)
    received = group.alltoallv(sends, event_id)
    row_bytes = _row_bytes(hidden, x.dtype, int8)
    ids, rows, counts = [], [], []
    for payload in received:
        n = payload.size // (4 + row_bytes)
        counts.append(n)
        ids.append(torch.from_numpy(payload[: 4 * n].copy().view(np.int32)).long())
        body = torch.from_numpy(payload[4 * n :].copy()).view(n, row_bytes)
        if int8:
            q = body[:, :hidden].view(torch.int8).float()
            scale = body[:, hidden:].contiguous().view(torch.float32)
            rows.append((q * scale).to(x.dtype))
        else:
            rows.append(body.view(x.dtype).reshape(n, hidden))
    all_ids = torch.cat(ids)
    order = torch.argsort(all_ids, stable=True)
    n_local = int((placement.owner == group.rank).sum())
    per_expert = torch.bincount(all_ids, minlength=n_local)
    handle = DispatchHandle(sent_pairs, counts, order, t, k, topk_weights, x.dtype, hidden)
    return torch.cat(rows)[order], all_ids[order], per_expert, handle


def combine(group: Exchange, expert_out: torch.Tensor, handle: DispatchHandle, *, event_id: int) -> torch.Tensor:
    """``expert_out [R, H]`` in dispatch's output order -> ``[T, H]`` gate-weighted sums at the owners."""
    by_source = torch.empty_like(expert_out)
    by_source[handle.expert_order] = expert_out  # undo the grouping by expert
    sends, start = [], 0
    for n in handle.recv_counts:
        sends.append(by_source[start : start + n].contiguous().view(torch.uint8).numpy().reshape(-1))
        start += n
    received = group.alltoallv(sends, event_id)
    out = torch.zeros(handle.num_tokens, handle.hidden, dtype=torch.float32)
    w = handle.weights.reshape(-1).float()
    for pairs, payload in zip(handle.sent_pairs, received):
        if len(pairs) == 0:
            continue
        rows = torch.from_numpy(payload.copy()).view(handle.dtype).reshape(len(pairs), handle.hidden).float()
        out.index_add_(0, pairs // handle.top_k, rows * w[pairs].unsqueeze(1))
    return out.to(handle.dtype)
