"""Routing decisions of job executors and TE-shells (pure functions over load reports)."""

from __future__ import annotations

from xdeepserve.pd.routing import BLOCK, PrefixIndex, Target, block_hashes, pick_decode, pick_prefill


def test_prefill_prefers_prefix_hits_then_the_shorter_queue():
    a, b = Target("a", load={"waiting_tokens": 0}), Target("b", load={"waiting_tokens": 0})
    prompt = list(range(5 * BLOCK))
    first = pick_prefill([a, b], prompt)
    first.report({"waiting_tokens": 0}, 1.0)  # it has prefilled it since
    # the same prompt again: its blocks are (probably) cached there
    assert pick_prefill([a, b], prompt) is first
    # an unrelated prompt goes to the idle one
    other = pick_prefill([a, b], [7] * (5 * BLOCK))
    assert other is not first


def test_prefill_keeps_long_and_short_prompts_apart_while_possible():
    short, long_ = Target("s", prompts="short"), Target("l", prompts="long")
    long_.load = {"waiting_tokens": 10_000}  # busy, yet long prompts still go there
    assert pick_prefill([short, long_], [1] * 300, long_threshold=256) is long_
    assert pick_prefill([short, long_], [1] * 10, long_threshold=256) is short
    assert pick_prefill([short], [1] * 300, long_threshold=256) is short  # the long one is gone


def test_decode_skips_full_batches_and_counts_reserved_blocks():
    a = Target("a", load={"batch": 4, "max_batch": 4, "num_blocks": 100, "used_blocks": 0, "reserved_blocks": 0})
    b = Target("b", load={"batch": 1, "max_batch": 4, "num_blocks": 100, "used_blocks": 10, "reserved_blocks": 50})
    c = Target("c", load={"batch": 1, "max_batch": 4, "num_blocks": 100, "used_blocks": 30, "reserved_blocks": 0})
    assert pick_decode([a, b, c], 4) is c  # a is at its cap; b's running requests will need 50 more blocks
    a.load["batch"] = b.load["batch"] = c.load["batch"] = 4
    assert pick_decode([a, b, c], 4) is a  # all full: the least pressed one (the request waits there)


def test_prefix_index_is_bounded_and_counts_leading_blocks_only():
    idx = PrefixIndex(capacity=3)
    h = block_hashes(list(range(4 * BLOCK)))
    idx.add(h)
    assert len(idx.blocks) == 3 and idx.hit_tokens(h) == 0  # the first block was evicted
    idx.add(h[:2])
    assert idx.hit_tokens(h) == 2 * BLOCK
