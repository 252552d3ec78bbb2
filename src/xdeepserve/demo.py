"""``make demo``: start the server, chat with it through the official ``openai`` client, show metrics.

The built-in demo checkpoint is a tiny random-weight Qwen3-MoE (created on first use), so its answers
are gibberish by design: the demo shows the serving path — streaming, concurrency, metrics, clean
shutdown — not model quality.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
from openai import AsyncOpenAI
from rich.console import Console
from rich.table import Table

from .api.launch import ServerProcess
from .cli import demo_model_dir

QUESTIONS = [
    "What is the capital of France?",
    "Add 17 and 25.",
    "Tell me a story about a robot who learns to paint.",
    "Reverse the word hello.",
]


async def _chat(client: AsyncOpenAI, model: str, question: str) -> tuple[str, float, int]:
    t0 = time.perf_counter()
    first = None
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=32, temperature=0.7, seed=0,
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


async def _run(base_url: str, console: Console) -> None:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="not-needed")
    model = (await client.models.list()).data[0].id
    console.print(f"serving [bold]{model}[/bold] at {base_url}; {len(QUESTIONS)} concurrent streaming chats\n")
    results = await asyncio.gather(*[_chat(client, model, q) for q in QUESTIONS])
    table = Table(title="answers (random weights: gibberish is expected)")
    for col in ("question", "answer", "TTFT ms", "tokens"):
        table.add_column(col)
    for q, (text, ttft, n) in zip(QUESTIONS, results):
        table.add_row(q, repr(text[:60]), f"{ttft * 1e3:.0f}", str(n))
    console.print(table)
    metrics = httpx.get(f"{base_url}/metrics", timeout=5).text
    summary = Table(title="/metrics summary")
    summary.add_column("metric")
    summary.add_column("value")
    for name in ("xds_prompt_tokens_total", "xds_generation_tokens_total", "xds_time_to_first_token_seconds_sum",
                 "xds_time_to_first_token_seconds_count", "xds_num_requests_running", "xds_kv_cache_usage_ratio"):
        value = _metric(metrics, name)
        summary.add_row(name, "-" if value is None else f"{value:g}")
    console.print(summary)
    await client.close()


def main() -> int:
    console = Console()
    model = demo_model_dir()
    with console.status("starting xds serve …"):
        server = ServerProcess(["--model", str(model), "--max-model-len", "1024", "--log-level", "warning"]).start()
    try:
        asyncio.run(_run(server.base_url, console))
    finally:
        code = server.stop()
    console.print(f"server stopped cleanly (exit code {code})" if code == 0 else f"server exit code {code}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
