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


def pack_records(rows: torch.Tensor, ids: torch.Tensor, int8: bool) -> np.ndarray:
    """``[n, 4 + row_bytes]`` records: an int32 expert id, then the row (INT8 + fp32 scale, or raw).
    Fixed-size records let a trampoline forward any subset without decoding it."""
    n = rows.shape[0]
    row = _row_bytes(rows.shape[1], rows.dtype, int8)
    if n == 0:
        return np.zeros((0, 4 + row), dtype=np.uint8)
    body = (_quantize_rows(rows) if int8 else rows.contiguous().view(torch.uint8).numpy()).reshape(n, row)
    head = ids.to(torch.int32).contiguous().numpy().view(np.uint8).reshape(n, 4)
    return np.concatenate([head, body], axis=1)


def unpack_records(
    payload: np.ndarray, hidden: int, dtype: torch.dtype, int8: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of ``n`` records -> ``(expert ids [n] long, rows [n, hidden] in dtype)``."""
    if payload.size == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, hidden, dtype=dtype)
    rec = 4 + _row_bytes(hidden, dtype, int8)
    records = torch.from_numpy(payload.copy()).view(-1, rec)
    ids = records[:, :4].contiguous().view(torch.int32).reshape(-1).long()
    body = records[:, 4:]
    if int8:
        q = body[:, :hidden].view(torch.int8).float()
        scale = body[:, hidden:].contiguous().view(torch.float32)
        return ids, (q * scale).to(dtype)
    return ids, body.contiguous().view(dtype).reshape(-1, hidden)


def rows_bytes(rows: torch.Tensor) -> np.ndarray:
    if rows.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    return rows.contiguous().view(torch.uint8).numpy().reshape(-1)


def rows_from(payload: np.ndarray, hidden: int, dtype: torch.dtype) -> torch.Tensor:
    if payload.size == 0:
        return torch.zeros(0, hidden, dtype=dtype)
    return torch.from_numpy(payload.copy()).view(dtype).reshape(-1, hidden)


def group_by_expert(ids: torch.Tensor, rows: torch.Tensor, n_local: int):
    """Stable sort of received rows by local expert: ``(rows, ids, counts per expert, order)``."""
    order = torch.argsort(ids, stable=True)
    return rows[order], ids[order], torch.bincount(ids, minlength=n_local), order


def weighted_sum(
    num_tokens: int, hidden: int, top_k: int, weights: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``sum_k w[t, k] * row`` for (pair indices, rows) parts; pair index = token * top_k + slot."""
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32)
    w = weights.reshape(-1).float()
    for pairs, rows in parts:
        if len(pairs):
            out.index_add_(0, pairs // top_k, rows.float() * w[pairs].unsqueeze(1))
    return out


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
    local = placement.local_index[flat]
    sends, sent_pairs = [], []
    for d in range(group.world_size):
        pairs = (dest == d).nonzero().flatten()
        sends.append(pack_records(x.index_select(0, pairs // k), local[pairs], int8).reshape(-1))
        sent_pairs.append(pairs)
    received = group.alltoallv(sends, event_id)
    parsed = [unpack_records(p, hidden, x.dtype, int8) for p in received]
    counts = [len(ids) for ids, _ in parsed]
    n_local = int((placement.owner == group.rank).sum())
    rows, ids, per_expert, order = group_by_expert(
        torch.cat([i for i, _ in parsed]), torch.cat([r for _, r in parsed]), n_local
    )
    return rows, ids, per_expert, DispatchHandle(sent_pairs, counts, order, t, k, topk_weights, x.dtype, hidden)


def ungroup(expert_out: torch.Tensor, order: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Undo :func:`group_by_expert` and split the rows back per source."""
    by_source = torch.empty_like(expert_out)
    by_source[order] = expert_out
    return list(torch.split(by_source, counts))


def combine(group: Exchange, expert_out: torch.Tensor, handle: DispatchHandle, *, event_id: int) -> torch.Tensor:
    """``expert_out [R, H]`` in dispatch's output order -> ``[T, H]`` gate-weighted sums at the owners."""
    sends = [rows_bytes(r) for r in ungroup(expert_out, handle.expert_order, handle.recv_counts)]
    received = group.alltoallv(sends, event_id)
    parts = [(pairs, rows_from(p, handle.hidden, handle.dtype)) for pairs, p in zip(handle.sent_pairs, received)]
    return weighted_sum(handle.num_tokens, handle.hidden, handle.top_k, handle.weights, parts).to(handle.dtype)
