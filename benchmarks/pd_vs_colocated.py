"""Disaggregated prefill-decode vs colocated serving, same workload, same number of processes.

Both deployments run through `xds launch` with 1 frontend, 1 job executor and two engine DP groups (each
with its own output process): colocated = two DP groups that prefill and decode their own requests;
disaggregated = one prefill group + one decode group, KV pulled over XCCL. The workload mixes short
prompts with long outputs and long prompts with short outputs, sent by a fixed number of concurrent
streaming clients (the official openai client), in the same order for both. Prints TTFT and TPOT
p50/p99 and ends with ``pd/colocated tpot p99 ratio: X.XX`` (below 1: disaggregation protects decoding
from prefill interference).

    python benchmarks/pd_vs_colocated.py [--requests 96] [--concurrency 12]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import textwrap
from pathlib import Path

import openai
from rich.console import Console
from rich.table import Table

from xdeepserve.api.launch import free_port
from xdeepserve.bench.client import RequestResult, RequestSpec, _percentile_ms, closed_loop
from xdeepserve.cli import DEMO_MODEL
from xdeepserve.pd.launch import Deployment

ENGINE = "{max_model_len: 256, max_num_batched_tokens: 256, num_kv_blocks: 512}"


def workload(n: int, seed: int, vocab: int = 256) -> list[RequestSpec]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.3:  # long prompt, short answer
            prompt_len, max_tokens = rng.randint(150, 200), rng.randint(8, 24)
        else:  # short prompt, long answer
            prompt_len, max_tokens = rng.randint(12, 32), rng.randint(48, 96)
        out.append(RequestSpec([rng.randrange(3, vocab) for _ in range(prompt_len)], max_tokens))
    return out


def spec_text(kind: str, port: int) -> str:
    body = ("colocated:\n  - {dp_groups: 2}\n" if kind == "colocated"
            else "prefill:\n  - {dp_groups: 1}\ndecode:\n  - {dp_groups: 1}\n")
    return textwrap.dedent(f"""\
        model: {DEMO_MODEL}
        engine: {ENGINE}
        frontends: {{count: 1, port: {port}}}
        executors: {{count: 1}}
        """) + body


async def drive(base_url: str, specs: list[RequestSpec], concurrency: int) -> tuple[list[RequestResult], float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    try:
        model = (await client.models.list()).data[0].id
        return await closed_loop(client, model, specs, concurrency)
    finally:
        await client.close()


def measure(kind: str, specs: list[RequestSpec], concurrency: int, workdir: Path) -> dict:
    path = workdir / f"{kind}.yaml"
    path.write_text(spec_text(kind, free_port()))
    with Deployment(path, log_dir=workdir / f"{kind}-logs") as dep:
        asyncio.run(drive(dep.base_url, specs[:concurrency], concurrency))  # warm-up (not measured)
        results, duration = asyncio.run(drive(dep.base_url, specs, concurrency))
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
    return {"completed": len(ok), "errors": len(results) - len(ok), "duration_s": duration,
            "output_tokens": sum(r.output_tokens for r in ok),
            "ttft_p50": _percentile_ms(ttft, 50), "ttft_p99": _percentile_ms(ttft, 99),
            "tpot_p50": _percentile_ms(tpot, 50), "tpot_p99": _percentile_ms(tpot, 99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    specs = workload(args.requests, args.seed)
    console = Console(width=120)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="xds-pd-bench-") as tmp:
        for kind in ("colocated", "pd"):
            console.print(f"[bold]{kind}[/]: starting the deployment and sending {len(specs)} requests ...")
            rows[kind] = measure(kind, specs, args.concurrency, Path(tmp))
    table = Table(title=f"{args.requests} requests (30 % long prompts), {args.concurrency} concurrent streams")
    for col in ("deployment", "completed", "errors", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
                "TPOT p99 ms"):
        table.add_column(col, justify="right")
    for kind, r in rows.items():
        table.add_row(kind, str(r["completed"]), str(r["errors"]), f"{r['output_tokens'] / r['duration_s']:.0f}",
                      f"{r['ttft_p50']:.0f}", f"{r['ttft_p99']:.0f}", f"{r['tpot_p50']:.1f}", f"{r['tpot_p99']:.1f}")
    console.print(table)
    print(f"pd/colocated tpot p99 ratio: {rows['pd']['tpot_p99'] / rows['colocated']['tpot_p99']:.2f}")


if __name__ == "__main__":
    main()
