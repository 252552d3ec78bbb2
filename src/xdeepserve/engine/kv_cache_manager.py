"""Paged KV-cache blocks: allocator with reference counts and prefix caching.

Blocks hold ``block_size`` tokens. A *full* block is identified by the hash chain of its tokens and of
every token before it, so two requests whose prompts share a prefix share that prefix's blocks (their
reference counts go up). Freed blocks keep their content and hash and sit in an LRU free queue: a later
request with the same prefix revives them, and allocation evicts the least recently freed first.
"""

from __future__ import annotations

import array
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from .request import Request


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None  # set once the block is full and its tokens are final


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}  # block hash -> block id
        self._req_hashes: dict[str, list[bytes]] = {}  # request id -> hashes of its full blocks
        self._registered: dict[str, int] = {}  # request id -> leading full blocks already in the index
        self.prefix_hit_tokens = 0
        self.prefix_query_tokens = 0

    # ---- queries ---------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def record_admission(self, req: Request) -> None:
        """Count one prefix-cache lookup for an admitted request (failed attempts are not counted)."""
        self.prefix_query_tokens += req.num_prompt_tokens
        self.prefix_hit_tokens += req.num_cached_tokens

    # ---- hashing -----------------------------------------------------------------------------------
    def _block_hashes(self, req: Request, upto_tokens: int) -> list[bytes]:
        """Hash chain of the full blocks among the request's first ``upto_tokens`` tokens (memoised;
        the returned list may be longer when an earlier call asked for more)."""
        hashes = self._req_hashes.setdefault(req.request_id, [])
        tokens = req.all_token_ids
        bs = self.block_size
        for i in range(len(hashes), upto_tokens // bs):
            # a 128-bit chained digest, not Python's hash(): a collision would hand one prompt another
            # prompt's KV blocks
            h = hashlib.blake2b(hashes[-1] if hashes else b"", digest_size=16)
            h.update(array.array("q", tokens[i * bs : (i + 1) * bs]).tobytes())
            hashes.append(h.digest())
        return hashes

    # ---- admission ---------------------------------------------------------------------------------
    def match_prefix(self, req: Request) -> list[int]:
        """Block ids of the longest cached prefix of the request (not yet referenced).

        At least one token is always left to compute, so the last prompt token produces logits.
        """
        if not self.enable_prefix_caching:
            return []
        hashes = self._block_hashes(req, req.num_tokens - 1)
        hit: list[int] = []
        for h in hashes[: (req.num_tokens - 1) // self.block_size]:
            bid = self._cached.get(h)
            if bid is None:
                break
            hit.append(bid)
        return hit

    def allocate(self, req: Request, num_new_tokens: int, prefix_blocks: list[int] | None = None) -> bool:
        """Give ``req`` blocks for ``num_computed_tokens + num_new_tokens`` tokens; False if out of blocks.

        ``prefix_blocks`` (from :meth:`match_prefix`, on admission) are referenced first and count as
        computed tokens.
        """
        prefix_blocks = prefix_blocks or []
        have = len(req.block_ids) + len(prefix_blocks)
        need = self.blocks_needed(req.num_computed_tokens + len(prefix_blocks) * self.block_size + num_new_tokens)
        # revived prefix blocks that are in the free queue are not available for new allocation
        reviving = sum(1 for b in prefix_blocks if self.blocks[b].ref_count == 0)
        if need - have > len(self._free) - reviving:
            return False
        for bid in prefix_blocks:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self._free[bid]
            block.ref_count += 1
            req.block_ids.append(bid)
        if prefix_blocks:
            req.num_computed_tokens += len(prefix_blocks) * self.block_size
            req.num_cached_tokens = len(prefix_blocks) * self.block_size
        for _ in range(need - have):
            bid, _ = self._free.popitem(last=False)
            block = self.blocks[bid]
            if block.block_hash is not None:  # evict its cached content
                if self._cached.get(block.block_hash) == bid:
                    del self._cached[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            req.block_ids.append(bid)
        return True

    def cache_full_blocks(self, req: Request) -> None:
        """Register the request's computed full blocks in the prefix index."""
        if not self.enable_prefix_caching:
            return
        n_full = req.num_computed_tokens // self.block_size
        start = self._registered.get(req.request_id, 0)
        if n_full <= start:  # called every step: nothing new until a block fills up
            return
        hashes = self._block_hashes(req, req.num_computed_tokens)
        self._registered[req.request_id] = n_full
        for i in range(start, n_full):
            h = hashes[i]
            block = self.blocks[req.block_ids[i]]
            if block.block_hash is None:
                block.block_hash = h
                self._cached.setdefault(h, block.block_id)

    def free(self, req: Request) -> None:
        """Drop the request's references. Tail blocks enter the free queue first so they are evicted
        before the shared prefix blocks."""
        for bid in reversed(req.block_ids):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[bid] = None
        req.block_ids = []
        self._req_hashes.pop(req.request_id, None)
        self._registered.pop(req.request_id, None)

    def check_invariants(self) -> None:
        """Consistency checks used by the property tests."""
        free = set(self._free)
        for b in self.blocks:
            assert b.ref_count >= 0, b
            assert (b.ref_count == 0) == (b.block_id in free), b
        for h, bid in self._cached.items():
            assert self.blocks[bid].block_hash == h
