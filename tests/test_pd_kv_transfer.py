"""Prefill -> decode KV transfer over XCCL: layout-independent rows, real model caches in two processes."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

import pytest
import torch

from xdeepserve.api.launch import free_port
from xdeepserve.model.loader import load_model
from xdeepserve.pd.kv_transfer import KVGeometry, KVLayoutError, gather_kv, scatter_kv

from .pd_workers import caches_for, run_model, worker


def test_rows_survive_a_change_of_block_size_and_dtype():
    g = torch.Generator().manual_seed(0)
    src = [tuple(torch.randn(12 * 16, 2, 8, generator=g) for _ in range(2)) for _ in range(3)]
    dst = [tuple(torch.zeros(20 * 8, 2, 8, dtype=torch.bfloat16) for _ in range(2)) for _ in range(3)]
    src_blocks, dst_blocks = [7, 2, 11, 0], [19, 3, 4, 8, 1, 12, 6]
    payload = gather_kv(src, src_blocks, 16, 50)
    assert payload.shape == (6, 50, 2, 8)
    scatter_kv(dst, dst_blocks, 8, payload)
    back = gather_kv(dst, dst_blocks, 8, 50)
    assert torch.equal(back, payload.to(torch.bfloat16))
    with pytest.raises(KVLayoutError, match="cannot hold tokens up to 60"):
        gather_kv(src, src_blocks[:3], 16, 60)
    with pytest.raises(KVLayoutError, match="does not match"):
        KVGeometry.of(src).check(KVGeometry(6, 4, 8), "the decode side")


def _run_pair(model_dir, prompt, hosts, args0, args1, timeout=120):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=worker, args=(r, port, hosts[r], str(model_dir), prompt, a, results), daemon=True)
        for r, a in enumerate((args0, args1))
    ]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + timeout
    try:
        while len(out) < 2 and time.monotonic() < deadline:
            if args0.get("die_before_send") and 1 in out:
                break
            try:
                rank, kind, value = results.get(timeout=1)
            except queue.Empty:
                continue
            assert kind != "crash", value
            out[rank] = (kind, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return out


@pytest.mark.parametrize("arch,hosts", [("qwen3_moe", ("a", "a")), ("deepseek_v3", ("a", "b"))])
def test_decode_continues_from_transferred_kv_exactly(tiny_checkpoint, arch, hosts):
    """Prefill computes a prompt in 16-token blocks; decode receives the KV into 8-token blocks at other
    addresses and computes the last token: its logits equal a single-process prefill of the whole prompt."""
    path = tiny_checkpoint(arch)
    prompt = torch.randint(5, 500, (45,), generator=torch.Generator().manual_seed(3)).tolist()
    pre = {"block_size": 16, "num_blocks": 8, "block_ids": [5, 0, 3], "dtype": "float32"}
    dec = {"block_size": 8, "num_blocks": 12, "block_ids": [9, 1, 4, 11, 2, 7], "dtype": "float32"}
    out = _run_pair(path, prompt, hosts, pre, dec)
    assert out[0] == ("sent", "shm" if hosts[0] == hosts[1] else "gloo")
    kind, (nbytes, logits) = out[1]
    assert kind == "logits"
    bundle = load_model(path, with_tokenizer=False, max_positions=256)
    caches = caches_for(bundle, 4, 16, torch.float32)
    ref = run_model(bundle, caches, torch.tensor(prompt), 0, [0, 1, 2, 3], 16)[-1]
    torch.testing.assert_close(torch.tensor(logits), ref, atol=1e-5, rtol=1e-5)
    geometry = KVGeometry.of(caches)
    assert nbytes == geometry.caches * (len(prompt) - 1) * geometry.heads * geometry.width * 4


def test_mismatched_models_are_refused_before_any_transfer(tiny_checkpoint):
    path = tiny_checkpoint("qwen3_moe")
    prompt = list(range(5, 30))
    pre = {"block_size": 16, "num_blocks": 4, "block_ids": [0, 1], "dtype": "float32", "die_before_send": True}
    dec = {"block_size": 16, "num_blocks": 4, "block_ids": [0, 1], "dtype": "float32",
           "sender_geometry": {"caches": 8, "heads": 2, "width": 32}}  # a 4-layer sender
    out = _run_pair(path, prompt, ("a", "a"), pre, dec)
    kind, msg = out[1]
    assert kind == "error" and msg.startswith("KVLayoutError") and "prefill rank 0" in msg


def test_a_prefill_that_dies_is_named_within_the_deadline(tiny_checkpoint):
    path = tiny_checkpoint("qwen3_moe")
    prompt = list(range(5, 30))
    pre = {"block_size": 16, "num_blocks": 4, "block_ids": [0, 1], "dtype": "float32", "die_before_send": True}
    dec = {"block_size": 16, "num_blocks": 4, "block_ids": [0, 1], "dtype": "float32"}
    t0 = time.monotonic()
    out = _run_pair(path, prompt, ("a", "a"), pre, dec)
    kind, msg = out[1]
    assert kind == "error" and "PeerDeadError" in msg and "0" in msg, msg
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("hosts", [("a", "a"), ("a", "b")])
def test_two_engine_processes_pull_kv_over_xccl(tiny_checkpoint, hosts):
    """A prefill-only engine process and a decode engine process (8-token blocks), KV pulled over XCCL
    (shared memory, or gloo between two simulated hosts): greedy output equals the colocated engine."""
    from xdeepserve.engine.llm import LLM
    from xdeepserve.engine.request import SamplingParams

    from .pd_workers import engine_worker

    path = tiny_checkpoint("qwen3_moe")
    rng = torch.Generator().manual_seed(5)
    reqs = []
    for i in range(24):
        n = int(torch.randint(2, 80, (1,), generator=rng))
        sp = SamplingParams(max_tokens=int(torch.randint(1, 24, (1,), generator=rng)), temperature=0.0, ignore_eos=True)
        reqs.append((f"q{i}", torch.randint(5, 600, (n,), generator=rng).tolist(), sp.to_wire()))
    ref = LLM(str(path), max_model_len=256).generate([p for _, p, _ in reqs], [SamplingParams.from_wire(s) for _, _, s in reqs])
    ctx = mp.get_context("spawn")
    results, to_prefill, to_decode = ctx.Queue(), ctx.Queue(), ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=engine_worker, args=(0, port, hosts[0], str(path), reqs, to_prefill, to_decode, results), daemon=True),
        ctx.Process(target=engine_worker, args=(1, port, hosts[1], str(path), reqs, to_decode, to_prefill, results), daemon=True),
    ]
    for p in procs:
        p.start()
    tokens = {rid: [] for rid, _, _ in reqs}
    free, exits, deadline = {}, {}, time.monotonic() + 240
    try:
        while len(exits) < 2 and time.monotonic() < deadline:
            try:
                rank, kind, value = results.get(timeout=1)
            except queue.Empty:
                continue
            assert kind != "crash", value
            if kind == "tokens":
                tokens[value[0]] += value[1]
            elif kind == "free":
                free[rank] = value
            elif kind == "exit":
                exits[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert len(exits) == 2, "the deployment did not finish in time"
    assert exits[0] == ("shm" if hosts[0] == hosts[1] else "gloo")
    assert [tokens[rid] for rid, _, _ in reqs] == [o.token_ids for o in ref]
    for n_free, n_blocks, parked in free.values():
        assert n_free == n_blocks and parked == 0
