"""MTP speculative decoding on the demo model: acceptance, tokens per step and throughput, in one run.

The same held-out questions (``xdeepserve.train_demo.heldout_questions``, chat template, greedy) go
through the offline engine twice, with the checkpoint's MTP module as a one-token draft head and
without it. Prints the draft acceptance rate, tokens per verify step, overall throughput and decode
throughput (tokens produced in decode-only steps over their time) of both runs, and checks that the
answers are identical, at each batch size. Last line: ``mtp/no-mtp decode throughput ratio (batch B): X.XX``.

    python benchmarks/mtp_speedup.py [--model DIR] [--per-task 200] [--batch 1,1000]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from xdeepserve.engine.llm import LLM
from xdeepserve.engine.request import SamplingParams
from xdeepserve.train_demo import DEFAULT_OUT, TASKS, heldout_questions


def run(model: str, prompts: list[list[int]], mtp: bool, max_num_seqs: int, max_tokens: int):
    """Drive the engine core step by step, timing each step; a step is a decode step when every
    request in it computes one known token (plus drafts being verified)."""
    budget = max(2048, sum(map(len, prompts)))  # a batch's prompts prefill in one step, then it decodes
    llm = LLM(model, mtp=mtp, max_model_len=512, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
              kv_cache_memory_bytes=256 << 20)
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    llm.generate(prompts[:4], sp)  # warm-up (compiles the CPU kernel on first use)
    core = llm.core
    core.runner.spec_proposed = core.runner.spec_accepted = 0
    for i, p in enumerate(prompts):
        core.add_request(f"q{i}", p, sp)
    tokens: dict[str, list[int]] = {f"q{i}": [] for i in range(len(prompts))}
    t = {"decode": 0.0, "other": 0.0}
    n = {"decode": 0, "other": 0}
    steps = {"decode": 0, "other": 0}
    start = time.perf_counter()
    while core.has_work():
        pending = list(core.scheduler.running)
        admits = core.scheduler.waiting and len(pending) < max_num_seqs  # a prompt would join this step
        decode = bool(pending) and not admits and all(r.num_tokens - r.num_computed_tokens == 1 for r in pending)
        t0 = time.perf_counter()
        outs = core.step()
        kind = "decode" if decode else "other"
        t[kind] += time.perf_counter() - t0
        steps[kind] += 1
        for o in outs:
            tokens[o.request_id] += o.new_token_ids
            n[kind] += len(o.new_token_ids)
    wall = time.perf_counter() - start
    return wall, [tokens[f"q{i}"] for i in range(len(prompts))], core.stats(), t, n, steps
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_OUT))
    ap.add_argument("--per-task", type=int, default=200)
    ap.add_argument("--batch", default="1,1000", help="comma-separated max_num_seqs values (1: one request at a time)")
    ap.add_argument("--latency-questions", type=int, default=50, help="questions for the batch-1 run")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    questions = heldout_questions(args.per_task)
    from xdeepserve.model.loader import load_tokenizer

    tok = load_tokenizer(args.model)
    examples = [ex for task in TASKS for ex in questions[task]]
    prompts = [
        tok.encode(
            tok.apply_chat_template([{"role": "user", "content": ex.question}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )
        for ex in examples
    ]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"{len(prompts)} questions ({args.per_task} per task), greedy")
    tok = load_tokenizer(args.model)
    last = ""
    for batch in (int(b) for b in args.batch.split(",")):
        subset = prompts if batch > 1 else prompts[: args.latency_questions]
        base = run(args.model, subset, False, batch, args.max_tokens)
        ours = run(args.model, subset, True, batch, args.max_tokens)
        print(f"\nbatch {batch} ({len(subset)} questions)")
        print(f"{'run':<8}{'wall s':>8}{'tokens':>8}{'tok/s':>8}{'decode steps':>14}{'decode s':>10}{'decode tok/s':>14}")
        for name, (wall, toks, _, t, n, steps) in (("no MTP", base), ("MTP", ours)):
            total = sum(map(len, toks))
            print(f"{name:<8}{wall:>8.2f}{total:>8}{total / wall:>8.1f}{steps['decode']:>14}{t['decode']:>10.2f}"
                  f"{n['decode'] / max(t['decode'], 1e-9):>14.1f}")
        st = ours[2]
        rate = st.spec_accepted_tokens / max(st.spec_draft_tokens, 1)
        same = sum(a == b for a, b in zip(base[1], ours[1]))
        ex = examples[: len(subset)]
        correct = sum(tok.decode(o, skip_special_tokens=True).strip() == e.answer for o, e in zip(ours[1], ex))
        print(f"drafts verified {st.spec_draft_tokens}, accepted {st.spec_accepted_tokens} "
              f"(acceptance {rate:.3f}; {1 + rate:.2f} tokens per verify step)")
        print(f"answers identical with and without MTP: {same}/{len(subset)}; exact-match correct: {correct}/{len(subset)}")
        overall = (sum(map(len, ours[1])) / ours[0]) / (sum(map(len, base[1])) / base[0])
        decode = [r[4]["decode"] / max(r[3]["decode"], 1e-9) for r in (base, ours)]
        print(f"overall throughput ratio (prefill included): {overall:.2f}")
        last = f"mtp/no-mtp decode throughput ratio (batch {batch}): {decode[1] / decode[0]:.2f}"
        print(last)


if __name__ == "__main__":
    main()
