"""Versioned controller state with a staleness bound (what makes the views safe under bad networks)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Versioned:
    seq: int
    sent_at: float
    value: Any
    incarnation: int = 0


class VersionedStore:
    """Latest-wins store keyed by source: an update is accepted only if it is newer and fresh.

    Updates are versioned by ``(incarnation, seq)``: the incarnation is chosen when the sending controller
    starts (its start time in ns), so a restarted controller, whose ``seq`` starts again at 1, supersedes
    its previous life. ``offer`` rejects (returns a reason) an update whose ``sent_at`` is older than
    ``now - staleness_bound_s``, and one whose version is not above the stored one (duplicate or reordered
    delivery) while the stored entry is still fresh; once the stored entry is older than the staleness
    bound, any fresh update replaces it (so a bogus huge ``seq`` cannot lock a key out for good).
    ``version`` counts accepted updates, so two views are equal iff they accepted the same updates. Pure
    and synchronous: the property tests drive it with arbitrary delayed/duplicated/dropped deliveries.
    """

    def __init__(self, staleness_bound_s: float):
        self.staleness_bound_s = staleness_bound_s
        self.entries: dict[Hashable, Versioned] = {}
        self.version = 0

    def offer(self, key: Hashable, seq: int, sent_at: float, value: Any, now: float, incarnation: int = 0
              ) -> str | None:
        age = now - sent_at
        if age > self.staleness_bound_s:
            return f"stale: {age:.3f} s old, bound {self.staleness_bound_s:.3f} s"
        cur = self.entries.get(key)
        if cur is not None and (incarnation, seq) <= (cur.incarnation, cur.seq) and self.is_fresh(key, now):
            if incarnation < cur.incarnation:
                return f"stale: incarnation {incarnation} < current {cur.incarnation}"
            return f"stale: seq {seq} <= current {cur.seq}"
        self.entries[key] = Versioned(seq, sent_at, value, incarnation)
        self.version += 1
        return None

    def get(self, key: Hashable) -> Versioned | None:
        return self.entries.get(key)

    def is_fresh(self, key: Hashable, now: float) -> bool:
        e = self.entries.get(key)
        return e is not None and now - e.sent_at <= self.staleness_bound_s

    def seqs(self) -> dict[Hashable, int]:
        return {k: e.seq for k, e in self.entries.items()}
