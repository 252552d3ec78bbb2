"""DeepSeek-V3 multi-token prediction (MTP) module, used as a one-token draft head.

DeepSeek-V3 checkpoints store one MTP module per extra prediction depth after the decoder layers, under
``model.layers.{L}`` with ``L = num_hidden_layers``: a full decoder layer plus ``enorm``, ``hnorm``,
``eh_proj``, its own copy of the embedding and a ``shared_head`` (norm and LM head). At position ``i``
it combines the main model's final hidden state ``h_i`` (after the final norm) with the embedding of the
*next* token ``t_{i+1}``::

    x_i      = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)])
    out_i    = decoder_layer(x_i)            # causal attention over the MTP positions, own KV cache
    logits_i = shared_head.head(shared_head.norm(out_i))   # predicts t_{i+2}

The engine uses it for speculative decoding: the draft for the token after next is verified by the
main model in the following step, so greedy output is the same with and without it.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionMetadata
from .config import ModelConfig
from .layers import RMSNorm, RotaryEmbedding


class SharedHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


class MTPModule(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        from .model import DecoderLayer  # model.py imports this module

        super().__init__()
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.enorm = RMSNorm(h, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(h, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.layer = DecoderLayer(cfg, layer_idx, rotary, is_moe=cfg.num_experts > 0)
        self.shared_head = SharedHead(cfg)

    def forward(
        self, next_ids: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata, kv_cache: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """next_ids ``[T]`` (token i+1), hidden ``[T, H]`` (main model at position i) -> ``[T, H]``."""
        x = torch.cat([self.enorm(self.embed_tokens(next_ids)), self.hnorm(hidden)], dim=-1)
        return self.layer(self.eh_proj(x), meta, kv_cache)

    def compute_logits(self, out: torch.Tensor) -> torch.Tensor:
        return self.shared_head.head(self.shared_head.norm(out)).float()
