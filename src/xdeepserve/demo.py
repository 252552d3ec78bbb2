"""``make demo``: start a disaggregated deployment, ask the demo model checkable questions through the
official ``openai`` client (streaming, concurrently), check the answers, show metrics, shut down.

The deployment (``xds launch``'s processes): 2 API frontends sharing one port, 2 job executors, 2 prefill
instances (short / long prompts), 1 decode instance with 2 DP groups; every DP group has its own output
process, and the KV of each request moves from prefill to decode over XCCL. ``--colocated`` runs the
single-process ``xds serve`` instead.

The built-in demo checkpoint is a small DeepSeek-V3-architecture model (MLA, MoE with a shared expert,
an MTP module) trained on arithmetic and string tasks (:mod:`xdeepserve.train_demo`), so its answers can
be checked; greedy requests are served with MTP speculative decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import AsyncOpenAI
from rich.console import Console
from rich.table import Table

from .api.launch import ServerProcess, free_port
from .cli import demo_model_dir
from .train_demo import TASKS, heldout_questions


def _questions(seed: int = 0) -> list[tuple[str, str]]:
    """Two held-out questions per task (never seen in training), with their exact answers."""
    rng = random.Random(seed)
    by_task = heldout_questions(50)
    return [(ex.question, ex.answer) for task in TASKS for ex in rng.sample(by_task[task], 2)]


async def _chat(client: AsyncOpenAI, model: str, question: str) -> tuple[str, float, int]:
    t0 = time.perf_counter()
    first = None
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0.0,
        stream=True, stream_options={"include_usage": True},
    )
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - t0
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return "".join(parts), first or 0.0, tokens


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _run(base_url: str, console: Console) -> int:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="not-needed")
    model = (await client.models.list()).data[0].id
    questions = _questions()
    console.print(f"serving [bold]{model}[/bold] at {base_url}; {len(questions)} concurrent streaming chats\n")
    results = await asyncio.gather(*[_chat(client, model, q) for q, _ in questions])
    table = Table(title="answers (held-out questions, greedy)")
    for col in ("question", "answer", "expected", "ok", "TTFT ms", "tokens"):
        table.add_column(col)
    correct = 0
    for (q, expected), (text, ttft, n) in zip(questions, results):
        ok = text.strip() == expected
        correct += ok
        table.add_row(q, text.strip(), expected, "✓" if ok else "✗", f"{ttft * 1e3:.0f}", str(n))
    console.print(table)
    console.print(f"{correct}/{len(questions)} correct\n")
    await asyncio.sleep(1.0)  # engine statistics reach a PD frontend with the executors' heartbeats
    metrics = httpx.get(f"{base_url}/metrics", timeout=5).text
    summary = Table(title="/metrics summary (request counters: the frontend that answered the scrape)")
    summary.add_column("metric")
    summary.add_column("value")
    for name in ("xds_prompt_tokens_total", "xds_generation_tokens_total", "xds_time_to_first_token_seconds_sum",
                 "xds_time_to_first_token_seconds_count", "xds_num_requests_running", "xds_kv_cache_usage_ratio",
                 "xds_spec_draft_tokens_total", "xds_spec_accepted_tokens_total"):
        value = _metric(metrics, name)
        summary.add_row(name, "-" if value is None else f"{value:g}")
    console.print(summary)
    await client.close()
    return correct


DEMO_DEPLOYMENT = """\
model: demo
engine: {{max_model_len: 512, num_kv_blocks: 512}}
frontends: {{count: 2, port: {port}}}
executors: {{count: 2}}
prefill:
  - {{dp_groups: 1, prompts: short}}
  - {{dp_groups: 1, prompts: long}}
decode:
  - {{dp_groups: 2}}
long_prompt_tokens: 128
"""


def run_colocated(console: Console) -> int:
    with console.status("starting xds serve …"):
        server = ServerProcess(["--model", str(demo_model_dir()), "--max-model-len", "1024", "--log-level",
                                "warning"]).start()
    try:
        asyncio.run(_run(server.base_url, console))
    finally:
        code = server.stop()
    console.print(f"server stopped cleanly (exit code {code})" if code == 0 else f"server exit code {code}")
    return 0 if code == 0 else 1


def run_disaggregated(console: Console) -> int:
    from .pd.launch import Deployment

    with tempfile.TemporaryDirectory(prefix="xds-demo-") as tmp:
        path = Path(tmp) / "deploy.yaml"
        path.write_text(DEMO_DEPLOYMENT.format(port=free_port()))
        dep = Deployment(path, log_dir=Path(tmp) / "logs")
        with console.status(f"starting {len(dep.spec.processes())} processes (xds launch) …"):
            dep.start()
        try:
            layout = Table(title="deployment (each DP group also has its own output process)")
            layout.add_column("process")
            layout.add_column("pid")
            for name, child in dep.children.items():
                layout.add_row(name, str(child.proc.pid))
            console.print(layout)
            correct = asyncio.run(_run(dep.base_url.removesuffix("/v1"), console))
        finally:
            dep.stop()
        console.print("deployment stopped")
    return 0 if correct > 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xdeepserve.demo")
    p.add_argument("--colocated", action="store_true", help="one xds serve process instead of the PD deployment")
    args = p.parse_args(argv)
    console = Console()
    return run_colocated(console) if args.colocated else run_disaggregated(console)


if __name__ == "__main__":
    sys.exit(main())
