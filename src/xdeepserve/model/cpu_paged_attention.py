"""Decode attention that reads K/V straight from the paged cache on the CPU (Numba, fp32).

The CPU counterpart of the Triton kernel in :mod:`.paged_attention`. The portable path copies every
decode's keys and values out of the block pool into a padded tensor and then runs SDPA over the copy:
the cache crosses the memory bus three times per layer, plus padding. Here each (sequence, KV head)
pair walks its block table once for the keys and once for the values, with all the query heads that
share that KV head computed together, so each cached row is read once per pass and nothing is padded.
The pairs run in parallel on Numba's thread pool.

The value rows may be a prefix of the key rows of the same cache (``dv < d``): that is DeepSeek MLA's
absorbed decode, where the cache holds ``[latent | rope key]`` and the values are the latent.
"""

from __future__ import annotations

import numpy as np

try:  # an optional accelerator: without it the engine uses the gather + SDPA path
    import numba
    from numba import prange
except ImportError:  # pragma: no cover - depends on the install
    numba = None


# Reassociation lets LLVM vectorise the dot products and sums; no flag that assumes finite values
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_POW2 = np.ldexp(np.float32(1.0), np.arange(-127, 1)).astype(np.float32)  # 2^k for k in [-127, 0]

if numba is not None:

    @numba.njit(fastmath=_FAST, inline="always", cache=True)
    def _exp_nonpositive(x):  # pragma: no cover - compiled
        # exp for x <= 0 in plain arithmetic so the softmax loop vectorises (a libm call does not):
        # x = k ln2 + r with |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial (relative error
        # < 2e-8, below float32 rounding), 2^k from a table.
        x = max(x, np.float32(-87.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.6931471805599453)
        p = np.float32(1.0 / 5040.0)
        p = p * r + np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        return p * _POW2[np.int32(k) + np.int32(127)]

    @numba.njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)
    def _decode_kernel(q, k_cache, v_cache, block_tables, seq_lens, block_size, scale, out):  # pragma: no cover
        # q [B, H, D]; k_cache [slots, Hkv, D]; v_cache [slots, Hkv, >=Dv]; out [B, H, Dv]
        n_seq, n_heads, d = q.shape
        n_kv = k_cache.shape[1]
        dv = out.shape[2]
        rep = n_heads // n_kv
        for job in prange(n_seq * n_kv):
            b = job // n_kv
            kh = job % n_kv
            n = seq_lens[b]
            h0 = kh * rep
            scores = np.empty((rep, n), dtype=np.float32)
            # pass 1: q . k for every cached token, one block-table lookup per block
            for t0 in range(0, n, block_size):
                base = block_tables[b, t0 // block_size] * block_size
                for t in range(t0, min(t0 + block_size, n)):
                    slot = base + t - t0
                    for r in range(rep):
                        s = np.float32(0.0)
                        for i in range(d):
                            s += q[b, h0 + r, i] * k_cache[slot, kh, i]
                        scores[r, t] = s * scale
            # softmax over the whole context (it fits: one float per cached token and head)
            for r in range(rep):
                m = scores[r, 0]
                for t in range(1, n):
                    m = max(m, scores[r, t])
                total = np.float32(0.0)
                for t in range(n):
                    e = _exp_nonpositive(scores[r, t] - m)
                    scores[r, t] = e
                    total += e
                inv = np.float32(1.0) / total
                for t in range(n):
                    scores[r, t] *= inv
            # pass 2: probability-weighted sum of the values
            acc = np.zeros((rep, dv), dtype=np.float32)
            for t0 in range(0, n, block_size):
                base = block_tables[b, t0 // block_size] * block_size
                for t in range(t0, min(t0 + block_size, n)):
                    slot = base + t - t0
                    for r in range(rep):
                        p = scores[r, t]
                        for i in range(dv):
                            acc[r, i] += p * v_cache[slot, kh, i]
            for r in range(rep):
                for i in range(dv):
                    out[b, h0 + r, i] = acc[r, i]


def available() -> bool:
    return numba is not None


def paged_decode(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    block_tables: np.ndarray,
    seq_lens: np.ndarray,
    block_size: int,
    scale: float,
    out: np.ndarray,
) -> None:
    """Fill ``out [B, H, Dv]`` (float32) with attention of ``q [B, H, D]`` over each sequence's first
    ``seq_lens[b]`` cached tokens; ``k_cache [slots, Hkv, D]``, ``v_cache [slots, Hkv, >= Dv]`` (only
    the first ``Dv`` columns are read), ``block_tables [B, n]`` and ``seq_lens [B]`` int64."""
    _decode_kernel(q, k_cache, v_cache, block_tables, seq_lens, block_size, np.float32(scale), out)
