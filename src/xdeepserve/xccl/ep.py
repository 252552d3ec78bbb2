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


def _row_bytes(hidden: int, dtype: torch.dtype, int8: bool) -> int:
    return hidden + 4 if int8 else hidden * torch.tensor([], dtype=dtype).element_size()


def pack_records(x: torch.Tensor, token_index: torch.Tensor, ids: torch.Tensor, int8: bool) -> np.ndarray:
    """``[n, 4 + row_bytes]`` records for rows ``x[token_index]``: an int32 expert id, then the row
    (INT8 + fp32 scale, or raw). Fixed-size records let a trampoline forward any subset without
    decoding it. The rows are gathered straight into the records (one copy)."""
    n, hidden = len(token_index), x.shape[1]
    row = _row_bytes(hidden, x.dtype, int8)
    out = np.empty((n, 4 + row), dtype=np.uint8)
    if n == 0:
        return out
    out[:, :4] = ids.to(torch.int32).contiguous().numpy().view(np.uint8).reshape(n, 4)
    body = torch.from_numpy(out)[:, 4:]
    if int8:
        rows = x.index_select(0, token_index).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        body[:, :hidden].view(torch.int8).copy_(torch.round(rows / scale).clamp_(-127, 127))
        out[:, 4 + hidden :] = scale.numpy().view(np.uint8).reshape(n, 4)
    else:
        np.take(x.contiguous().view(torch.uint8).numpy().reshape(-1, row), token_index.numpy(), axis=0,
                out=out[:, 4:], mode="clip")  # indices are in range; "clip" writes without a buffer
    return out


def record_views(
    payload: np.ndarray, hidden: int, dtype: torch.dtype, int8: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of ``n`` records -> ``(expert ids [n] long, rows [n, hidden])``. Raw rows are a view into
    ``payload`` (valid until its buffer is reused: the next exchange); INT8 rows are dequantised."""
    if payload.size == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, hidden, dtype=dtype)
    rec = 4 + _row_bytes(hidden, dtype, int8)
    records = payload.reshape(-1, rec)
    # small fields are copied out (``copy`` gives canonical strides, so the dtype views are legal)
    ids = torch.from_numpy(records[:, :4].copy().view(np.int32).reshape(-1).astype(np.int64))
    if int8:
        q = torch.from_numpy(records[:, 4 : 4 + hidden].copy().view(np.int8)).float()
        scale = torch.from_numpy(records[:, 4 + hidden :].copy().view(np.float32))
        return ids, (q * scale).to(dtype)
    body = torch.from_numpy(records)[:, 4:]
    try:
        return ids, body.view(dtype)  # strided view, no copy
    except RuntimeError:  # a record stride this dtype cannot express as a view: copy
        return ids, torch.from_numpy(records[:, 4:].copy()).view(dtype)


def rows_bytes(rows: torch.Tensor) -> np.ndarray:
    if rows.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    return rows.contiguous().view(torch.uint8).numpy().reshape(-1)


def rows_from(payload: np.ndarray, hidden: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of a received payload, as a view (valid until the next exchange reuses the buffer)."""
    if payload.size == 0:
        return torch.zeros(0, hidden, dtype=dtype)
    return torch.from_numpy(payload).view(dtype).reshape(-1, hidden)


def group_by_expert(
    parts: list[tuple[torch.Tensor, torch.Tensor]], n_local: int, hidden: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Received (local expert ids, rows) per source -> ``(rows, ids, counts per expert, order)`` with
    the rows stably sorted by local expert; ``order`` maps grouped position -> position in the
    concatenation of the parts. Each part's rows are copied once, straight to their grouped place."""
    ids = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
    order = torch.argsort(ids, stable=True)
    place = torch.empty_like(order)
    place[order] = torch.arange(len(order))
    rows = torch.empty(len(ids), hidden, dtype=dtype)
    offset = 0
    for i, r in parts:
        if len(i):
            rows.index_copy_(0, place[offset : offset + len(i)], r)
        offset += len(i)
    return rows, ids[order], torch.bincount(ids, minlength=n_local), order


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
        sends.append(pack_records(x, pairs // k, local[pairs], int8).reshape(-1))
        sent_pairs.append(pairs)
    received = group.alltoallv(sends, event_id)
    parsed = [record_views(p, hidden, x.dtype, int8) for p in received]
    counts = [len(ids) for ids, _ in parsed]
    n_local = int((placement.owner == group.rank).sum())
    rows, ids, per_expert, order = group_by_expert(parsed, n_local, hidden, x.dtype)
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
