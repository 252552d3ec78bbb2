"""Block allocator and prefix cache: properties under random operation sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xdeepserve.engine.kv_cache_manager import KVCacheManager
from xdeepserve.engine.request import Request, SamplingParams

SP = SamplingParams(max_tokens=4)


def _req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SP)


def _admit(kv: KVCacheManager, req: Request) -> bool:
    prefix = kv.match_prefix(req)
    return kv.allocate(req, req.num_tokens - len(prefix) * kv.block_size, prefix)


def test_shared_prefix_reuses_blocks_and_counts_references():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = _req("a", list(range(10)))
    assert _admit(kv, a)
    a.num_computed_tokens = 10
    kv.cache_full_blocks(a)
    b = _req("b", list(range(8)) + [99, 98, 97])
    assert _admit(kv, b)
    assert b.block_ids[:2] == a.block_ids[:2] and b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert kv.blocks[a.block_ids[0]].ref_count == 2
    kv.free(a)
    assert kv.blocks[b.block_ids[0]].ref_count == 1
    kv.check_invariants()


def test_freed_prefix_blocks_are_revived_until_evicted():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = _req("a", list(range(9)))
    assert _admit(kv, a)
    a.num_computed_tokens = 9
    kv.cache_full_blocks(a)
    kv.free(a)
    c = _req("c", list(range(8)) + [5])
    assert _admit(kv, c) and c.num_cached_tokens == 8  # content survived the free
    kv.free(c)
    big = _req("big", [7] * 16)  # needs every block: the cached ones are evicted
    assert _admit(kv, big) and big.num_cached_tokens == 0
    kv.free(big)
    d = _req("d", list(range(8)) + [5])
    assert _admit(kv, d) and d.num_cached_tokens == 0
    kv.check_invariants()


def test_at_least_one_token_is_left_to_compute_on_a_full_hit():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = _req("a", list(range(8)))
    assert _admit(kv, a)
    a.num_computed_tokens = 8
    kv.cache_full_blocks(a)
    b = _req("b", list(range(8)))
    assert _admit(kv, b)
    assert b.num_computed_tokens == 4  # the last block is recomputed so the last token yields logits


def test_allocation_fails_cleanly_when_out_of_blocks():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = _req("a", list(range(12)))
    assert _admit(kv, a)
    b = _req("b", [1, 2])
    assert not _admit(kv, b)
    assert b.block_ids == [] and kv.num_free_blocks == 0
    kv.check_invariants()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["admit", "grow", "free"]), st.integers(0, 5), st.integers(1, 20)),
        min_size=1,
        max_size=60,
    )
)
def test_random_operations_keep_refcounts_and_free_list_consistent(ops):
    kv = KVCacheManager(num_blocks=12, block_size=4)
    live: dict[int, Request] = {}
    for op, slot, n in ops:
        if op == "admit" and slot not in live:
            req = _req(f"r{slot}-{n}", [slot % 3] * 4 + list(range(n)))  # prefixes collide on purpose
            if _admit(kv, req):
                req.num_computed_tokens = req.num_tokens
                kv.cache_full_blocks(req)
                live[slot] = req
        elif op == "grow" and slot in live:
            req = live[slot]
            req.output_token_ids.append(n)
            if kv.allocate(req, 1):
                req.num_computed_tokens += 1
                kv.cache_full_blocks(req)
        elif op == "free" and slot in live:
            kv.free(live.pop(slot))
        kv.check_invariants()
        for req in live.values():
            assert len(req.block_ids) >= kv.blocks_needed(req.num_computed_tokens)
        in_use = {b for r in live.values() for b in r.block_ids}
        assert len(in_use) + kv.num_free_blocks == kv.num_blocks
    for req in live.values():
        kv.free(req)
    assert kv.num_free_blocks == kv.num_blocks
