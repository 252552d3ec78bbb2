"""Decode attention that reads K/V straight from the paged cache on the CPU (Numba, fp32).

The CPU counterpart of the Triton kernel in :mod:`.paged_attention`. The portable path copies every
decode's keys and values out of the block pool into a padded tensor and then runs SDPA over the copy:
the cache crosses the memory bus three times per layer, plus padding. Here each sequence walks its
block table once for the keys and once for the values, all heads together (a slot's rows for every KV
head are adjacent), so each cached row is read once per pass, in order, and nothing is padded. Block
tables scatter a sequence's blocks across the pool, so the kernel prefetches the next block while it
works on the current one; that hides most of the memory latency the hardware prefetcher cannot (it
does not follow a jump to another block). Sequences run in parallel on Numba's thread pool, dealt so
each thread gets a similar number of cached tokens.

The value rows may be a prefix of the key rows of the same cache (``dv < d``): that is DeepSeek MLA's
absorbed decode, where the cache holds ``[latent | rope key]`` and the values are the latent.
"""

from __future__ import annotations

import numpy as np

try:  # an optional accelerator: without it the engine uses the gather + SDPA path
    import numba
    import numba.extending
    from llvmlite import ir
    from numba import prange
    from numba.core import cgutils
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

    @numba.extending.intrinsic
    def _prefetch(typingctx, arr, offset):  # pragma: no cover - compiled
        """Ask the CPU to start loading the cache line holding ``arr.flat[offset]`` (a hint: it never
        faults and changes no result)."""

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            # read, keep in all cache levels, data cache
            builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return numba.types.void(arr, offset), codegen

    @numba.njit(inline="always", cache=True)
    def _prefetch_rows(cache, first_slot, n_slots):  # pragma: no cover - compiled
        # one hint per 64-byte line of ``n_slots`` consecutive slots (16 float32 per line)
        row = cache.strides[0] // 4
        start = first_slot * row
        for o in range(0, n_slots * row, 16):
            _prefetch(cache, start + o)

    @numba.njit(cache=True)
    def _balanced_order(seq_lens, n_threads):  # pragma: no cover - compiled
        # prange hands each thread one contiguous share of the iterations. Deal the sequences,
        # longest first, in a snake (0, 1, .., T-1, T-1, .., 0, ..) so every share gets a similar
        # number of cached tokens, and lay the shares out one after another.
        n = seq_lens.shape[0]
        by_len = np.argsort(-seq_lens)
        share = np.empty(n, dtype=np.int64)
        counts = np.zeros(n_threads, dtype=np.int64)
        full = n - n % n_threads  # the last, partial lap goes to the first threads (their shares are
        for rank in range(n):  # one longer, as in an even split)
            lap, pos = divmod(rank, n_threads)
            t = pos if lap % 2 == 0 or rank >= full else n_threads - 1 - pos
            share[rank] = t
            counts[t] += 1
        starts = np.zeros(n_threads, dtype=np.int64)
        for t in range(1, n_threads):
            starts[t] = starts[t - 1] + counts[t - 1]
        order = np.empty(n, dtype=np.int64)
        for rank in range(n):
            t = share[rank]
            order[starts[t]] = by_len[rank]
            starts[t] += 1
        return order

    @numba.njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)
    def _decode_kernel(q, k_cache, v_cache, block_tables, seq_lens, order, block_size, scale, out):  # pragma: no cover
        # q [B, H, D]; k_cache [slots, Hkv, D]; v_cache [slots, Hkv, >=Dv]; out [B, H, Dv]
        # One job per sequence: each cached slot's rows for all KV heads are adjacent in memory, so
        # the job streams through its blocks once for K and once for V. While it works on row r of
        # a block it asks for row r of the next block: one block ahead, spread evenly (a burst of a
        # whole block's hints overflows the core's miss queue and most are dropped).
        n_seq, n_heads, d = q.shape
        n_kv = k_cache.shape[1]
        dv = out.shape[2]
        rep = n_heads // n_kv
        for j in prange(n_seq):
            b = order[j]
            n = seq_lens[b]
            n_blocks = (n + block_size - 1) // block_size
            qb = q[b]
            scores = np.empty((n_heads, n), dtype=np.float32)
            # pass 1: q . k for every cached token and head
            for blk in range(n_blocks):
                t0 = blk * block_size
                base = block_tables[b, blk] * block_size
                ahead = block_tables[b, blk + 1] * block_size - t0 if blk + 1 < n_blocks else -1
                for t in range(t0, min(t0 + block_size, n)):
                    slot = base + t - t0
                    if ahead >= 0:  # the same row of the next block
                        _prefetch_rows(k_cache, ahead + t, 1)
                    for kh in range(n_kv):
                        for r in range(rep):
                            h = kh * rep + r
                            s = np.float32(0.0)
                            for i in range(d):
                                s += qb[h, i] * k_cache[slot, kh, i]
                            scores[h, t] = s * scale
            # softmax over the whole context (it fits: one float per cached token and head)
            for h in range(n_heads):
                m = scores[h, 0]
                for t in range(1, n):
                    m = max(m, scores[h, t])
                total = np.float32(0.0)
                for t in range(n):
                    e = _exp_nonpositive(scores[h, t] - m)
                    scores[h, t] = e
                    total += e
                inv = np.float32(1.0) / total
                for t in range(n):
                    scores[h, t] *= inv
            # pass 2: probability-weighted sum of the values
            acc = np.zeros((n_heads, dv), dtype=np.float32)
            _prefetch_rows(v_cache, block_tables[b, 0] * block_size, min(n, block_size))
            for blk in range(n_blocks):
                t0 = blk * block_size
                base = block_tables[b, blk] * block_size
                ahead = block_tables[b, blk + 1] * block_size - t0 if blk + 1 < n_blocks else -1
                for t in range(t0, min(t0 + block_size, n)):
                    slot = base + t - t0
                    if ahead >= 0:
                        _prefetch_rows(v_cache, ahead + t, 1)
                    for kh in range(n_kv):
                        for r in range(rep):
                            h = kh * rep + r
                            p = scores[h, t]
                            for i in range(dv):
                                acc[h, i] += p * v_cache[slot, kh, i]
            for h in range(n_heads):
                for i in range(dv):
                    out[b, h, i] = acc[h, i]


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
    order = _balanced_order(seq_lens, numba.get_num_threads())
    _decode_kernel(q, k_cache, v_cache, block_tables, seq_lens, order, block_size, np.float32(scale), out)
