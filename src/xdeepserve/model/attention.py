"""Attention units over a paged KV cache: GQA (Qwen3 / Mixtral) and DeepSeek MLA.

A batch is a flat list of tokens from several sequences (vLLM-style). Each sequence contributes
``query_len`` new tokens whose keys are appended to its cache blocks; every new token attends to all of
its sequence's cached tokens up to its own position. :class:`AttentionMetadata` carries the index
tensors that describe this once per step; every attention layer reuses them.

The cache of one layer is a tensor ``[num_slots, heads, width]`` (``num_slots = num_blocks *
block_size``); a token's slot is ``block_table[pos // block_size] * block_size + pos % block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import paged_attention
from .config import ModelConfig
from .layers import FusedLinear, RMSNorm, RotaryEmbedding


@dataclass
class AttentionGroup:
    """Sequences attended together in one padded SDPA call.

    Decodes (query_len == 1) and prefills are put in separate groups so a long prefill chunk does not
    pad every decode's query to its length. Keys are gathered a whole cache block at a time (one
    contiguous copy per block, not per token) and padded to ``block_tables.shape[1] * block_size``.
    """

    query_index: torch.Tensor  # [B, Qmax] flat token index of each (padded) query row
    query_valid: torch.Tensor  # [B, Qmax] bool
    mask: torch.Tensor  # [B, 1, Qmax, Kmax] additive float mask: 0 = attend, -inf = masked
    token_rows: torch.Tensor  # [n_tokens_in_group] flat token indices, in query_index's valid order
    max_query_len: int
    block_tables: torch.Tensor  # [B, n] block ids (padding entries: any valid block)
    seq_lens: torch.Tensor  # [B] context length after this step
    block_size: int
    # (flat query start, query length, context length) per sequence, when built on the host
    host_lens: tuple[tuple[int, int, int], ...] | None = None

    def gather(self, cache: torch.Tensor) -> torch.Tensor:
        """``[slots, H, W]`` cache -> ``[B, Kmax, H, W]`` keys (or values) of the group's sequences."""
        b, n = self.block_tables.shape
        blocks = cache.view(-1, self.block_size, *cache.shape[1:])
        return blocks.index_select(0, self.block_tables.reshape(-1)).view(b, n * self.block_size, *cache.shape[1:])


@dataclass
class AttentionMetadata:
    positions: torch.Tensor  # [T] absolute position of every token
    slot_mapping: torch.Tensor  # [T] cache slot the token's key/value is written to
    groups: list[AttentionGroup]
    num_tokens: int


def build_group(
    query_starts: list[int],
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: torch.Tensor,
    block_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> AttentionGroup:
    """Padded index tensors for one group, built on the host.

    ``seq_lens[i]`` is the context length of sequence i after this step (cached + new);
    ``block_tables`` is ``[B, n]`` (CPU, long) with ``n * block_size >= max(seq_lens)``, padded with any
    valid block id.
    """
    q_max = max(query_lens)
    k_max = block_tables.shape[1] * block_size
    if q_max == 1:  # decode: every row valid, a key is attended iff it is cached (fewer host ops)
        s_len = torch.tensor(seq_lens)
        rows = torch.tensor(query_starts)
        additive = torch.zeros(len(seq_lens), 1, 1, k_max, dtype=dtype)
        additive.masked_fill_((torch.arange(k_max)[None, :] >= s_len[:, None])[:, None, None, :], float("-inf"))
        return AttentionGroup(
            query_index=rows[:, None].to(device),
            query_valid=torch.ones(len(seq_lens), 1, dtype=torch.bool, device=device),
            mask=additive.to(device),
            token_rows=rows.to(device),
            max_query_len=1,
            block_tables=block_tables.to(device),
            seq_lens=s_len.to(device),
            block_size=block_size,
            host_lens=tuple(zip(query_starts, query_lens, seq_lens)),
        )
    q_len = torch.tensor(query_lens)
    s_len = torch.tensor(seq_lens)
    q_start = torch.tensor(query_starts)
    q_ar = torch.arange(q_max)
    query_valid = q_ar[None, :] < q_len[:, None]
    query_index = torch.where(query_valid, q_start[:, None] + q_ar[None, :], torch.zeros((), dtype=torch.long))
    k_ar = torch.arange(k_max)
    # query row r of sequence i sits at absolute position seq_len - query_len + r
    q_pos = (s_len - q_len)[:, None] + q_ar[None, :]
    mask = k_ar[None, None, :] <= q_pos[:, :, None]
    # padded query rows attend to key 0 only, so softmax never sees an all-masked row (no NaN)
    mask = torch.where(query_valid[:, :, None], mask, (k_ar == 0)[None, None, :])
    token_rows = query_index[query_valid]
    # additive rather than boolean: SDPA would convert a boolean mask again in every layer
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))
    return AttentionGroup(
        query_index=query_index.to(device),
        query_valid=query_valid.to(device),
        mask=additive.unsqueeze(1).to(device),
        token_rows=token_rows.to(device),
        max_query_len=q_max,
        block_tables=block_tables.to(device),
        seq_lens=s_len.to(device),
        block_size=block_size,
        host_lens=tuple(zip(query_starts, query_lens, seq_lens)),
    )


def decode_group(
    seq_lens: torch.Tensor, block_tables: torch.Tensor, block_size: int, dtype: torch.dtype
) -> tuple[AttentionGroup, torch.Tensor, torch.Tensor]:
    """Decode-only metadata computed on the device from ``seq_lens [B]`` and ``block_tables [B, n]``.

    Pure tensor ops with static shapes, so it can run inside a captured CUDA graph. Returns the group,
    the new tokens' positions and their cache slots.
    """
    b, n = block_tables.shape
    dev = seq_lens.device
    positions = seq_lens - 1
    rows = torch.arange(b, device=dev)
    slot_mapping = block_tables[rows, positions // block_size] * block_size + positions % block_size
    masked = torch.arange(n * block_size, device=dev)[None, :] >= seq_lens[:, None]
    mask = torch.zeros(b, 1, 1, n * block_size, dtype=dtype, device=dev).masked_fill_(
        masked[:, None, None, :], float("-inf")
    )
    group = AttentionGroup(
        query_index=rows[:, None],
        query_valid=torch.ones(b, 1, dtype=torch.bool, device=dev),
        mask=mask,
        token_rows=rows,
        max_query_len=1,
        block_tables=block_tables,
        seq_lens=seq_lens,
        block_size=block_size,
    )
    return group, positions, slot_mapping


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: AttentionGroup, scale: float) -> torch.Tensor:
    """q: [B, Qmax, H, D]; k, v: [B, Kmax, Hkv, D*]; returns [n_valid_tokens, H, Dv] in token_rows order.

    K/V heads are never materialised per query head: for decode (one query per sequence) the ``H / Hkv``
    query heads sharing a KV head become that head's query rows; prefill uses SDPA's native GQA.
    """
    b, q_len, h, d = q.shape
    hkv, dv = k.shape[2], v.shape[-1]
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if q_len == 1:
        qq = q.view(b, hkv, h // hkv, d)
        out = F.scaled_dot_product_attention(qq, k, v, attn_mask=group.mask, scale=scale)
        return out.reshape(b, h, dv)  # one query per sequence: every row is valid (no host sync)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=group.mask, scale=scale, enable_gqa=hkv != h
    )
    return out.transpose(1, 2)[group.query_valid]


def _prefill_by_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    group: AttentionGroup, scale: float,
) -> torch.Tensor:
    """Prefill attention one sequence at a time, unpadded: ``[n_tokens_in_group, H, Dv]`` in token_rows
    order. A prompt with nothing cached attends over its own new keys with a causal SDPA (no gather, no
    mask tensor, half the scores skipped); a chunk that continues a cached prefix gathers that
    sequence's blocks only. On the CPU this beats one padded call, whose cost grows with the longest
    prompt times the number of prompts; on a GPU one padded launch is cheaper than many small ones.
    """
    bs, hkv = group.block_size, k_cache.shape[1]
    gqa = hkv != q.shape[1]
    outs = []
    for row, (start, q_len, seq_len) in enumerate(group.host_lens):
        qi = q[start : start + q_len].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        if seq_len == q_len:
            ki = k[start : start + q_len].transpose(0, 1).unsqueeze(0)
            vi = v[start : start + q_len].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            blocks = group.block_tables[row, : -(-seq_len // bs)]
            ki = k_cache.view(-1, bs, hkv, k_cache.shape[-1])[blocks].flatten(0, 1)[:seq_len]
            vi = v_cache.view(-1, bs, hkv, v_cache.shape[-1])[blocks].flatten(0, 1)[:seq_len]
            # query r sits at position seq_len - q_len + r and sees keys up to it
            mask = torch.ones(q_len, seq_len, dtype=torch.bool, device=q.device).tril(seq_len - q_len)
            o = F.scaled_dot_product_attention(
                qi, ki.transpose(0, 1).unsqueeze(0), vi.transpose(0, 1).unsqueeze(0), attn_mask=mask,
                scale=scale, enable_gqa=gqa,
            )
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


def _kernel_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: AttentionGroup, scale: float,
    value_dim: int | None = None,
) -> torch.Tensor | None:
    """Decode attention by a paged kernel straight from the cache, or None where no kernel applies
    (the caller then gathers and runs SDPA). q: ``[B, H, D]`` -> ``[B, H, Dv]``."""
    if not paged_attention.available(q, k_cache, v_cache, value_dim):
        return None
    try:
        return paged_attention.paged_decode(
            q, k_cache, v_cache, group.block_tables, group.seq_lens, group.block_size, scale, value_dim
        ).to(q.dtype)
    except Exception as e:  # a kernel that fails to build must not take serving down
        paged_attention.disable(f"{type(e).__name__}: {e}")
        return None


class GQAAttention(nn.Module):
    """Grouped-query attention with RoPE and (Qwen3) per-head q/k RMSNorm.

    Inputs: hidden ``[T, hidden]``, metadata, this layer's ``(k_cache, v_cache)`` each ``[slots, Hkv, D]``.
    Output: ``[T, hidden]``. The new tokens' keys/values are written into the cache as a side effect.
    """

    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        q_rows, kv_rows = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = FusedLinear(cfg.hidden_size, [q_rows, kv_rows, kv_rows], bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.rotary = rotary
        self.scale = self.head_dim**-0.5

    def forward(
        self, hidden: torch.Tensor, meta: AttentionMetadata, kv_cache: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        t = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.part_sizes, dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        qk = self.rotary(torch.cat([q, k], dim=1), meta.positions)  # one rotary call for q and k
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        k_cache, v_cache = kv_cache
        k_cache[meta.slot_mapping] = k.to(k_cache.dtype)
        v_cache[meta.slot_mapping] = v.to(v_cache.dtype)
        out = q.new_empty(t, self.num_heads, self.head_dim)
        for g in meta.groups:
            if g.max_query_len == 1:
                o = _kernel_decode(q.index_select(0, g.token_rows), k_cache, v_cache, g, self.scale)
                if o is not None:
                    out[g.token_rows] = o
                    continue
            elif q.device.type == "cpu" and g.host_lens is not None and k_cache.dtype == q.dtype:
                out.index_copy_(0, g.token_rows, _prefill_by_sequence(q, k, v, k_cache, v_cache, g, self.scale))
                continue
            qg = q.index_select(0, g.token_rows).unsqueeze(1) if g.max_query_len == 1 else q[g.query_index]
            kg = g.gather(k_cache).to(q.dtype)
            vg = g.gather(v_cache).to(q.dtype)
            out.index_copy_(0, g.token_rows, _sdpa(qg, kg, vg, g, self.scale))
        return self.o_proj(out.view(t, -1))


class MLAAttention(nn.Module):
    """DeepSeek multi-head latent attention, with or without ``q_lora_rank``.

    The cache holds one latent per token: the normalised compressed KV (``kv_lora_rank``) followed by the
    rotary key (``qk_rope_head_dim``), shared by all heads — the memory saving MLA exists for. Prefill
    groups decompress the latent through ``kv_b_proj``; decode groups use the absorbed form (queries
    projected into latent space, attention over latents as multi-query attention), which reads only
    the latents.
    """

    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.q_lora_rank = cfg.q_lora_rank
        qk = self.nope + self.rope_dim
        h, bias = cfg.hidden_size, cfg.attention_bias
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.num_heads * qk, bias=False)
        else:
            self.q_proj = nn.Linear(h, self.num_heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, cfg.kv_lora_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, self.num_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, h, bias=bias)
        self.rotary = rotary
        scale = qk**-0.5
        rope = cfg.rope
        if rope.kind == "yarn" and rope.mscale_all_dim:
            m = 0.1 * rope.mscale_all_dim * torch.log(torch.tensor(rope.factor)).item() + 1.0
            scale = scale * m * m
        self.scale = scale

    def forward(self, hidden: torch.Tensor, meta: AttentionMetadata, kv_cache: tuple[torch.Tensor, ...]) -> torch.Tensor:
        t = hidden.shape[0]
        if self.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        else:
            q = self.q_proj(hidden)
        q = q.view(t, self.num_heads, self.nope + self.rope_dim)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        q_pe = self.rotary(q_pe, meta.positions)
        latent = self.kv_a_proj_with_mqa(hidden)
        c_kv, k_pe = latent.split([self.kv_lora_rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        k_pe = self.rotary(k_pe.unsqueeze(1), meta.positions)
        (cache,) = kv_cache
        cache[meta.slot_mapping] = torch.cat([c_kv.unsqueeze(1), k_pe], dim=-1).to(cache.dtype)

        w = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # [H, nope, L], [H, v, L]
        out = q.new_empty(t, self.num_heads, self.v_dim)
        for g in meta.groups:
            if g.max_query_len == 1:
                # absorbed: q_lat = q_nope · W_UK, attend over latents, then project by W_UV
                qn, qp = q_nope.index_select(0, g.token_rows), q_pe.index_select(0, g.token_rows)
                q_lat = torch.cat([torch.einsum("thn,hnl->thl", qn, w_uk), qp], -1)
                o_lat = _kernel_decode(q_lat, cache, cache, g, self.scale, self.kv_lora_rank)
                if o_lat is not None:
                    out[g.token_rows] = torch.einsum("thl,hvl->thv", o_lat, w_uv)
                    continue
            lat = g.gather(cache).to(q.dtype)  # [B, K, 1, L+R]
            qn, qp = q_nope[g.query_index], q_pe[g.query_index]  # [B, Q, H, *]
            if g.max_query_len == 1:
                # absorbed: q_lat = q_nope · W_UK, attend over latents, then project by W_UV
                q_lat = torch.einsum("bqhn,hnl->bqhl", qn, w_uk)
                o_lat = _sdpa(torch.cat([q_lat, qp], -1), lat, lat[..., : self.kv_lora_rank], g, self.scale)
                out[g.token_rows] = torch.einsum("thl,hvl->thv", o_lat, w_uv)
            else:
                b, kmax = lat.shape[:2]
                kv = self.kv_b_proj(lat[:, :, 0, : self.kv_lora_rank]).view(b, kmax, self.num_heads, -1)
                k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
                k_rot = lat[:, :, :, self.kv_lora_rank :].expand(b, kmax, self.num_heads, self.rope_dim)
                k = torch.cat([k_nope, k_rot], dim=-1)
                out[g.token_rows] = _sdpa(torch.cat([qn, qp], -1), k, v, g, self.scale)
        return self.o_proj(out.view(t, -1))


def make_attention(cfg: ModelConfig, rotary: RotaryEmbedding) -> nn.Module:
    return MLAAttention(cfg, rotary) if cfg.attention == "mla" else GQAAttention(cfg, rotary)
