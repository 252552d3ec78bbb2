"""Model units and the checkpoint loader, against HF transformers on the same tiny checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from xdeepserve.cli import main as xds
from xdeepserve.model.attention import AttentionMetadata, build_group
from xdeepserve.model.builder import ARCHITECTURES, hf_classes
from xdeepserve.model.config import UnsupportedModelError
from xdeepserve.model.loader import CheckpointError, load_model


def _run_chunks(bundle, ids: torch.Tensor, chunks: list[int], block_size: int = 8) -> torch.Tensor:
    """Feed ``ids`` through our model in the given chunk sizes over a paged cache with a shuffled block table."""
    cfg = bundle.config
    heads, width = cfg.kv_cache_shape
    n_blocks = -(-len(ids) // block_size) + 2
    caches = [
        tuple(torch.zeros(n_blocks * block_size, heads, width) for _ in range(2 if cfg.kv_has_separate_values else 1))
        for _ in range(cfg.num_layers)
    ]
    table = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(0))[None]
    logits, start = [], 0
    for n in chunks:
        pos = torch.arange(start, start + n)
        slots = table[0, pos // block_size] * block_size + pos % block_size
        group = build_group([0], [n], [start + n], table, block_size, torch.device("cpu"))
        meta = AttentionMetadata(positions=pos, slot_mapping=slots, groups=[group], num_tokens=n)
        with torch.no_grad():
            logits.append(bundle.model.compute_logits(bundle.model(ids[start : start + n], meta, caches)))
        start += n
    return torch.cat(logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_units_match_hf_logits_for_prefill_chunks_and_decode_steps(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    bundle = load_model(path, max_positions=256)
    hf = hf_classes(arch)[1].from_pretrained(path).eval()
    ids = torch.randint(5, bundle.config.vocab_size, (45,), generator=torch.Generator().manual_seed(1))
    ours = _run_chunks(bundle, ids, [20, 13, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_mla_without_q_lora_rank_matches_hf(tmp_path):
    from xdeepserve.model.builder import make_model

    path = make_model("deepseek_v3", tmp_path / "ds", seed=3, overrides={"q_lora_rank": None})
    assert json.loads((path / "config.json").read_text())["q_lora_rank"] is None
    bundle = load_model(path, max_positions=128)
    hf = hf_classes("deepseek_v3")[1].from_pretrained(path).eval()
    ids = torch.randint(5, bundle.config.vocab_size, (20,), generator=torch.Generator().manual_seed(2))
    ours = _run_chunks(bundle, ids, [12, 1, 1, 1, 1, 1, 1, 1, 1])
    with torch.no_grad():
        assert torch.allclose(ours, hf(ids[None]).logits[0], atol=1e-4)


def test_qwen3_sparse_step_and_mlp_only_layers_choose_dense_layers(tiny_checkpoint):
    bundle = load_model(tiny_checkpoint("qwen3_moe"), with_tokenizer=False)
    assert [layer.is_moe for layer in bundle.model.layers] == [True, False, True]  # mlp_only_layers=[1]


def test_deepseek_first_k_dense_layers_are_dense(tiny_checkpoint):
    bundle = load_model(tiny_checkpoint("deepseek_v3"), with_tokenizer=False)
    assert [layer.is_moe for layer in bundle.model.layers] == [False, True, True]
    assert bundle.model.layers[1].mlp.shared_experts is not None


def test_sharded_checkpoint_loads_like_the_single_file(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("mixtral")
    dst = tmp_path / "sharded"
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, dst / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a = load_model(src, with_tokenizer=False).model.state_dict()
    b = load_model(dst, with_tokenizer=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint("qwen3_moe"), dst)
    tensors = load_file(dst / "model.safetensors")
    del tensors["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(tensors, dst / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors for: layers\.2\.mlp\.experts\.w13"):
        load_model(dst, with_tokenizer=False)


def test_unsupported_architecture_is_rejected_with_the_supported_list(tiny_checkpoint, tmp_path):
    dst = tmp_path / "llama"
    shutil.copytree(tiny_checkpoint("qwen3_moe"), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM.*supported: DeepseekV3ForCausalLM"):
        load_model(dst)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_model(tmp_path)


def test_make_model_cli_writes_a_checkpoint_hf_and_autotokenizer_load(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    assert xds(["make-model", "--arch", "deepseek_v3", "--out", str(out), "--seed", "7"]) == 0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).is_file(), f
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode("Add 17 and 25.", add_special_tokens=False)) == "Add 17 and 25."
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "deepseek_v3"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_in_memory_hf_model_converts_without_a_disk_round_trip(arch, tiny_checkpoint):
    from xdeepserve.model.loader import from_hf_model

    hf = hf_classes(arch)[1].from_pretrained(tiny_checkpoint(arch)).eval()
    ours = from_hf_model(hf, max_positions=128)
    from_disk = load_model(tiny_checkpoint(arch), max_positions=128, with_tokenizer=False).model
    a, b = ours.state_dict(), from_disk.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
