"""Greedy parity against HF transformers, with the numerical-tie rule of the brief (§4)."""

from __future__ import annotations

import torch

TIE_TOLERANCE = 1e-4


def hf_reference(hf_model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """HF greedy continuation that never stops early (EOS is an ordinary token, as with ignore_eos)."""
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt) :].tolist()


def check_greedy(hf_model, prompt: list[int], ours: list[int], reference: list[int]) -> str:
    """'equal', or 'tie@k' when the first difference is a numerical tie; raises AssertionError otherwise."""
    assert len(ours) == len(reference), f"length {len(ours)} != reference {len(reference)}"
    k = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), None)
    if k is None:
        return "equal"
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt + reference[:k]])).logits[0, -1].float()
    top2 = logits.topk(2)
    gap = float(top2.values[0] - top2.values[1])
    assert gap <= TIE_TOLERANCE and ours[k] in top2.indices.tolist(), (
        f"first difference at output step {k}: ours {ours[k]}, reference {reference[k]}, "
        f"reference top-2 logit gap {gap:.3g} > {TIE_TOLERANCE} (not a tie)"
    )
    return f"tie@{k}"
