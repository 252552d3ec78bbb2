"""The trained demo checkpoint (``src/xdeepserve/demo_model``): DeepSeek-V3 layout with one MTP module,
loadable by transformers and by our loader, answering checkable questions, identically in HF and in our
engine; and ``xds train-demo`` itself, on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from xdeepserve.train_demo import (
    DEFAULT_OUT,
    TASKS,
    TINY,
    Args,
    DemoTrainer,
    Encoder,
    build_tokenizer,
    excluded_questions,
    heldout_questions,
    load_mtp_reference,
    main,
    prompt_text,
)

DEMO = DEFAULT_OUT
# the first four held-out questions of every task: never seen in training
QUESTIONS = [ex for task in TASKS for ex in heldout_questions(4)[task]]

def _keys(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _hf(path: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _assert_mtp_layout(path: Path) -> None:
    cfg = json.loads((path / "config.json").read_text())
    n, h = cfg["num_hidden_layers"], cfg["hidden_size"]
    assert cfg["num_nextn_predict_layers"] == 1 and cfg["first_k_dense_replace"] == 1
    keys = _keys(path)
    mtp = {k.removeprefix(f"model.layers.{n}."): s for k, s in keys.items() if k.startswith(f"model.layers.{n}.")}
    moe = {k.removeprefix(f"model.layers.{n - 1}."): s for k, s in keys.items() if k.startswith(f"model.layers.{n - 1}.")}
    extra = {"enorm.weight": (h,), "hnorm.weight": (h,), "eh_proj.weight": (h, 2 * h),
             "embed_tokens.weight": keys["model.embed_tokens.weight"], "shared_head.norm.weight": (h,),
             "shared_head.head.weight": keys["lm_head.weight"]}
    assert mtp == {**moe, **extra}  # one full MoE decoder layer, named as HF names the main ones, plus MTP parts
    assert not any(k.startswith(f"model.layers.{n + 1}.") for k in keys)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor(f"model.layers.{n}.embed_tokens.weight"), f.get_tensor("model.embed_tokens.weight"))
        assert torch.equal(f.get_tensor(f"model.layers.{n}.shared_head.head.weight"), f.get_tensor("lm_head.weight"))


def test_chat_template_renders_exactly_the_training_prompt():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(DEMO))
    q = QUESTIONS[0].question
    text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    assert text == prompt_text(q)
    assert tok.encode(text, add_special_tokens=False) == build_tokenizer().encode(text, add_special_tokens=False).ids
    gen = json.loads((DEMO / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")


def test_checkpoint_is_small_and_has_one_mtp_module_in_deepseek_layout():
    assert (DEMO / "model.safetensors").stat().st_size <= 10 * 2**20
    _assert_mtp_layout(DEMO)


def test_engine_greedy_answers_equal_hf_greedy_and_are_correct():
    from xdeepserve.engine.llm import LLM
    from xdeepserve.engine.request import SamplingParams

    llm = LLM(str(DEMO), max_model_len=256, kv_cache_memory_bytes=16 * 2**20, max_num_seqs=16)
    outs = llm.chat([[{"role": "user", "content": ex.question}] for ex in QUESTIONS],
                    SamplingParams(max_tokens=16, temperature=0.0))
    # HF greedy would produce the same tokens iff each one is HF's argmax given the prompt and the
    # tokens before it: one batched teacher-forced forward pass checks all of them
    enc = build_tokenizer()
    pad = enc.token_to_id("<|pad|>")
    seqs = [(enc.encode(prompt_text(ex.question), add_special_tokens=False).ids, list(out.token_ids))
            for ex, out in zip(QUESTIONS, outs)]
    ids = torch.full((len(seqs), max(len(p) + len(g) for p, g in seqs)), pad)
    for row, (p, g) in enumerate(seqs):
        ids[row, : len(p) + len(g)] = torch.tensor(p + g)
    with torch.no_grad():
        greedy = _hf(DEMO)(input_ids=ids).logits.argmax(-1)
    for row, ((p, g), ex) in enumerate(zip(seqs, QUESTIONS)):
        assert greedy[row, len(p) - 1 : len(p) + len(g) - 1].tolist() == g, ex.question
    wrong = [(ex.question, out.text) for ex, out in zip(QUESTIONS, outs) if out.text.strip() != ex.answer]
    assert len(wrong) <= 2, wrong  # held-out accuracy is 0.875-1.00 per task (docs/demo_model.md)


def test_our_loader_reads_the_checkpoint_and_its_mtp_config():
    from xdeepserve.model.loader import load_model

    bundle = load_model(DEMO)
    assert bundle.config.num_mtp_layers == 1
    assert bundle.generation.eos_token_ids == (bundle.tokenizer.convert_tokens_to_ids("<|im_end|>"),)


def test_mtp_reference_is_causal_and_drafts_the_token_after_next():
    model = _hf(DEMO)
    mtp = load_mtp_reference(model, DEMO)
    ids, answer = Encoder(build_tokenizer()).encode(heldout_questions(20)["sort"])
    logits = mtp.logits(model, ids)
    mask = answer[:, 2:]
    hits = (logits[:, :-1].argmax(-1) == ids[:, 2:])[mask].float().mean().item()
    assert hits >= 0.8  # the draft head predicts the answer's token after next
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 200
    assert torch.allclose(mtp.logits(model, changed)[:, :-1], logits[:, :-1], atol=1e-5)  # causal


def test_heldout_questions_are_stable_distinct_and_never_trained_on():
    small, large = heldout_questions(50), heldout_questions(200)
    for task in TASKS:
        assert small[task] == large[task][:50]
        assert len({ex.question for ex in large[task]}) == 200
    trainer = DemoTrainer(Args(size=TINY, batch_size=256, plot=None, progress=False))
    excluded = excluded_questions(200, 100)
    assert {ex.question for exs in large.values() for ex in exs} <= excluded
    for _ in range(20):
        assert not any(ex.question in excluded for ex in trainer.sample_batch())


def test_tiny_training_run_writes_a_loadable_checkpoint_with_mtp(tmp_path):
    out = tmp_path / "ckpt"
    assert main(["--tiny", "--steps", "3", "--eval-every", "2", "--out", str(out), "--plot", str(tmp_path / "loss.png"),
                 "--no-progress"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "train_log.csv"):
        assert (out / name).is_file(), name
    assert (tmp_path / "loss.png").stat().st_size > 0
    _assert_mtp_layout(out)
    model = _hf(out)
    mtp = load_mtp_reference(model, out)
    ids, _ = Encoder(build_tokenizer()).encode(QUESTIONS[:3])
    assert mtp.logits(model, ids).shape == (3, ids.shape[1] - 1, model.config.vocab_size)
    assert model.generate(ids[:1, :10], max_new_tokens=2, do_sample=False).shape == (1, 12)
    from xdeepserve.model.loader import load_model

    assert load_model(out).config.num_mtp_layers == 1


def test_the_demo_checkpoint_ships_with_the_package():
    # it is the default model of `xds serve` and `make demo`: its absence must fail, not skip
    from xdeepserve.cli import demo_model_dir

    assert demo_model_dir() == DEMO
    assert (DEMO / "model.safetensors").is_file() and (DEMO / "tokenizer.json").is_file()
