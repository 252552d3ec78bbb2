"""Token sampling for a batch of requests with per-request parameters.

Greedy rows take the argmax. Other rows apply temperature, top-k and top-p, then sample with the
exponential-race trick (``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``). A request with a seed
draws its noise from its own generator, so its tokens do not depend on what else is in the batch.
Logprobs are those of the model's distribution (before temperature and truncation), as in the OpenAI API.
"""

from __future__ import annotations

import torch

from .request import Request, TokenLogprob


def sample(logits: torch.Tensor, requests: list[Request]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [B, V] fp32 (any device) -> (token ids, logprobs or None) per row."""
    b = logits.shape[0]
    params = [r.sampling for r in requests]
    if all(p.greedy for p in params):
        tokens = logits.argmax(dim=-1)
    else:
        tokens = _sample_mixed(logits, requests)
    token_list = tokens.tolist()
    logprobs: list[TokenLogprob | None] = [None] * b
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    if want:
        lp = torch.log_softmax(logits[want], dim=-1).cpu()
        for row, i in enumerate(want):
            k = params[i].logprobs or 0
            top = lp[row].topk(k) if k else None
            logprobs[i] = TokenLogprob(
                token_id=token_list[i],
                logprob=float(lp[row, token_list[i]]),
                top=tuple(zip(top.indices.tolist(), top.values.tolist())) if top is not None else (),
            )
    return token_list, logprobs


def _sample_mixed(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    params = [r.sampling for r in requests]
    dev = logits.device
    greedy = torch.tensor([p.greedy for p in params], device=dev)
    temp = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=dev)
    x = logits / temp.unsqueeze(1)
    top_k = [p.top_k for p in params]
    if any(k > 0 for k in top_k):
        v = x.shape[1]
        k_t = torch.tensor([k if 0 < k < v else v for k in top_k], device=dev)
        kth = x.sort(dim=-1, descending=True).values.gather(1, (k_t - 1).unsqueeze(1))
        x = x.masked_fill(x < kth, float("-inf"))
    probs = x.softmax(dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=dev)
    if bool((top_p < 1.0).any()):
        sp, idx = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(dim=-1)
        drop_sorted = (cum - sp) > top_p.unsqueeze(1)  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter_(1, idx, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    noise = torch.empty_like(probs).exponential_()
    for i, r in enumerate(requests):
        if r.generator is not None:
            noise[i] = torch.empty(probs.shape[1]).exponential_(generator=r.generator).to(dev)
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), sampled)
