"""Model families as compositions of units.

Qwen3-MoE, DeepSeek-V3 and Mixtral differ only in which attention unit each layer uses, which layers are
MoE rather than dense, and how the router scores experts; all of that is in :class:`ModelConfig`. A
layer is ``x + attn(norm(x))`` then ``x + ffn(norm(x))``; the units are reachable one by one
(:attr:`DecoderLayer.self_attn`, :attr:`DecoderLayer.mlp`) so a disaggregated deployment can run them in
different processes with this same code.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionMetadata, make_attention
from .config import ModelConfig
from .layers import RMSNorm, RotaryEmbedding
from .moe import DenseFFN, MoE
from .mtp import MTPModule


class DecoderLayer(nn.Module):
    def __init__(
        self, cfg: ModelConfig, layer_idx: int, rotary: RotaryEmbedding, is_moe: bool | None = None
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = make_attention(cfg, rotary)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = cfg.moe_layers[layer_idx] if is_moe is None else is_moe
        self.mlp: nn.Module = MoE(cfg) if self.is_moe else DenseFFN(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), meta, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nn.Module):
    """Embedding, decoder layers, final norm and LM head over a flat batch of tokens."""

    def __init__(self, cfg: ModelConfig, max_positions: int | None = None, with_mtp: bool = False) -> None:
        super().__init__()
        self.config = cfg
        rot_dim = cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.head_dim
        positions = min(cfg.max_position_embeddings, max_positions or cfg.max_position_embeddings)
        self.rotary = RotaryEmbedding(cfg.rope, rot_dim, positions)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, self.rotary) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # the first of DeepSeek's multi-token-prediction modules, as a draft head (None: not loaded)
        self.mtp = MTPModule(cfg, cfg.num_layers, self.rotary) if with_mtp else None

    @property
    def max_positions(self) -> int:
        return self.rotary.cos.shape[0]

    def forward(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: list[tuple[torch.Tensor, ...]]
    ) -> torch.Tensor:
        """input_ids: [T] -> final hidden states [T, hidden] (after the final norm). ``kv_caches`` may
        hold one more entry than there are layers (the MTP module's); it is not used here."""
        x = self.embed_tokens(input_ids)
        for layer, cache in zip(self.layers, kv_caches):
            x = layer(x, meta, cache)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
