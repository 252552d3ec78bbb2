"""Load a Hugging Face checkpoint directory into our units.

Reads ``config.json``, single-file or sharded (``model.safetensors.index.json``) safetensors,
``tokenizer.json`` + ``tokenizer_config.json`` (chat template) and ``generation_config.json``. Per-expert
checkpoint tensors (``experts.{e}.gate_proj``; Mixtral's ``w1/w3/w2``) are stacked into our grouped
expert weights; transformers-5 fused expert tensors (``experts.gate_up_proj``) are accepted too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .config import ModelConfig, UnsupportedModelError
from .model import CausalLM


class CheckpointError(ValueError):
    """The checkpoint directory is incomplete or inconsistent with its config."""


@dataclass
class GenerationDefaults:
    eos_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None


@dataclass
class ModelBundle:
    path: Path
    config: ModelConfig
    model: CausalLM
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    generation: GenerationDefaults
    hf_config: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory: {cfg_file.name} not found")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: invalid JSON ({e})") from e
    try:
        return ModelConfig.from_hf_dict(raw), raw
    except KeyError as e:
        raise CheckpointError(f"{cfg_file}: missing required key {e}") from e


def read_generation_defaults(path: Path, cfg: ModelConfig) -> GenerationDefaults:
    gen_file = path / "generation_config.json"
    raw = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    eos = raw.get("eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else cfg.eos_token_ids)
    return GenerationDefaults(
        eos_token_ids=tuple(int(e) for e in eos_ids),
        temperature=raw.get("temperature"),
        top_p=raw.get("top_p"),
        top_k=raw.get("top_k"),
        max_new_tokens=raw.get("max_new_tokens"),
    )


def load_tokenizer(path: str | Path):
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path}: tokenizer.json not found")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: shards named in the index are missing: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


_EXPERT = re.compile(r"^((?:layers\.\d+|mtp\.layer)\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED_EXPERT = re.compile(r"^((?:layers\.\d+|mtp\.layer)\.mlp\.experts)\.(gate_up_proj|down_proj)$")
# tensors of a DeepSeek MTP module that are not part of its decoder layer
_MTP_OWN = ("enorm.", "hnorm.", "eh_proj.", "embed_tokens.", "shared_head.")
# checkpoint projections we store fused into one matrix: fused name -> parts, in row order
_FUSED = {"gate_up_proj": ("gate_proj", "up_proj"), "qkv_proj": ("q_proj", "k_proj", "v_proj")}
_PART_OF = {part: (fused, i) for fused, parts in _FUSED.items() for i, part in enumerate(parts)}
_FUSED_PART = re.compile(r"^(.*(?:\.mlp|\.shared_experts|\.self_attn))\.(gate_proj|up_proj|q_proj|k_proj|v_proj)\.(weight|bias)$")
_MIXTRAL_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def _canonical(name: str) -> str:
    """Checkpoint name -> our parameter naming (no ``model.`` prefix, Mixtral spelled like the others)."""
    name = name.removeprefix("model.").replace(".block_sparse_moe.", ".mlp.")
    return re.sub(r"\.experts\.(\d+)\.(w[123])\.", lambda m: f".experts.{m[1]}.{_MIXTRAL_NAMES[m[2]]}.", name)


def iter_checkpoint(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a checkpoint directory, shard by shard."""
    for file in _weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_weights(model: CausalLM, tensors: Iterable[tuple[str, torch.Tensor]], source: str | Path) -> None:
    """Copy checkpoint-named tensors (files, or an in-memory HF state dict) into ``model``; error on any
    missing or unexpected tensor. ``source`` names where they came from, for error messages."""
    path = source
    cfg = model.config
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    filled: dict[str, int] = {}  # param -> number of pieces written
    expected: dict[str, int] = {}
    for pname in params:
        if pname.startswith("rotary.") or ".rotary." in pname:
            continue
        if pname.endswith(".experts.w13"):
            expected[pname] = 2 * cfg.num_experts
        elif pname.endswith(".experts.w2"):
            expected[pname] = cfg.num_experts
        elif (fused := pname.rsplit(".", 2)[-2]) in _FUSED:
            expected[pname] = len(_FUSED[fused])
        else:
            expected[pname] = 1
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)

    def put(target: str, value: torch.Tensor, index: tuple = (), pieces: int = 1, src: str = "") -> None:
        if target not in params:
            raise CheckpointError(f"{path}: unexpected tensor {src!r} (no parameter {target!r} in {cfg.architecture})")
        dst = params[target].data
        view = dst[index] if index else dst
        if tuple(view.shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: tensor {src!r} has shape {tuple(value.shape)}, expected {tuple(view.shape)}"
            )
        view.copy_(value.to(dst.dtype))
        filled[target] = filled.get(target, 0) + pieces

    inter = cfg.moe_intermediate_size
    for raw_name, tensor in tensors:
        name = _canonical(raw_name)
        layer = re.match(r"^layers\.(\d+)\.", name)
        if layer and int(layer[1]) >= cfg.num_layers:
            # DeepSeek MTP modules live after the decoder layers: the first one becomes ``mtp`` when
            # the model was built with it; deeper ones (and all of them otherwise) are not used
            if model.mtp is None or int(layer[1]) != cfg.num_layers:
                continue
            rest = name[len(layer[0]) :]
            name = "mtp." + rest if rest.startswith(_MTP_OWN) else "mtp.layer." + rest
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if m := _EXPERT.match(name):
            base, e, kind = m[1], int(m[2]), m[3]
            if kind == "down_proj":
                put(f"{base}.w2", tensor, (e,), src=raw_name)
            else:
                rows = slice(0, inter) if kind == "gate_proj" else slice(inter, 2 * inter)
                put(f"{base}.w13", tensor, (e, rows), src=raw_name)
        elif m := _FUSED_EXPERT.match(name):
            n = 2 * cfg.num_experts if m[2] == "gate_up_proj" else cfg.num_experts
            put(f"{m[1]}.{'w13' if m[2] == 'gate_up_proj' else 'w2'}", tensor, pieces=n, src=raw_name)
        elif (m := _FUSED_PART.match(name)) and f"{m[1]}.{_PART_OF[m[2]][0]}.{m[3]}" in params:
            fused, index = _PART_OF[m[2]]
            target = f"{m[1]}.{fused}.{m[3]}"
            sizes = fused_part_sizes(model, f"{m[1]}.{fused}")
            start = sum(sizes[:index])
            put(target, tensor, (slice(start, start + sizes[index]),), src=raw_name)
        else:
            put(name, tensor, src=raw_name)
    missing = sorted(k for k, n in expected.items() if filled.get(k, 0) < n)
    if missing:
        shown = ", ".join(missing[:8]) + (f" … and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{path}: checkpoint is missing tensors for: {shown}")


def fused_part_sizes(model: CausalLM, module_name: str) -> list[int]:
    """Output rows of each part of a fused projection (``qkv_proj`` or ``gate_up_proj``)."""
    module = model.get_submodule(module_name)
    return list(module.part_sizes)


def from_hf_model(hf_model, *, max_positions: int | None = None) -> CausalLM:
    """Our units with the weights of an in-memory HF model (same device and dtype), without a disk
    round trip (the GPU benchmark builds multi-GB random models this way)."""
    raw = hf_model.config.to_dict()
    if not raw.get("architectures"):
        raw["architectures"] = [type(hf_model).__name__]
    cfg = ModelConfig.from_hf_dict(raw)
    param = next(hf_model.parameters())
    with torch.device("meta"):
        model = CausalLM(cfg, max_positions=max_positions)
    model = model.to_empty(device=param.device).to(param.dtype)
    _reset_buffers(model, cfg, max_positions)
    load_weights(model, hf_model.state_dict().items(), type(hf_model).__name__)
    return cast_model(model, device=param.device, dtype=param.dtype)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_positions: int | None = None,
    with_tokenizer: bool = True,
    mtp: bool | None = None,
) -> ModelBundle:
    """Load a checkpoint directory. ``mtp``: build and load the first DeepSeek MTP module as a draft
    head (None: when the checkpoint has one; True: required; False: ignore it)."""
    path = Path(path)
    cfg, raw = read_config(path)
    if cfg.family == "mixtral" and raw.get("sliding_window"):
        raise UnsupportedModelError("Mixtral with sliding_window attention is not supported")
    present = has_mtp_weights(path, cfg)
    if mtp and not present:
        raise CheckpointError(
            f"{path}: MTP was requested but the checkpoint has no multi-token-prediction module "
            f"(num_nextn_predict_layers={cfg.num_mtp_layers}, no tensors under model.layers.{cfg.num_layers}.)"
        )
    with torch.device("meta"):
        model = CausalLM(cfg, max_positions=max_positions, with_mtp=present if mtp is None else mtp)
    model = model.to_empty(device="cpu")
    _reset_buffers(model, cfg, max_positions)  # buffers computed at construction were lost by to_empty
    load_weights(model, iter_checkpoint(path), path)
    cast_model(model, device=device, dtype=dtype)
    tok = load_tokenizer(path) if with_tokenizer else None
    return ModelBundle(path, cfg, model, tok, read_generation_defaults(path, cfg), raw)


def has_mtp_weights(path: Path, cfg: ModelConfig) -> bool:
    """Whether the checkpoint holds the first MTP module (config ``num_nextn_predict_layers`` >= 1 and
    its tensors present: HF's ``save_pretrained`` writes the config key without the weights)."""
    if cfg.num_mtp_layers < 1:
        return False
    key = f"model.layers.{cfg.num_layers}.eh_proj.weight"
    for file in _weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():
                return True
    return False


def cast_model(model: CausalLM, *, device: str | torch.device, dtype: torch.dtype) -> CausalLM:
    """Move weights to ``device``/``dtype``; buffers (rotary tables, router correction bias) stay fp32."""
    fp32_buffers = {name: b.float() for name, b in model.named_buffers()}
    model.to(device=device, dtype=dtype)
    for name, buf in fp32_buffers.items():
        owner, attr = model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
        setattr(owner, attr, buf.to(device))
    return model.eval()


def _reset_buffers(model: CausalLM, cfg: ModelConfig, max_positions: int | None) -> None:
    from .layers import RotaryEmbedding

    rot_dim = cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.head_dim
    positions = min(cfg.max_position_embeddings, max_positions or cfg.max_position_embeddings)
    ref = RotaryEmbedding(cfg.rope, rot_dim, positions)
    model.rotary.cos = ref.cos
    model.rotary.sin = ref.sin
    layers = list(model.layers) + ([model.mtp.layer] if model.mtp is not None else [])
    for layer in layers:
        if layer.is_moe and hasattr(layer.mlp.gate, "e_score_correction_bias"):
            layer.mlp.gate.e_score_correction_bias.zero_()
