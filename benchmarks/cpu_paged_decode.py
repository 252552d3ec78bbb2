"""CPU decode attention: the Numba paged kernel against gather + SDPA, in one run.

64 decode queries (8 heads of 32, 4 KV heads, block size 16) over a 20,000-block cache, contexts drawn
uniformly from each range. The baseline is the engine's portable path: sequences sorted by context,
groups of 8, blocks gathered into a padded tensor, then SDPA with an additive mask. Medians over 30
alternating calls; the last line is ``kernel vs gather+sdpa speed-up (median, geometric mean): X.XX``.

    python benchmarks/cpu_paged_decode.py
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from xdeepserve.model import paged_attention

BLOCK, KV_HEADS, HEADS, DIM, SEQS, GROUP = 16, 4, 8, 32, 64, 8
RANGES = [(16, 768), (1000, 2000), (3000, 4000)]


def gather_sdpa(q, k_cache, v_cache, tables, seq_lens):
    for i in range(0, SEQS, GROUP):
        n = -(-int(seq_lens[i : i + GROUP].max()) // BLOCK)
        t = tables[i : i + GROUP, :n].reshape(-1)
        k = k_cache.view(-1, BLOCK, KV_HEADS, DIM).index_select(0, t).view(GROUP, n * BLOCK, KV_HEADS, DIM)
        v = v_cache.view(-1, BLOCK, KV_HEADS, DIM).index_select(0, t).view(GROUP, n * BLOCK, KV_HEADS, DIM)
        masked = torch.arange(n * BLOCK)[None] >= seq_lens[i : i + GROUP, None]
        mask = torch.zeros(GROUP, 1, 1, n * BLOCK).masked_fill_(masked[:, None, None], float("-inf"))
        F.scaled_dot_product_attention(
            q[i : i + GROUP].view(GROUP, KV_HEADS, HEADS // KV_HEADS, DIM), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, scale=DIM**-0.5,
        )


def main() -> None:
    torch.manual_seed(0)
    blocks = 20_000
    k_cache = torch.randn(blocks * BLOCK, KV_HEADS, DIM)
    v_cache = torch.randn(blocks * BLOCK, KV_HEADS, DIM)
    q = torch.randn(SEQS, HEADS, DIM)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'contexts':>12}{'kernel ms':>12}{'gather+sdpa ms':>16}{'speed-up':>10}")
    ratios = []
    for lo, hi in RANGES:
        seq_lens, _ = torch.randint(lo, hi, (SEQS,)).sort()
        n_max = -(-int(seq_lens.max()) // BLOCK)
        tables = torch.arange(SEQS * n_max).view(SEQS, n_max)
        assert paged_attention.available(q, k_cache, v_cache)
        paged_attention.paged_decode(q, k_cache, v_cache, tables, seq_lens, BLOCK, DIM**-0.5)  # compile
        tk, tg = [], []
        for _ in range(30):
            t = time.perf_counter()
            paged_attention.paged_decode(q, k_cache, v_cache, tables, seq_lens, BLOCK, DIM**-0.5)
            tk.append(time.perf_counter() - t)
            t = time.perf_counter()
            gather_sdpa(q, k_cache, v_cache, tables, seq_lens)
            tg.append(time.perf_counter() - t)
        k_ms, g_ms = sorted(tk)[15] * 1e3, sorted(tg)[15] * 1e3
        ratios.append(g_ms / k_ms)
        print(f"{f'{lo}-{hi}':>12}{k_ms:>12.2f}{g_ms:>16.2f}{g_ms / k_ms:>9.2f}x")
    print(f"kernel vs gather+sdpa speed-up (median, geometric mean): {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
