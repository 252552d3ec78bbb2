"""GPU checks (``make test-gpu``): the same engine on CUDA, grouped-GEMM experts, CUDA-graph decode."""

from __future__ import annotations

import pytest
import torch

from xdeepserve.engine.config import EngineConfig
from xdeepserve.engine.core import EngineCore
from xdeepserve.engine.request import SamplingParams
from xdeepserve.model.builder import ARCHITECTURES, hf_classes
from xdeepserve.model.moe import Experts

from .parity import check_greedy, hf_reference
from .test_engine_parity import _run, _workload

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cuda_fp32_engine_matches_hf_greedy(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    hf = hf_classes(arch)[1].from_pretrained(path).eval()
    core = EngineCore(EngineConfig(model=str(path), device="cuda", dtype="float32", num_kv_blocks=40,
                                   block_size=8, max_num_batched_tokens=64, max_model_len=256))
    reqs = _workload(core.vocab_size, 16, seed=5)
    got = _run(core, reqs)
    verdicts = [check_greedy(hf, p, got[f"r{i}"], hf_reference(hf, p, n)) for i, (p, n) in enumerate(reqs)]
    assert verdicts.count("equal") >= len(reqs) - 2, verdicts


def test_grouped_mm_experts_match_the_per_expert_loop_in_bf16():
    torch.manual_seed(0)
    experts = Experts(16, 256, 128).cuda().to(torch.bfloat16)
    torch.nn.init.normal_(experts.w13, std=0.05)
    torch.nn.init.normal_(experts.w2, std=0.05)
    assert experts.capturable, "torch._grouped_mm should be available on this GPU"
    x = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 16, (300, 4), device="cuda")
    order = torch.argsort(ids.reshape(-1), stable=True)
    xs = x.index_select(0, order // 4)
    counts = experts.tokens_per_expert(ids)
    torch.testing.assert_close(experts.run_grouped(xs, counts), experts.run_loop(xs, counts), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_cuda_graph_decode_step_matches_the_eager_step(arch, tiny_checkpoint):
    core = EngineCore(EngineConfig(model=str(tiny_checkpoint(arch)), device="cuda", dtype="bfloat16",
                                   max_model_len=512, max_num_seqs=32))
    assert core.runner.graphs is not None
    for i, (p, _) in enumerate(_workload(core.vocab_size, 20, seed=3)):
        core.add_request(f"r{i}", p, SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True))
    while any(r.num_computed_tokens < r.num_tokens - 1 for r in core.scheduler.running) or core.scheduler.waiting:
        core.step()
    for _ in range(3):  # several decode steps, each checked graph vs eager on the same state
        sched = core.scheduler.schedule()
        graph_logits = core.runner._graph_logits(sched)
        assert graph_logits is not None
        graph_logits = graph_logits.clone()
        input_ids, meta, rows = core.runner.prepare(sched)
        with torch.inference_mode():
            hidden = core.runner.model(input_ids, meta, core.runner.kv_caches)
            eager_logits = core.runner.model.compute_logits(hidden[torch.tensor(rows, device="cuda")])
        torch.testing.assert_close(graph_logits, eager_logits, atol=0.1, rtol=0.05)
        agree = (graph_logits.argmax(-1) == eager_logits.argmax(-1)).float().mean().item()
        assert agree >= 0.9
        core.scheduler.update(sched, dict(zip([s.request.request_id for s in sched.scheduled],
                                              eager_logits.argmax(-1).tolist())))


@pytest.mark.parametrize("heads,kv_heads,dim", [(16, 16, 128), (8, 2, 64), (32, 4, 128)])
def test_triton_paged_decode_matches_a_gathered_reference(heads, kv_heads, dim):
    from xdeepserve.model import paged_attention

    torch.manual_seed(0)
    bs, n_blocks, b = 16, 64, 7
    k_cache = torch.randn(n_blocks * bs, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn(n_blocks * bs, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor([1, 15, 16, 17, 100, 64, 250], device="cuda")
    tables = torch.stack([torch.randperm(n_blocks, device="cuda")[:16] for _ in range(b)])
    q = torch.randn(b, heads, dim, device="cuda", dtype=torch.bfloat16)
    assert paged_attention.available(q, k_cache, v_cache)
    out = paged_attention.paged_decode(q, k_cache, v_cache, tables, seq_lens, bs, dim**-0.5)
    for i in range(b):
        pos = torch.arange(int(seq_lens[i]), device="cuda")
        slots = tables[i, pos // bs] * bs + pos % bs
        k = k_cache[slots].float().repeat_interleave(heads // kv_heads, dim=1)  # [L, H, D]
        v = v_cache[slots].float().repeat_interleave(heads // kv_heads, dim=1)
        p = torch.einsum("hd,lhd->hl", q[i].float(), k).mul(dim**-0.5).softmax(-1)
        ref = torch.einsum("hl,lhd->hd", p, v)
        torch.testing.assert_close(out[i].float(), ref, atol=2e-2, rtol=2e-2)


def test_cuda_ipc_p2p_moves_device_tensors_exactly_and_other_pairs_stage_through_the_host():
    from .test_xccl import Cluster

    # ranks 0, 1 share a host (CUDA IPC between them); rank 2 is another "host" (gloo, staged)
    c = Cluster(["h0", "h0", "h1"], device="cuda:0", lanes=2, slots=2, slot_bytes=4096,
                device_slots=2, device_slot_bytes=1 << 16, timeout_s=20.0)
    try:
        assert c.info[0]["cuda_transports"] == {1: "cuda_ipc", 2: "gloo"}
        g = torch.Generator().manual_seed(0)
        dtypes = ["float32", "bfloat16", "int64", "uint8"]
        transfers = []
        for i in range(24):
            src, dst = [(0, 1), (1, 0), (0, 2), (2, 1)][i % 4]
            numel = int(torch.randint(0, 120_000, (1,), generator=g))  # up to ~960 KB: many ring chunks
            transfers.append((src, dst, numel, dtypes[i % 4], 5000 + i))
        res = c.all("cuda_transfers", transfers)
        assert all(kind == "ok" for kind, _ in res.values()), res
        assert all(all(v) for _, v in res.values())
        assert sum(len(v) for _, v in res.values()) == len(transfers)
    finally:
        c.stop()
