"""XCCL microbenchmarks on one machine, each against its baseline measured in the same run.

Point-to-point (the paper's Figure 5 sizes, 36 KB … 9 MB): one-way latency (half a ping-pong round trip)
between two processes through XCCL shared memory with 1 and 2 lanes, through torch.distributed gloo
send/recv, and through a ``multiprocessing`` pipe. Tables give p50 / p99 / max in microseconds and the
median bandwidth. The last line is ``xccl vs gloo p2p latency ratio (<=1MiB, median): X.XX`` (gloo's
median over XCCL's, geometric mean over the sizes up to 1 MiB, XCCL with its better lane count).

    python benchmarks/xccl_bench.py [--iters 200]
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing as mp
import platform
import time

import numpy as np
import torch

SIZES_KB = [36, 72, 144, 288, 576, 1152, 2304, 4608, 9216]


def _pingpong(rank: int, send, recv, buf_out: torch.Tensor, buf_in: torch.Tensor, iters: int) -> list[float]:
    """Rank 0 sends and waits for the echo; returns one-way latencies in seconds (rank 0 only)."""
    times = []
    for i in range(iters + 5):
        t = time.perf_counter()
        if rank == 0:
            send(buf_out, i)
            recv(buf_in, i)
        else:
            recv(buf_in, i)
            send(buf_out, i)
        if i >= 5:
            times.append((time.perf_counter() - t) / 2)
    return times


def _worker(kind: str, rank: int, port: int, lanes: int, sizes: list[int], iters: int, conn, results) -> None:
    torch.set_num_threads(1)
    out: dict[int, list[float]] = {}
    if kind == "xccl":
        from xdeepserve.xccl import XcclConfig, XcclGroup

        g = XcclGroup.init(rank, 2, store_addr=("127.0.0.1", port), host_id="bench",
                           config=XcclConfig(lanes=lanes, slots=4, slot_bytes=256 * 1024))
        peer = 1 - rank
        send = lambda t, i: g.send(t, peer, i)  # noqa: E731
        recv = lambda t, i: g.recv(t, peer, i)  # noqa: E731
    elif kind == "gloo":
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=datetime.timedelta(seconds=60))
        pg = dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=60))
        peer = 1 - rank
        send = lambda t, i: pg.send([t], peer, 0).wait()  # noqa: E731
        recv = lambda t, i: pg.recv([t], peer, 0).wait()  # noqa: E731
    else:  # pipe

        def send(t, i):
            conn.send_bytes(t.numpy())

        def recv(t, i):
            conn.recv_bytes_into(t.numpy())

    for kb in sizes:
        n = kb * 1024
        a, b = torch.ones(n, dtype=torch.uint8), torch.empty(n, dtype=torch.uint8)
        out[kb] = _pingpong(rank, send, recv, a, b, iters if kb <= 1152 else max(20, iters // 5))
    if kind == "xccl":
        g.close()
    if rank == 0:
        results.put(out)


def run_p2p(kind: str, lanes: int, sizes: list[int], iters: int) -> dict[int, list[float]]:
    from xdeepserve.api.launch import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    a, b = ctx.Pipe()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(kind, r, port, lanes, sizes, iters, (a, b)[r], results)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = results.get(timeout=600)
    for p in procs:
        p.join(timeout=30)
    return out


def _stats(ts: list[float]) -> tuple[float, float, float]:
    arr = np.array(ts) * 1e6
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    import os

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    runs = {
        "xccl shm, 1 lane": run_p2p("xccl", 1, SIZES_KB, args.iters),
        "xccl shm, 2 lanes": run_p2p("xccl", 2, SIZES_KB, args.iters),
        "gloo send/recv": run_p2p("gloo", 1, SIZES_KB, args.iters),
        "multiprocessing pipe": run_p2p("pipe", 1, SIZES_KB, args.iters),
    }
    print("\np2p one-way latency, µs (p50 / p99 / max) and median bandwidth, GB/s")
    print(f"{'size':>8} " + " ".join(f"{name:>30}" for name in runs))
    for kb in SIZES_KB:
        cells = []
        for res in runs.values():
            p50, p99, mx = _stats(res[kb])
            cells.append(f"{p50:8.0f}/{p99:7.0f}/{mx:7.0f} {kb * 1024 / p50 / 1e3:5.2f}")
        print(f"{kb:>6}KB " + " ".join(f"{c:>30}" for c in cells))
    ratios = []
    for kb in (k for k in SIZES_KB if k <= 1024):
        ours = min(_stats(runs[n][kb])[0] for n in ("xccl shm, 1 lane", "xccl shm, 2 lanes"))
        ratios.append(_stats(runs["gloo send/recv"][kb])[0] / ours)
    big = SIZES_KB[-1]
    bw = {n: big * 1024 / _stats(r[big])[0] / 1e3 for n, r in runs.items()}
    print("\n9 MiB bandwidth, GB/s: " + ", ".join(f"{n} {v:.2f}" for n, v in bw.items()))
    print(f"xccl vs gloo p2p latency ratio (<=1MiB, median): {math.exp(np.mean(np.log(ratios))):.2f}")


if __name__ == "__main__":
    main()
