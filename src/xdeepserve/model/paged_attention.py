"""Decode attention that reads K/V straight from the paged cache: Triton on CUDA, Numba on the CPU.

The portable path gathers every sequence's keys and values into a padded tensor before SDPA, which
moves the KV cache three times per layer. These kernels walk each sequence's block table instead and
read each cached token once. On CUDA one Triton program handles one (sequence, KV head) pair and all
query heads that share that KV head, with an online softmax; the CPU kernel
(:mod:`.cpu_paged_attention`) does the same per thread. Where neither applies (no Triton, no Numba, a
dtype Numba lacks), callers fall back to gather + SDPA; the tests check both kernels against it.
"""

from __future__ import annotations

import logging

import torch

from . import cpu_paged_attention

log = logging.getLogger(__name__)

try:  # Triton ships with CUDA builds of torch; CPU-only installs lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

TOKENS_PER_ITER = 64  # cached tokens per loop iteration for one query head (divided among shared heads)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


_disabled_reason: str | None = None


def available(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, value_dim: int | None = None) -> bool:
    """Whether :func:`paged_decode` runs a kernel for these operands on their device.

    ``value_dim`` < ``v_cache.shape[-1]`` reads only the leading value columns (MLA's latent); only
    the CPU kernel supports it.
    """
    if _disabled_reason is not None:
        return False
    if q.is_cuda:
        return (
            triton is not None
            and value_dim in (None, v_cache.shape[-1])
            and _pow2(k_cache.shape[-1])
            and _pow2(v_cache.shape[-1])
        )
    return (
        q.device.type == "cpu"
        and cpu_paged_attention.available()
        and q.dtype == k_cache.dtype == v_cache.dtype == torch.float32
    )


def disable(reason: str) -> None:
    """Turn the kernel off for this process (e.g. it failed to compile); callers fall back to SDPA."""
    global _disabled_reason
    _disabled_reason = reason
    log.warning("paged decode attention kernel disabled: %s", reason)


if triton is not None:

    @triton.jit
    def _paged_decode_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, o_ptr, scale, table_stride,
        KV_HEADS: tl.constexpr, REP: tl.constexpr, REP_P: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
        BLOCK: tl.constexpr, TOKENS: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        seq_len = tl.load(lens_ptr + b)
        r = tl.arange(0, REP_P)
        d = tl.arange(0, D)
        dv = tl.arange(0, DV)
        n = tl.arange(0, TOKENS)
        head = b * KV_HEADS * REP + h * REP + r
        r_ok = r < REP
        q = tl.load(q_ptr + head[:, None] * D + d[None, :], mask=r_ok[:, None], other=0.0).to(tl.float32)
        m = tl.full([REP_P], float("-inf"), tl.float32)
        den = tl.zeros([REP_P], tl.float32)
        acc = tl.zeros([REP_P, DV], tl.float32)
        for start in range(0, seq_len, TOKENS):
            tok = start + n
            ok = tok < seq_len
            page = tl.load(table_ptr + b * table_stride + tok // BLOCK, mask=ok, other=0)
            slot = page * BLOCK + tok % BLOCK
            k = tl.load(k_ptr + (slot[:, None] * KV_HEADS + h) * D + d[None, :], mask=ok[:, None], other=0.0)
            s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2) * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            den = den * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + (slot[:, None] * KV_HEADS + h) * DV + dv[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
            m = m_new
        out = acc / den[:, None]
        tl.store(o_ptr + head[:, None] * DV + dv[None, :], out.to(o_ptr.dtype.element_ty), mask=r_ok[:, None])


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    scale: float,
    value_dim: int | None = None,
) -> torch.Tensor:
    """q ``[B, H, D]``; caches ``[slots, Hkv, D*]``; block_tables ``[B, n]``; seq_lens ``[B]`` -> ``[B, H, Dv]``.

    ``Dv`` is ``value_dim`` or all of ``v_cache``'s last dimension.
    """
    if not q.is_cuda:
        dv = value_dim or v_cache.shape[-1]
        out = torch.empty(q.shape[0], q.shape[1], dv, dtype=torch.float32)
        cpu_paged_attention.paged_decode(
            q.contiguous().numpy(), k_cache.numpy(), v_cache.numpy(),
            block_tables.to(torch.int64).contiguous().numpy(), seq_lens.to(torch.int64).contiguous().numpy(),
            block_size, scale, out.numpy(),
        )
        return out
    b, h, d = q.shape
    hkv, dv = k_cache.shape[1], v_cache.shape[2]
    rep = h // hkv
    q = q.contiguous()
    table = block_tables.contiguous()
    out = torch.empty(b, h, dv, dtype=q.dtype, device=q.device)
    _paged_decode_kernel[(b, hkv)](
        q, k_cache, v_cache, table, seq_lens, out, scale, table.stride(0),
        KV_HEADS=hkv, REP=rep, REP_P=triton.next_power_of_2(rep), D=d, DV=dv,
        BLOCK=block_size, TOKENS=max(16, TOKENS_PER_ITER // triton.next_power_of_2(rep)),
    )
    return out
