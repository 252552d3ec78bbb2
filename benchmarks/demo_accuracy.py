"""Exact-match accuracy of the trained demo model, served by ``xds serve``, per task.

Starts ``xds serve --model DIR`` on 127.0.0.1 (or uses ``--base-url``), sends the held-out questions of
``xdeepserve.train_demo`` (their own seed; never trained on) through the official ``openai`` client as
concurrent chat completions at temperature 0, and compares each answer with the expected one exactly.
The baseline in the same run is transformers' forward pass on the same checkpoint (teacher-forced greedy
exact match, which equals what greedy decoding would produce), so a gap isolates the serving path.

    .venv/bin/python benchmarks/demo_accuracy.py [--model DIR] [--n-per-task 200] [--base-url URL]

Prints a table and ends with ``demo accuracy (min over tasks): X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

import torch
from openai import AsyncOpenAI

from xdeepserve.api.launch import ServerProcess
from xdeepserve.train_demo import DEFAULT_OUT, TASKS, Encoder, Example, heldout_questions


async def ask_all(base_url: str, examples: list[Example], concurrency: int, max_tokens: int) -> list[str]:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="not-needed", timeout=120)
    model = (await client.models.list()).data[0].id
    gate = asyncio.Semaphore(concurrency)

    async def ask(ex: Example) -> str:
        async with gate:
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": ex.question}], temperature=0.0,
                max_tokens=max_tokens,
            )
            return r.choices[0].message.content or ""

    try:
        return await asyncio.gather(*[ask(ex) for ex in examples])
    finally:
        await client.close()


@torch.no_grad()
def hf_teacher_forced(model_dir: Path, by_task: dict[str, list[Example]]) -> dict[str, float]:
    """Per task: the fraction of questions whose every answer token (and the closing ``<|im_end|>``) is
    transformers' argmax given the correct prefix, i.e. what HF greedy decoding answers correctly."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from xdeepserve.train_demo import build_tokenizer

    hf_logging.set_verbosity_error()  # the MTP tensors are "unexpected keys" to transformers, by design
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    enc = Encoder(build_tokenizer())
    out = {}
    for task, exs in by_task.items():
        right = 0
        for i in range(0, len(exs), 128):
            ids, answer = enc.encode(exs[i : i + 128])
            pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
            right += ((pred == ids[:, 1:]) | ~answer[:, 1:]).all(dim=1).sum().item()
        out[task] = right / len(exs)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_OUT, help=f"checkpoint directory (default {DEFAULT_OUT})")
    p.add_argument("--base-url", default=None, help="use a running server instead of starting one")
    p.add_argument("--n-per-task", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--no-hf-baseline", action="store_true")
    p.add_argument("--show-errors", type=int, default=3, help="wrong answers to print per task")
    args = p.parse_args(argv)

    by_task = heldout_questions(args.n_per_task)
    examples = [ex for task in TASKS for ex in by_task[task]]
    server = None
    if args.base_url is None:
        server = ServerProcess(["--model", str(args.model), "--max-model-len", "256", "--log-level", "warning"])
        server.start()
    base_url = args.base_url or server.base_url
    try:
        t0 = time.perf_counter()
        answers = asyncio.run(ask_all(base_url, examples, args.concurrency, args.max_tokens))
        wall_s = time.perf_counter() - t0
    finally:
        if server is not None:
            server.stop()
    hf = None if args.no_hf_baseline or args.base_url else hf_teacher_forced(args.model, by_task)

    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; server {base_url}; {len(examples)} requests in {wall_s:.1f} s "
          f"(concurrency {args.concurrency})")
    print(f"{'task':<9} {'n':>5} {'served exact':>13}" + (f" {'HF greedy':>10}" if hf else ""))
    accuracy = {}
    for task in TASKS:
        got = [(ex, a) for ex, a in zip(examples, answers) if ex.task == task]
        right = sum(a.strip() == ex.answer for ex, a in got)
        accuracy[task] = right / len(got)
        print(f"{task:<9} {len(got):>5} {accuracy[task]:>13.3f}" + (f" {hf[task]:>10.3f}" if hf else ""))
        for ex, a in [(ex, a) for ex, a in got if a.strip() != ex.answer][: args.show_errors]:
            print(f"          wrong: {ex.question!r} -> {a!r} (expected {ex.answer!r})")
    print(f"demo accuracy (min over tasks): {min(accuracy.values()):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
