"""Routing decisions of job executors and TE-shells, as plain functions over load reports.

* Prefill (executor: which instance; TE-shell: which DP group): the cheapest by a cost model — prompt
  tokens still to compute there (queued ones plus the ones dispatched since its last report) plus this
  prompt's tokens not expected to hit its prefix cache. An executor also keeps long and short prompts
  apart: an instance marked ``prompts: long`` (or ``short``) is preferred for its class and avoided for
  the other while a suitable one is alive.
* Decode (TE-shell: which DP group): skip groups at their batch cap, then the lowest KV usage counting
  the blocks their running requests still need for their remaining output. (An executor picks the
  decode instance with the most free KV by the same measure.)

The prefix-cache estimate is the executor's (or shell's) own memory of what it sent where: chained
hashes of full blocks of each routed prompt, in a bounded LRU per target. It is approximate by design
(entries may have been evicted there); a wrong guess costs a little load balance, never correctness.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

BLOCK = 16  # tokens per hashed prefix block (the engine's default block size)


def block_hashes(prompt: list[int], block: int = BLOCK) -> list[bytes]:
    out, h = [], b""
    for i in range(0, len(prompt) - block + 1, block):
        h = hashlib.blake2b(h + repr(prompt[i : i + block]).encode(), digest_size=12).digest()
        out.append(h)
    return out


class PrefixIndex:
    """Approximate prefix-cache contents of one routing target."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def hit_tokens(self, hashes: list[bytes]) -> int:
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n * BLOCK

    def add(self, hashes: list[bytes]) -> None:
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


@dataclass
class Target:
    """What a router knows about one instance or DP group."""

    name: str
    load: dict = field(default_factory=dict)  # the latest report
    seen: float = 0.0  # when it arrived (monotonic)
    pending_tokens: int = 0  # prompt tokens sent there since that report
    pending_requests: int = 0
    pending_blocks: int = 0
    prompts: str = "any"
    index: PrefixIndex = field(default_factory=PrefixIndex)

    def report(self, load: dict, now: float) -> None:
        self.load, self.seen = load, now
        self.pending_tokens = self.pending_requests = self.pending_blocks = 0


def prefill_cost(t: Target, hashes: list[bytes], prompt_len: int) -> float:
    return t.load.get("waiting_tokens", 0) + t.pending_tokens + prompt_len - min(prompt_len - 1, t.index.hit_tokens(hashes))


def pick_prefill(targets: list[Target], prompt: list[int], long_threshold: int | None = None) -> Target | None:
    """The cheapest prefill target for ``prompt`` (None if there is none)."""
    if not targets:
        return None
    if long_threshold is not None:
        cls = "long" if len(prompt) >= long_threshold else "short"
        preferred = [t for t in targets if t.prompts == cls]
        neutral = [t for t in targets if t.prompts == "any"]
        targets = preferred + neutral or targets
    hashes = block_hashes(prompt)
    best = min(targets, key=lambda t: (prefill_cost(t, hashes, len(prompt)), t.name))
    best.pending_tokens += len(prompt)
    best.pending_requests += 1
    best.index.add(hashes)
    return best


def kv_pressure(t: Target) -> float:
    load = t.load
    total = max(1, load.get("num_blocks", 1))
    return (load.get("used_blocks", 0) + load.get("reserved_blocks", 0) + t.pending_blocks) / total


def pick_decode(targets: list[Target], blocks_needed: int) -> Target | None:
    """The decode target with the lowest KV pressure among those under their batch cap (all of them
    if every one is at its cap: the request then waits there for a slot, which is back-pressure)."""
    if not targets:
        return None
    open_ = [t for t in targets if t.load.get("batch", 0) + t.pending_requests < t.load.get("max_batch", 1 << 30)]
    best = min(open_ or targets, key=lambda t: (kv_pressure(t), t.name))
    best.pending_requests += 1
    best.pending_blocks += blocks_needed
    return best
