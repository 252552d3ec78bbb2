"""Sampling: greedy, truncation, per-request seeds independent of the batch, logprobs."""

from __future__ import annotations

import math

import torch

from xdeepserve.engine.request import Request, SamplingParams
from xdeepserve.engine.sampler import sample


def _reqs(*params: SamplingParams) -> list[Request]:
    return [Request(f"r{i}", [1], p) for i, p in enumerate(params)]


def test_greedy_takes_the_argmax():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    tokens, _ = sample(logits, _reqs(*[SamplingParams(temperature=0.0)] * 4))
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_1_and_tiny_top_p_reduce_to_greedy():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    tokens, _ = sample(
        logits, _reqs(SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=2.0, top_p=1e-6),
                      SamplingParams(temperature=0.0))
    )
    assert tokens == logits.argmax(-1).tolist()


def test_seeded_request_draws_the_same_tokens_whatever_else_is_in_the_batch():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(2)).repeat(3, 1)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = [sample(logits[:1], _reqs(seeded))[0][0] for _ in range(1)]
    r_alone = _reqs(seeded)[0]
    seq_alone = [sample(logits[:1], [r_alone])[0][0] for _ in range(20)]
    r_batched = _reqs(seeded)[0]
    others = _reqs(SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9))
    seq_batched = [sample(logits, [others[0], r_batched, others[1]])[0][1] for _ in range(20)]
    assert seq_alone == seq_batched and alone[0] == seq_alone[0]
    assert len(set(seq_alone)) > 1  # it really samples


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(4000, 1)
    tokens, _ = sample(logits, _reqs(*[SamplingParams(temperature=1.0)] * 4000))
    freq = torch.bincount(torch.tensor(tokens), minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_logprobs_are_the_models_log_softmax_with_top_alternatives():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(3))
    tokens, lps = sample(logits, _reqs(SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0)))
    ref = torch.log_softmax(logits[0], -1)
    assert lps[1] is None
    assert math.isclose(lps[0].logprob, float(ref[tokens[0]]), rel_tol=1e-5)
    assert [t for t, _ in lps[0].top] == ref.topk(3).indices.tolist()
