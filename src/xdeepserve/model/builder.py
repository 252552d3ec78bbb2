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


def make_model(
    arch: str, out: str | Path, *, seed: int = 0, overrides: dict[str, Any] | None = None, mtp: bool = False
) -> Path:
    """Create ``out`` holding a tiny random ``arch`` checkpoint with tokenizer and generation config.

    ``mtp`` (DeepSeek-V3 only) adds one multi-token-prediction module in DeepSeek's checkpoint layout
    (``model.layers.{num_hidden_layers}.*``, see :mod:`.mtp`); HF transformers ignores those tensors.
    """
    out = Path(out)
    if mtp and arch != "deepseek_v3":
        raise ValueError("MTP modules exist only for deepseek_v3")
    tok = train_tokenizer()
    vocab = ((tok.get_vocab_size() + 63) // 64) * 64
    kwargs = tiny_config_kwargs(arch, vocab)
    kwargs.update(overrides or {})
    if mtp:
        kwargs["num_nextn_predict_layers"] = 1
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
    if mtp:
        _append_mtp_module(model, out, seed)
    gen = {"bos_token_id": ids["<|bos|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|eos|>"]], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out


def _append_mtp_module(model, out: Path, seed: int) -> None:
    """Add a random MTP module under ``model.layers.{L}`` to the saved single-file checkpoint."""
    from safetensors.torch import load_file, save_file
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer

    cfg = model.config
    n = cfg.num_hidden_layers
    gen = torch.Generator().manual_seed(seed + 1)
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=n)  # past first_k_dense_replace: a MoE layer
    tensors = {}
    for name, value in layer.state_dict().items():
        if name.endswith("norm.weight"):
            value = torch.ones_like(value)
        elif name.endswith("e_score_correction_bias"):
            value = torch.randn(value.shape, generator=gen) * 0.05
        else:  # experts are created uninitialised; give every matrix the config's init scale
            value = torch.randn(value.shape, generator=gen) * cfg.initializer_range
        tensors[f"model.layers.{n}.{name}"] = value.contiguous()
    h = cfg.hidden_size
    tensors[f"model.layers.{n}.enorm.weight"] = torch.ones(h)
    tensors[f"model.layers.{n}.hnorm.weight"] = torch.ones(h)
    tensors[f"model.layers.{n}.eh_proj.weight"] = torch.randn(h, 2 * h, generator=gen) * cfg.initializer_range
    tensors[f"model.layers.{n}.embed_tokens.weight"] = model.get_input_embeddings().weight.detach().clone()
    tensors[f"model.layers.{n}.shared_head.norm.weight"] = torch.ones(h)
    tensors[f"model.layers.{n}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    file = out / "model.safetensors"
    save_file({**load_file(str(file)), **tensors}, str(file), metadata={"format": "pt"})
