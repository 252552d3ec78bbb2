"""The CPU paged decode kernel (Numba) against a per-sequence reference, and the engine with and without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdeepserve.engine.llm import LLM
from xdeepserve.engine.request import SamplingParams
from xdeepserve.model import cpu_paged_attention, paged_attention


def test_numba_kernel_is_available_with_the_declared_dependencies():
    assert cpu_paged_attention.available()


def _reference(q, k_cache, v_cache, tables, seq_lens, bs, scale, value_dim):
    h, hkv = q.shape[1], k_cache.shape[1]
    out = []
    for i in range(q.shape[0]):
        pos = torch.arange(int(seq_lens[i]))
        slots = tables[i, pos // bs] * bs + pos % bs
        k = k_cache[slots].double().repeat_interleave(h // hkv, dim=1)  # [L, H, D]
        v = v_cache[slots, :, :value_dim].double().repeat_interleave(h // hkv, dim=1)
        p = torch.einsum("hd,lhd->hl", q[i].double(), k).mul(scale).softmax(-1)
        out.append(torch.einsum("hl,lhd->hd", p, v))
    return torch.stack(out).float()


@pytest.mark.parametrize(
    "heads,kv_heads,dim,value_dim",
    [(8, 4, 32, None), (4, 4, 64, None), (16, 2, 16, None), (8, 1, 48, 32)],  # last: MLA latent prefix
)
def test_cpu_kernel_matches_reference_at_block_edges_and_random_tables(heads, kv_heads, dim, value_dim):
    torch.manual_seed(0)
    bs, n_blocks = 16, 80
    k_cache = torch.randn(n_blocks * bs, kv_heads, dim)
    v_cache = k_cache if value_dim else torch.randn(n_blocks * bs, kv_heads, dim)
    seq_lens = torch.tensor([1, 15, 16, 17, 100, 64, 250, 256])
    tables = torch.stack([torch.randperm(n_blocks)[:16] for _ in range(len(seq_lens))])
    q = torch.randn(len(seq_lens), heads, dim) * 4  # peaked softmax: exercises the exp range
    assert paged_attention.available(q, k_cache, v_cache, value_dim)
    out = paged_attention.paged_decode(q, k_cache, v_cache, tables, seq_lens, bs, dim**-0.5, value_dim)
    assert out.shape == (len(seq_lens), heads, value_dim or dim)
    ref = _reference(q, k_cache, v_cache, tables, seq_lens, bs, dim**-0.5, value_dim or dim)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_kernel_exp_is_accurate_over_the_softmax_range():
    # one cached token per score: attention over [x, 0] keys picks weights softmax([x, 0])
    xs = torch.linspace(-100.0, 0.0, 4001)
    k_cache = torch.stack([xs, torch.zeros_like(xs)], dim=1).reshape(-1, 1, 1)  # slots alternate x, 0
    v_cache = torch.stack([torch.ones_like(xs), torch.zeros_like(xs)], dim=1).reshape(-1, 1, 1)
    n = len(xs)
    tables = torch.arange(n).view(n, 1)  # block size 2: block i holds the pair [x_i, 0]
    q = torch.ones(n, 1, 1)
    out = paged_attention.paged_decode(q, k_cache, v_cache, tables, torch.full((n,), 2), 2, 1.0)
    expected = torch.sigmoid(xs.double()).float()  # weight on the x key = e^x / (e^x + 1)
    torch.testing.assert_close(out.view(-1), expected, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_engine_outputs_are_the_same_with_the_kernel_and_with_gather_sdpa(arch, tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint(arch)
    prompts = [[5 + (i * 7 + j) % 90 for j in range(8 + 13 * i)] for i in range(12)]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=1)

    def run():
        llm = LLM(str(path), max_model_len=256, max_num_seqs=16, kv_cache_memory_bytes=8 << 20)
        return llm, llm.generate(prompts, params)

    llm, with_kernel = run()
    assert llm.core.runner.decode_kernel
    monkeypatch.setattr(paged_attention, "_disabled_reason", "test: force the gather + SDPA path")
    llm, without = run()
    assert not llm.core.runner.decode_kernel
    for a, b in zip(with_kernel, without):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs):
            assert la.logprob == pytest.approx(lb.logprob, abs=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_decode_jobs_are_a_permutation_dealt_evenly_across_threads(threads):
    seq_lens = np.random.default_rng(threads).integers(1, 4000, 61).astype(np.int64)
    order = cpu_paged_attention._balanced_order(seq_lens, threads)
    assert sorted(order.tolist()) == list(range(len(seq_lens)))
    # prange gives each thread a contiguous share; with snake dealing the shares' token totals differ
    # by at most the longest sequence
    shares = np.array_split(order, threads)
    totals = [int(seq_lens[s].sum()) for s in shares]
    assert max(totals) - min(totals) <= seq_lens.max()
