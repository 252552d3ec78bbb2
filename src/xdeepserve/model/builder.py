"""Write tiny random checkpoints of real architectures, in Hugging Face format, offline and in seconds.

The configs come from transformers' own config classes and the weights from its model classes (random
init, seeded), saved with ``save_pretrained``: the result is byte-for-byte the format a hub checkpoint
has, so our loader is tested on the real thing and HF transformers is the correctness oracle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .tokenizer import save_tokenizer, train_tokenizer

ARCHITECTURES = ("qwen3_moe", "deepseek_v3", "mixtral")


def tiny_config_kwargs(arch: str, vocab_size: int) -> dict[str, Any]:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        initializer_range=0.08,
        tie_word_embeddings=False,
    )
    if arch == "qwen3_moe":
        return dict(
            common,
            num_key_value_heads=2,
            head_dim=32,
            intermediate_size=256,
            moe_intermediate_size=64,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
        )
    if arch == "mixtral":
        return dict(
            common,
            num_key_value_heads=2,
            intermediate_size=96,
            num_local_experts=8,
            num_experts_per_tok=2,
            sliding_window=None,
        )
    if arch == "deepseek_v3":
        return dict(
            common,
            num_key_value_heads=4,
            intermediate_size=256,
            moe_intermediate_size=64,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.5,
            first_k_dense_replace=1,
            kv_lora_rank=32,
            q_lora_rank=48,
            qk_rope_head_dim=16,
            qk_nope_head_dim=32,
            v_head_dim=32,
            num_nextn_predict_layers=0,
        )
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def hf_classes(arch: str):
    import transformers as tf

    return {
        "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM),
        "deepseek_v3": (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM),
        "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM),
    }[arch]


def make_model(arch: str, out: str | Path, *, seed: int = 0, overrides: dict[str, Any] | None = None) -> Path:
    """Create ``out`` holding a tiny random ``arch`` checkpoint with tokenizer and generation config."""
    out = Path(out)
    tok = train_tokenizer()
    vocab = ((tok.get_vocab_size() + 63) // 64) * 64
    kwargs = tiny_config_kwargs(arch, vocab)
    kwargs.update(overrides or {})
    ids = save_tokenizer(tok, out, model_max_length=kwargs["max_position_embeddings"])
    kwargs.update(bos_token_id=ids["<|bos|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|pad|>"])
    config_cls, model_cls = hf_classes(arch)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        # random routers are near-uniform; give the DeepSeek correction bias real values to exercise it
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.05)
    model.save_pretrained(str(out))
    gen = {"bos_token_id": ids["<|bos|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|eos|>"]], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out
