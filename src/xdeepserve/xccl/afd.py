"""A2E / E2A between attention ranks and expert ranks, with trampoline forwarding (paper §3.3).

Attention ranks hold tokens and gates; expert ranks hold experts. A2E moves every (token, slot) pair to
the expert rank owning its expert; E2A brings the expert outputs back, where the gate-weighted sum is
taken. When there are fewer attention ranks than expert ranks, the first ``A`` expert ranks act as
**trampolines**: attention rank ``i`` sends everything to trampoline ``i`` only (one metadata update
instead of ``E``), the trampoline forwards each record to its expert rank, and E2A retraces the path.
The pairing attention ``i`` ↔ trampoline ``i`` is the natural reading of the paper (it does not state
one).

Every exchange is sparse (:meth:`XcclGroup.exchange`): only the pairs on the path take part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .ep import (
    ExpertPlacement,
    group_by_expert,
    pack_records,
    record_views,
    rows_bytes,
    rows_from,
    ungroup,
    weighted_sum,
)
from .group import XcclGroup


@dataclass(frozen=True)
class AfdLayout:
    attention: tuple[int, ...]  # attention rank ids
    experts: tuple[int, ...]  # expert rank ids; experts are placed on them contiguously
    num_experts: int
    trampoline: bool = True  # forward through trampolines when attention ranks are fewer (else direct)

    def __post_init__(self) -> None:
        if set(self.attention) & set(self.experts):
            raise ValueError("a rank cannot be both an attention and an expert rank")

    @property
    def placement(self) -> ExpertPlacement:
        """Owner = the expert *rank id* of every global expert."""
        base = ExpertPlacement.contiguous(self.num_experts, len(self.experts))
        return ExpertPlacement(owner=torch.tensor(self.experts)[base.owner], local_index=base.local_index)

    @property
    def uses_trampolines(self) -> bool:
        return self.trampoline and len(self.attention) < len(self.experts)

    def trampoline_of(self, attention_rank: int) -> int:
        return self.experts[self.attention.index(attention_rank)]

    @property
    def trampolines(self) -> tuple[int, ...]:
        return self.experts[: len(self.attention)] if self.uses_trampolines else ()

    def attention_of(self, trampoline: int) -> int:
        return self.attention[self.experts.index(trampoline)]


@dataclass
class A2EHandle:
    """Attention side: per destination, the flat pair indices in sending order."""

    sent_pairs: dict[int, torch.Tensor]
    num_tokens: int
    top_k: int
    weights: torch.Tensor
    dtype: torch.dtype
    hidden: int


@dataclass
class ExpertHandle:
    """Expert side: rows received from each source (in order) and the grouping permutation; for a
    trampoline also the hop-1 bookkeeping needed to send the outputs back to its attention rank."""

    recv_counts: dict[int, int]
    order: torch.Tensor
    hidden: int
    dtype: torch.dtype
    forwarded: dict[int, torch.Tensor] = field(default_factory=dict)  # expert rank -> hop-1 record indices
    hop1_records: int = 0


def a2e(
    group: XcclGroup, layout: AfdLayout, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
    *, event_id: int, int8: bool = False,
) -> A2EHandle:
    """Attention rank: send every pair towards its expert. Records carry the *global* expert id."""
    t, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    if layout.uses_trampolines:
        pairs = torch.arange(t * k)
        dest = layout.trampoline_of(group.rank)
        sent = {dest: pairs}
    else:
        owner = layout.placement.owner[flat]
        sent = {d: (owner == d).nonzero().flatten() for d in layout.experts}
    sends = {d: pack_records(x, p // k, flat[p], int8).reshape(-1) for d, p in sent.items()}
    group.exchange(sends, [], event_id)
    return A2EHandle(sent, t, k, topk_weights, x.dtype, x.shape[1])


def a2e_serve(
    group: XcclGroup, layout: AfdLayout, *, hidden: int, dtype: torch.dtype, event_id: int, int8: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ExpertHandle]:
    """Expert rank: receive (forwarding first if a trampoline); returns rows grouped by local expert,
    their local expert ids, tokens per local expert, and the handle for E2A."""
    placement = layout.placement
    forwarded: dict[int, torch.Tensor] = {}
    hop1 = 0
    if layout.uses_trampolines:
        sends = {}
        if group.rank in layout.trampolines:  # hop 1: from our attention rank
            src = layout.attention_of(group.rank)
            payload = group.exchange({}, [src], event_id)[src]
            ids, _ = record_views(payload, hidden, dtype, int8)
            rec = payload.size // max(1, len(ids))
            records = payload.reshape(len(ids), rec) if len(ids) else payload.reshape(0, 0)
            owner = placement.owner[ids]
            hop1 = len(ids)
            for d in layout.experts:  # hop 2: forward the records unchanged
                idx = (owner == d).nonzero().flatten()
                forwarded[d] = idx
                sends[d] = records[idx.numpy()].reshape(-1) if len(ids) else records.reshape(-1)
        received = group.exchange(sends, list(layout.trampolines), event_id)
    else:
        received = group.exchange({}, list(layout.attention), event_id)
    parsed = {s: record_views(p, hidden, dtype, int8) for s, p in received.items()}
    sources = sorted(parsed)
    n_local = int((placement.owner == group.rank).sum())
    rows, local, per_expert, order = group_by_expert(
        [(placement.local_index[parsed[s][0]], parsed[s][1]) for s in sources], n_local, hidden, dtype
    )
    counts = {s: len(parsed[s][0]) for s in sources}
    return rows, local, per_expert, ExpertHandle(counts, order, hidden, dtype, forwarded, hop1)


def e2a_serve(group: XcclGroup, layout: AfdLayout, expert_out: torch.Tensor, handle: ExpertHandle, *, event_id: int) -> None:
    """Expert rank: return the outputs along the path they came (and, as a trampoline, reassemble and
    forward them to the attention rank)."""
    sources = sorted(handle.recv_counts)
    parts = ungroup(expert_out, handle.order, [handle.recv_counts[s] for s in sources])
    sends = {s: rows_bytes(p) for s, p in zip(sources, parts)}
    if not layout.uses_trampolines:
        group.exchange(sends, [], event_id)
        return
    is_trampoline = group.rank in layout.trampolines
    back = group.exchange(sends, list(layout.experts) if is_trampoline else [], event_id)
    if is_trampoline:  # undo hop 2, then hop 1
        rows = torch.empty(handle.hop1_records, handle.hidden, dtype=handle.dtype)
        for d, idx in handle.forwarded.items():
            if len(idx):
                rows[idx] = rows_from(back[d], handle.hidden, handle.dtype)
        group.exchange({layout.attention_of(group.rank): rows_bytes(rows)}, [], event_id)


def e2a(group: XcclGroup, layout: AfdLayout, handle: A2EHandle, *, event_id: int) -> torch.Tensor:
    """Attention rank: receive the expert outputs and take each token's gate-weighted sum."""
    received = group.exchange({}, list(handle.sent_pairs), event_id)
    parts = [(pairs, rows_from(received[d], handle.hidden, handle.dtype)) for d, pairs in handle.sent_pairs.items()]
    return weighted_sum(handle.num_tokens, handle.hidden, handle.top_k, handle.weights, parts).to(handle.dtype)
