"""``xds bench``: an online load generator against a running OpenAI-compatible server.

``concurrency`` workers keep that many streams open until ``num_requests`` requests have been sent. Prompts
are random token ids (fixed seed) sent to ``/v1/completions`` with ``ignore_eos``, so every request has
exactly the input and output lengths drawn for it and two runs with the same seed offer the same load.
Latencies are measured by the client, as a user would see them:

- TTFT: request sent -> first streamed chunk with a choice;
- TPOT: (end-to-end - TTFT) / (output tokens - 1), per request;
- output token throughput: all output tokens / wall time of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import openai
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class RequestSpec:
    prompt_token_ids: list[int]
    max_tokens: int


@dataclass(frozen=True)
class RequestResult:
    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class BenchResult:
    base_url: str
    model: str
    num_requests: int
    concurrency: int
    completed: int
    errors: int
    duration_s: float
    input_tokens: int
    output_tokens: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    error_messages: tuple[str, ...] = ()  # distinct messages, most frequent first

    @property
    def request_throughput(self) -> float:
        """Completed requests per second."""
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def output_throughput(self) -> float:
        """Output tokens per second, over the whole run."""
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0


def make_requests(num_requests: int, input_len_range: tuple[int, int], output_len_range: tuple[int, int],
                  vocab_size: int, seed: int) -> list[RequestSpec]:
    """Random token-id prompts; lengths uniform in the inclusive ranges. Deterministic in ``seed``."""
    rng = random.Random(seed)
    specs = []
    for _ in range(num_requests):
        input_len = rng.randint(*input_len_range)
        specs.append(RequestSpec(prompt_token_ids=[rng.randrange(vocab_size) for _ in range(input_len)],
                                 max_tokens=rng.randint(*output_len_range)))
    return specs


async def _send(client: openai.AsyncOpenAI, model: str, spec: RequestSpec) -> RequestResult:
    start = time.perf_counter()
    ttft_s = None
    output_tokens = 0
    try:
        stream = await client.completions.create(
            model=model, prompt=spec.prompt_token_ids, max_tokens=spec.max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices and ttft_s is None:
                ttft_s = time.perf_counter() - start
            if chunk.usage is not None:
                output_tokens = chunk.usage.completion_tokens
    except (openai.APIError, OSError) as exc:
        return RequestResult(ok=False, e2e_s=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    return RequestResult(ok=True, e2e_s=time.perf_counter() - start, ttft_s=ttft_s, output_tokens=output_tokens)


async def _served_model(client: openai.AsyncOpenAI, model: str | None) -> tuple[str, int | None, int | None]:
    """(model id, vocab size, max model len) from /v1/models; the sizes are xdeepserve extensions."""
    cards = (await client.models.list()).data
    card = next((c for c in cards if c.id == model), None) if model else (cards[0] if cards else None)
    if card is None:
        raise ValueError(f"model {model!r} is not served at {client.base_url}; it serves "
                         f"{', '.join(c.id for c in cards) or 'nothing'}")
    extra = card.model_extra or {}
    return card.id, extra.get("vocab_size"), extra.get("max_model_len")


async def closed_loop(client: openai.AsyncOpenAI, model: str, specs: list[RequestSpec], concurrency: int
                      ) -> tuple[list[RequestResult], float]:
    """Send ``specs`` in order from ``concurrency`` streaming clients, each starting its next request when
    the previous one ends; returns the results and the wall time."""
    queue = list(reversed(specs))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue:
            results.append(await _send(client, model, queue.pop()))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    return results, time.perf_counter() - start


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


async def run_bench_async(base_url: str, model: str | None, num_requests: int, concurrency: int,
                          input_len_range: tuple[int, int], output_len_range: tuple[int, int], seed: int = 0,
                          *, vocab_size: int | None = None, timeout_s: float = 600.0) -> BenchResult:
    client = openai.AsyncOpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key="unused", max_retries=0,
                                timeout=timeout_s)
    try:
        model, served_vocab, max_model_len = await _served_model(client, model)
        vocab_size = vocab_size or served_vocab
        if vocab_size is None:
            raise ValueError("the server does not report vocab_size; pass it explicitly (--vocab-size)")
        if max_model_len is not None and input_len_range[1] + output_len_range[1] > max_model_len:
            raise ValueError(f"input ({input_len_range[1]}) + output ({output_len_range[1]}) tokens exceed the "
                             f"server's max_model_len ({max_model_len})")
        specs = make_requests(num_requests, input_len_range, output_len_range, vocab_size, seed)
        results, duration_s = await closed_loop(client, model, specs, concurrency)
    finally:
        await client.close()

    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
    errors = Counter(r.error for r in results if not r.ok)
    return BenchResult(
        base_url=base_url, model=model, num_requests=num_requests, concurrency=concurrency, completed=len(ok),
        errors=len(results) - len(ok), duration_s=duration_s,
        input_tokens=sum(len(s.prompt_token_ids) for s in specs),
        output_tokens=sum(r.output_tokens for r in ok),
        ttft_p50_ms=_percentile_ms(ttfts, 50), ttft_p99_ms=_percentile_ms(ttfts, 99),
        tpot_p50_ms=_percentile_ms(tpots, 50), tpot_p99_ms=_percentile_ms(tpots, 99),
        error_messages=tuple(msg for msg, _ in errors.most_common()),
    )


def run_bench(base_url: str, model: str | None, num_requests: int, concurrency: int,
              input_len_range: tuple[int, int], output_len_range: tuple[int, int], seed: int = 0,
              **kwargs) -> BenchResult:
    """Run the load (blocking) and return the measurements; see the module docstring for definitions."""
    return asyncio.run(run_bench_async(base_url, model, num_requests, concurrency, input_len_range,
                                       output_len_range, seed, **kwargs))


def print_result(result: BenchResult, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"xds bench: {result.model} at {result.base_url}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests (ok / sent)", f"{result.completed} / {result.num_requests}"),
        ("errors", str(result.errors)),
        ("concurrency", str(result.concurrency)),
        ("duration (s)", f"{result.duration_s:.2f}"),
        ("input tokens", str(result.input_tokens)),
        ("output tokens", str(result.output_tokens)),
        ("request throughput (req/s)", f"{result.request_throughput:.2f}"),
        ("output throughput (tok/s)", f"{result.output_throughput:.1f}"),
        ("TTFT p50 / p99 (ms)", f"{result.ttft_p50_ms:.1f} / {result.ttft_p99_ms:.1f}"),
        ("TPOT p50 / p99 (ms)", f"{result.tpot_p50_ms:.1f} / {result.tpot_p99_ms:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for message in result.error_messages[:5]:
        console.print(f"[red]error:[/red] {message}")
    console.print(
        f"bench: {result.completed}/{result.num_requests} ok, {result.output_throughput:.1f} output tok/s, "
        f"{result.request_throughput:.2f} req/s, TTFT p50 {result.ttft_p50_ms:.1f} ms, "
        f"TPOT p50 {result.tpot_p50_ms:.1f} ms (client host {platform.node()}, concurrency {result.concurrency})",
        soft_wrap=True,  # one greppable line
    )


def _length_range(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '64:256' -> (64, 256)."""
    lo, _, hi = text.partition(":")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return low, high


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (without /v1)")
    p.add_argument("--model", default=None, help="served model name (default: the server's first model)")
    p.add_argument("--num-requests", type=int, default=64, help="requests in total")
    p.add_argument("--concurrency", type=int, default=8, help="streams open at once")
    p.add_argument("--input-len", type=_length_range, default=(64, 256), help="prompt tokens: N or MIN:MAX")
    p.add_argument("--output-len", type=_length_range, default=(32, 128), help="output tokens: N or MIN:MAX")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts and lengths")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="draw prompt token ids below this (default: the vocab_size /v1/models reports)")


def bench_main(args: argparse.Namespace) -> int:
    result = run_bench(args.base_url, args.model, args.num_requests, args.concurrency, args.input_len,
                       args.output_len, args.seed, vocab_size=args.vocab_size)
    print_result(result)
    return 0 if result.errors == 0 else 1
