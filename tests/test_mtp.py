"""DeepSeek MTP: checkpoint layout, the module against a reference built from HF's layers, and
speculative decoding in the engine (greedy output identical with and without drafts)."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors import safe_open

from xdeepserve.engine.llm import LLM
from xdeepserve.engine.request import SamplingParams
from xdeepserve.model.builder import hf_classes, make_model
from xdeepserve.model.loader import CheckpointError, load_model

from .pd_workers import sequence_meta


@pytest.fixture(scope="module")
def mtp_checkpoint(tmp_path_factory):
    return make_model("deepseek_v3", tmp_path_factory.mktemp("ds-mtp"), seed=0, mtp=True)


def test_checkpoint_layout_and_loading(mtp_checkpoint, tiny_checkpoint):
    with safe_open(str(mtp_checkpoint / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    n = 3  # tiny deepseek_v3 has 3 decoder layers: the MTP module is layer 3
    for own in ("enorm", "hnorm", "eh_proj", "embed_tokens", "shared_head.norm", "shared_head.head"):
        assert f"model.layers.{n}.{own}.weight" in names
    assert f"model.layers.{n}.self_attn.kv_a_proj_with_mqa.weight" in names
    assert load_model(mtp_checkpoint, with_tokenizer=False).model.mtp is not None
    assert load_model(mtp_checkpoint, with_tokenizer=False, mtp=False).model.mtp is None
    # HF transformers loads the same directory (it ignores the MTP tensors)
    hf_classes("deepseek_v3")[1].from_pretrained(mtp_checkpoint)
    with pytest.raises(CheckpointError, match="no multi-token-prediction module"):
        load_model(tiny_checkpoint("deepseek_v3"), with_tokenizer=False, mtp=True)


def test_mtp_logits_match_a_reference_built_from_hf_layers(mtp_checkpoint):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

    hf = hf_classes("deepseek_v3")[1].from_pretrained(mtp_checkpoint).eval()
    cfg = hf.config
    n = cfg.num_hidden_layers
    with safe_open(str(mtp_checkpoint / "model.safetensors"), framework="pt") as f:
        w = {k[len(f"model.layers.{n}.") :]: f.get_tensor(k) for k in f.keys() if k.startswith(f"model.layers.{n}.")}
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=n).eval()
    layer.load_state_dict({k: v for k, v in w.items() if not k.startswith(("enorm", "hnorm", "eh_proj", "embed_tokens", "shared_head"))})

    def norm(weight):
        m = DeepseekV3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        m.weight.data.copy_(weight)
        return m

    ids = torch.randint(5, cfg.vocab_size, (30,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = hf.model(ids[None]).last_hidden_state[0]  # after the final norm
        x = torch.cat([norm(w["enorm.weight"])(w["embed_tokens.weight"][ids[1:]]), norm(w["hnorm.weight"])(h[:-1])], -1)
        x = (x @ w["eh_proj.weight"].T)[None]
        pos = torch.arange(len(ids) - 1)[None]
        out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=hf.model.rotary_emb(x, pos))
        out = out[0] if isinstance(out, tuple) else out
        ref = norm(w["shared_head.norm.weight"])(out[0]) @ w["shared_head.head.weight"].T

    bundle = load_model(mtp_checkpoint, max_positions=128, with_tokenizer=False)
    model, cfg_ours = bundle.model, bundle.config
    heads, width = cfg_ours.kv_cache_shape
    bs, t = 8, len(ids) - 1
    caches = [(torch.zeros(64, heads, width),) for _ in range(cfg_ours.num_layers + 1)]
    blocks = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    meta, mmeta = sequence_meta(0, len(ids), blocks, bs), sequence_meta(0, t, blocks, bs)
    with torch.no_grad():
        hidden = model(ids, meta, caches)
        ours = model.mtp.compute_logits(model.mtp(ids[1:], hidden[:t], mmeta, caches[-1]))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _workload(n: int, seed: int):
    rng = random.Random(seed)
    prompts = [[rng.randrange(5, 600) for _ in range(rng.randint(3, 70))] for _ in range(n)]
    params = [SamplingParams(max_tokens=rng.randint(4, 40), temperature=0.0, ignore_eos=True) for _ in prompts]
    return prompts, params


def _engine(path, mtp: bool, **kw):
    return LLM(str(path), mtp=mtp, max_model_len=256, max_num_seqs=8, max_num_batched_tokens=96, **kw)


def test_greedy_output_identical_with_and_without_mtp_under_preemption(mtp_checkpoint):
    prompts, params = _workload(20, 0)
    base = [o.token_ids for o in _engine(mtp_checkpoint, False, num_kv_blocks=20).generate(prompts, params)]
    llm = _engine(mtp_checkpoint, True, num_kv_blocks=20)  # 20 blocks for 8 sequences: preemption happens
    ours = [o.token_ids for o in llm.generate(prompts, params)]
    assert ours == base
    stats = llm.core.stats()
    assert stats.num_preemptions > 0
    assert stats.spec_draft_tokens > 0  # drafts were proposed and verified (random weights: few accepted)
    assert stats.generation_tokens == sum(len(t) for t in base)


@pytest.mark.parametrize("accuracy", [1.0, 0.5, 0.0])
def test_verification_accepts_exactly_the_right_drafts(mtp_checkpoint, accuracy):
    """The verify/accept path with drafts of known quality: an oracle proposer that knows the greedy
    continuation (from a run without MTP) and is right with the given probability."""
    prompts, params = _workload(12, 1)
    base = [o.token_ids for o in _engine(mtp_checkpoint, False).generate(prompts, params)]
    llm = _engine(mtp_checkpoint, True)
    runner = llm.core.runner
    truth = {}
    rng = random.Random(7)
    real_propose = runner._propose

    def oracle(sched, hidden, new_tokens):
        real_propose(sched, hidden, new_tokens)  # keep the MTP cache written as in real use
        drafts = {}
        for s in sched.scheduled:
            req = s.request
            got = new_tokens.get(req.request_id)
            if not got:
                continue
            ref = truth[tuple(req.prompt_token_ids)]
            k = len(req.output_token_ids) + len(got)  # index of the token after this step's last
            if k < len(ref):
                drafts[req.request_id] = [ref[k] if rng.random() < accuracy else (ref[k] + 1) % 600]
        return drafts

    truth.update({tuple(p): b for p, b in zip(prompts, base)})
    runner._propose = oracle
    ours = [o.token_ids for o in llm.generate(prompts, params)]
    assert ours == base
    stats = llm.core.stats()
    assert stats.spec_draft_tokens > 0
    rate = stats.spec_accepted_tokens / stats.spec_draft_tokens
    assert abs(rate - accuracy) < 0.15, rate
    if accuracy == 1.0:  # every decode step yields two tokens
        assert llm.core.num_steps < 0.7 * sum(len(b) for b in base) / 8 + 20
