"""Family-neutral model configuration parsed from a Hugging Face ``config.json``.

Every model family we serve is a composition of the same units (attention, dense FFN, MoE), so the
engine only needs one configuration type. :func:`ModelConfig.from_hf_dict` understands the keys of the
three supported families, in both the transformers-4 spelling (``rope_theta`` / ``rope_scaling``) and the
transformers-5 spelling (``rope_parameters``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AttentionKind = Literal["gqa", "mla"]
RouterKind = Literal["softmax", "sigmoid_grouped"]

#: ``architectures[0]`` of a checkpoint -> our family name.
SUPPORTED_ARCHITECTURES = {
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "MixtralForCausalLM": "mixtral",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not implemented."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    kind: str = "default"  # "default" | "linear" | "yarn"
    factor: float = 1.0
    original_max_position: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    interleaved: bool = False  # DeepSeek lays rotary pairs out as (x0, x1), (x2, x3), ...


@dataclass(frozen=True)
class ModelConfig:
    family: str
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense FFN width
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    attention: AttentionKind = "gqa"
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k
    attention_bias: bool = False
    # MLA (DeepSeek)
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    router: RouterKind = "softmax"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    moe_layers: tuple[bool, ...] = ()  # per layer: MoE (True) or dense FFN (False)
    num_mtp_layers: int = 0  # DeepSeek multi-token-prediction modules stored after the decoder layers
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ---- derived -------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def kv_cache_shape(self) -> tuple[int, int]:
        """(heads, width) of one token's cache entry per layer, for K (and V when separate).

        MLA caches one compressed latent per token (``kv_lora_rank`` + rotary key), shared by all heads.
        """
        if self.attention == "mla":
            return (1, self.kv_lora_rank + self.qk_rope_head_dim)
        return (self.num_kv_heads, self.head_dim)

    @property
    def kv_has_separate_values(self) -> bool:
        return self.attention != "mla"

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        heads, width = self.kv_cache_shape
        per_layer = heads * width * (2 if self.kv_has_separate_values else 1)
        return per_layer * self.num_layers * dtype_bytes

    # ---- parsing -------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in SUPPORTED_ARCHITECTURES:
            supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
            raise UnsupportedModelError(
                f"unsupported architecture {arch!r} (model_type={cfg.get('model_type')!r}); "
                f"supported: {supported}"
            )
        family = SUPPORTED_ARCHITECTURES[arch]
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        layers = int(cfg["num_hidden_layers"])
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((int(eos),) if eos is not None else ())
        common: dict[str, Any] = dict(
            family=family,
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate_size=int(cfg.get("intermediate_size") or 0),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            extra={k: cfg[k] for k in ("torch_dtype", "dtype") if k in cfg},
        )
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"unsupported hidden_act {cfg.get('hidden_act')!r}; only 'silu'")
        if family == "qwen3_moe":
            n_exp = int(cfg.get("num_experts", cfg.get("num_local_experts", 0)) or 0)
            step = int(cfg.get("decoder_sparse_step", 1) or 1)
            mlp_only = set(cfg.get("mlp_only_layers") or [])
            moe_layers = tuple(
                (i not in mlp_only) and n_exp > 0 and (i + 1) % step == 0 for i in range(layers)
            )
            return cls(
                **common,
                rope=_parse_rope(cfg, interleaved=False),
                qk_norm=True,
                num_experts=n_exp,
                num_experts_per_tok=int(cfg.get("num_experts_per_tok", 0)),
                moe_intermediate_size=int(cfg.get("moe_intermediate_size", 0)),
                router="softmax",
                norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                moe_layers=moe_layers,
            )
        if family == "mixtral":
            n_exp = int(cfg.get("num_local_experts", 8))
            return cls(
                **common,
                rope=_parse_rope(cfg, interleaved=False),
                num_experts=n_exp,
                num_experts_per_tok=int(cfg.get("num_experts_per_tok", 2)),
                moe_intermediate_size=int(cfg["intermediate_size"]),
                router="softmax",
                norm_topk_prob=True,
                moe_layers=tuple(True for _ in range(layers)),
            )
        # deepseek_v3
        n_exp = int(cfg.get("n_routed_experts", 0))
        first_dense = int(cfg.get("first_k_dense_replace", 0))
        freq = int(cfg.get("moe_layer_freq", 1) or 1)
        moe_layers = tuple(n_exp > 0 and i >= first_dense and i % freq == 0 for i in range(layers))
        q_lora = cfg.get("q_lora_rank")
        n_shared = int(cfg.get("n_shared_experts") or 0)
        moe_inter = int(cfg.get("moe_intermediate_size", 0))
        common["head_dim"] = int(cfg.get("qk_nope_head_dim", 0)) + int(cfg.get("qk_rope_head_dim", 0))
        return cls(
            **common,
            rope=_parse_rope(cfg, interleaved=bool(cfg.get("rope_interleave", True))),
            attention="mla",
            q_lora_rank=int(q_lora) if q_lora else None,
            kv_lora_rank=int(cfg["kv_lora_rank"]),
            qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
            qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
            v_head_dim=int(cfg["v_head_dim"]),
            num_experts=n_exp,
            num_experts_per_tok=int(cfg.get("num_experts_per_tok", 0)),
            moe_intermediate_size=moe_inter,
            num_shared_experts=n_shared,
            shared_expert_intermediate_size=moe_inter * n_shared,
            router="sigmoid_grouped",
            norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
            n_group=int(cfg.get("n_group") or 1),
            topk_group=int(cfg.get("topk_group") or 1),
            moe_layers=moe_layers,
            num_mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
        )


def _parse_rope(cfg: dict[str, Any], *, interleaved: bool) -> RopeConfig:
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if scaling:
        params = {**scaling, **params}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear", "yarn"):
        raise UnsupportedModelError(f"unsupported rope type {kind!r}; supported: default, linear, yarn")
    return RopeConfig(
        theta=theta,
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        original_max_position=params.get("original_max_position_embeddings"),
        beta_fast=float(params.get("beta_fast", 32.0)),
        beta_slow=float(params.get("beta_slow", 1.0)),
        mscale=float(params.get("mscale", 1.0)),
        mscale_all_dim=float(params.get("mscale_all_dim", 0.0)),
        interleaved=interleaved,
    )
