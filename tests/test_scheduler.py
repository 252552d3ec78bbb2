"""Scheduler behaviour: token budget, chunked prefill, preemption by recompute, fairness, aborts."""

from __future__ import annotations

from xdeepserve.engine.kv_cache_manager import KVCacheManager
from xdeepserve.engine.request import FinishReason, Request, SamplingParams
from xdeepserve.engine.scheduler import Scheduler


def _sched(num_blocks=64, block_size=4, budget=16, max_seqs=8, chunked=True) -> Scheduler:
    kv = KVCacheManager(num_blocks, block_size)
    return Scheduler(kv, max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=1000,
                     enable_chunked_prefill=chunked)


def _step(s: Scheduler, token: int = 1):
    out = s.schedule()
    s.update(out, {x.request.request_id: token for x in out.scheduled if x.samples})
    return out


def _req(rid, n_prompt, max_tokens=8):
    return Request(rid, list(range(100, 100 + n_prompt)), SamplingParams(max_tokens=max_tokens), eos_token_ids=(0,))


def test_long_prompt_is_prefilled_in_chunks_within_the_token_budget():
    s = _sched(budget=16)
    r = _req("long", 40)
    s.add(r)
    chunks = []
    while not r.output_token_ids:
        out = _step(s)
        assert out.num_tokens <= 16
        chunks.append(out.scheduled[0].num_tokens)
    assert chunks == [16, 16, 8]


def test_without_chunked_prefill_a_prompt_over_budget_waits():
    s = _sched(budget=16, chunked=False)
    s.add(_req("long", 40))
    assert s.schedule().empty


def test_decodes_and_a_new_prefill_share_one_step():
    s = _sched(budget=16)
    a = _req("a", 4)
    s.add(a)
    _step(s)
    s.add(_req("b", 30))
    out = s.schedule()
    assert [(x.request.request_id, x.num_tokens) for x in out.scheduled] == [("a", 1), ("b", 15)]


def test_out_of_blocks_preempts_the_newest_and_readmits_it_first():
    s = _sched(num_blocks=6, block_size=4, budget=64, max_seqs=2)
    old, new = _req("old", 8, max_tokens=20), _req("new", 8, max_tokens=20)
    s.add(old)
    s.add(new)
    s.add(_req("later", 2))  # waits: max_num_seqs=2
    _step(s)  # both prefilled: 2 blocks each
    preempted = []
    for _ in range(12):
        out = _step(s)
        if out.preempted:
            assert s.waiting[0] is new and new.num_computed_tokens == 0
        preempted += [r.request_id for r in out.preempted]
    assert preempted and set(preempted) == {"new"}
    # the oldest request kept making progress the whole time
    assert len(old.output_token_ids) == 13


def test_preempted_request_resumes_with_its_generated_tokens():
    s = _sched(num_blocks=6, block_size=4, budget=64)
    a, b = _req("a", 8, max_tokens=10), _req("b", 8, max_tokens=10)
    s.add(a)
    s.add(b)
    while s.has_work():
        _step(s, token=7)
    assert a.finish_reason is FinishReason.LENGTH and b.finish_reason is FinishReason.LENGTH
    assert len(a.output_token_ids) == 10 and len(b.output_token_ids) == 10
    assert s.num_preemptions > 0 and s.kv.num_free_blocks == 6


def test_abort_frees_blocks_immediately():
    s = _sched()
    r = _req("r", 20)
    s.add(r)
    _step(s)
    assert s.kv.num_free_blocks < s.kv.num_blocks
    s.abort("r")
    assert r.finish_reason is FinishReason.ABORT and s.kv.num_free_blocks == s.kv.num_blocks and not s.has_work()


def test_eos_stops_unless_ignored_and_min_tokens_defers_it():
    s = _sched()
    r = _req("r", 4)
    s.add(r)
    _step(s, token=0)
    assert r.finish_reason is FinishReason.STOP
    s2 = _sched()
    r2 = Request("r2", [5, 6], SamplingParams(max_tokens=3, min_tokens=2), eos_token_ids=(0,))
    s2.add(r2)
    _step(s2, token=0)
    assert r2.finish_reason is None
    _step(s2, token=0)
    assert r2.finish_reason is FinishReason.STOP and r2.output_token_ids == [0, 0]


def test_max_num_seqs_caps_the_running_batch():
    s = _sched(max_seqs=2)
    for i in range(5):
        s.add(_req(f"r{i}", 3))
    out = s.schedule()
    assert len(out.scheduled) == 2 and len(s.waiting) == 3
