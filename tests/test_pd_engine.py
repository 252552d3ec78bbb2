"""Disaggregated prefill-decode at the engine level: a prefill-only engine parks requests after their
first token; a decode engine with a different block size admits them when it has blocks, pulls their KV
and decodes. Greedy output equals the colocated engine's; blocks never leak; back-pressure holds."""

from __future__ import annotations

import random

import pytest

from xdeepserve.engine.config import EngineConfig
from xdeepserve.engine.core import EngineCore
from xdeepserve.engine.request import FinishReason, SamplingParams
from xdeepserve.pd.kv_transfer import scatter_kv


class _Done:
    """A pull that completed synchronously (same process): the rows are already in place."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def done(self) -> bool:
        return True

    def result(self):
        if self.error:
            raise self.error


def _workload(n: int, seed: int):
    rng = random.Random(seed)
    return [
        (f"r{i}", [rng.randrange(5, 600) for _ in range(rng.randint(2, 90))],
         SamplingParams(max_tokens=rng.randint(1, 30), temperature=0.0, ignore_eos=True))
        for i in range(n)
    ]


def _colocated(path, reqs):
    core = EngineCore(EngineConfig(model=str(path), max_model_len=256, max_num_seqs=16, num_kv_blocks=200))
    for rid, prompt, sp in reqs:
        core.add_request(rid, prompt, sp)
    out = {rid: [] for rid, _, _ in reqs}
    while core.has_work():
        for o in core.step():
            out[o.request_id] += o.new_token_ids
    return out


def _disaggregated(path, reqs, decode_blocks: int, fail: set[str] = frozenset()):
    pre = EngineCore(EngineConfig(model=str(path), max_model_len=256, max_num_seqs=16, num_kv_blocks=120,
                                  prefill_only=True, max_num_batched_tokens=256))
    dec = EngineCore(EngineConfig(model=str(path), max_model_len=256, max_num_seqs=16, num_kv_blocks=decode_blocks,
                                  block_size=8))
    prompts = {rid: (prompt, sp) for rid, prompt, sp in reqs}
    for rid, prompt, sp in reqs:
        pre.add_request(rid, prompt, sp)
    out = {rid: [] for rid, _, _ in reqs}
    finish = {}
    max_parked = 0

    def fetch_for(rid):
        def fetch(caches, block_ids, block_size, kv_tokens):
            if rid in fail:
                return _Done(RuntimeError(f"prefill side lost {rid}"))
            rows = pre.export_kv(rid)
            assert rows.shape[1] == kv_tokens
            scatter_kv(caches, block_ids, block_size, rows)
            pre.release_kv(rid)  # the decode side acknowledged: prefill frees its blocks
            return _Done()
        return fetch

    while pre.has_work() or dec.has_work():
        for o in pre.step():
            out[o.request_id] += o.new_token_ids
            if o.finished:
                finish[o.request_id] = o.finish_reason
            elif o.kv_ready_tokens:
                prompt, sp = prompts[o.request_id]
                dec.add_transferred_request(o.request_id, prompt, list(o.new_token_ids), sp, fetch_for(o.request_id))
        max_parked = max(max_parked, pre.stats().num_parked)
        for o in dec.step():
            out[o.request_id] += o.new_token_ids
            if o.finished:
                finish[o.request_id] = o.finish_reason
    return out, finish, pre, dec, max_parked


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_disaggregated_greedy_output_equals_colocated(tiny_checkpoint, arch):
    path = tiny_checkpoint(arch)
    reqs = _workload(64, 1)
    ref = _colocated(path, reqs)
    out, finish, pre, dec, _ = _disaggregated(path, reqs, decode_blocks=300)
    assert out == ref
    assert set(finish) == {rid for rid, _, _ in reqs}
    for core in (pre, dec):  # nothing leaked: every block is back in the free queue
        assert core.kv.num_free_blocks == core.kv.num_blocks
        core.kv.check_invariants()


def test_back_pressure_with_a_small_decode_pool(tiny_checkpoint):
    path = tiny_checkpoint("qwen3_moe")
    reqs = _workload(48, 2)
    ref = _colocated(path, reqs)
    # 40 blocks of 8 tokens: a few requests at a time fit on the decode side; the rest stay parked
    out, finish, pre, dec, max_parked = _disaggregated(path, reqs, decode_blocks=40)
    assert out == ref
    assert max_parked >= 5  # the prefill side's queue of parked requests grew ...
    assert pre.stats().num_parked == 0  # ... and drained
    for core in (pre, dec):
        assert core.kv.num_free_blocks == core.kv.num_blocks
        core.kv.check_invariants()


def test_a_failed_transfer_fails_only_its_request(tiny_checkpoint):
    path = tiny_checkpoint("qwen3_moe")
    reqs = [(rid, p, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)) for rid, p, _ in _workload(6, 3)]
    ref = _colocated(path, reqs)
    out, finish, pre, dec, _ = _disaggregated(path, reqs, decode_blocks=100, fail={"r2"})
    assert finish["r2"] is FinishReason.ERROR
    assert {rid: out[rid] for rid in out if rid != "r2"} == {rid: ref[rid] for rid in ref if rid != "r2"}
    # the prefill side still holds r2's KV (nobody acknowledged it); releasing frees it
    assert pre.stats().num_parked == 1 and pre.release_kv("r2")
    assert pre.kv.num_free_blocks == pre.kv.num_blocks
