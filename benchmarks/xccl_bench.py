"""XCCL microbenchmarks on one machine, each against its baseline measured in the same run.

Dispatch + combine (the paper's Figure 6 in miniature): 4 ranks, 4 … 128 tokens per rank, hidden 1024,
top-8 of 32 experts, fp32 and INT8 dispatch payloads; one dispatch + combine round trip per iteration
(no expert compute), through the XCCL pull-based exchange and through gloo ``all_to_all_single``
(counts, then data) with the same packing.

Point-to-point (the paper's Figure 5 sizes, 36 KB … 9 MB): one-way latency (half a ping-pong round trip)
between two processes through XCCL shared memory with 1 and 2 lanes, through torch.distributed gloo
send/recv, and through a ``multiprocessing`` pipe. Tables give p50 / p99 / max in microseconds and the
median bandwidth. The last line is ``xccl vs gloo p2p latency ratio (<=1MiB, median): X.XX`` (gloo's
median over XCCL's, geometric mean over the sizes up to 1 MiB, XCCL with its better lane count).

    python benchmarks/xccl_bench.py [--iters 200]

With ``--cuda`` (a GPU machine) it measures only the CUDA path: p2p of CUDA tensors between two
processes on one GPU through CUDA IPC rings, against the same messages copied through pinned host
memory (device-to-host into a pinned buffer, XCCL shared memory, host-to-device), 36 KB … 64 MB. That
run ends with ``cuda ipc vs pinned-host p2p bandwidth ratio (>=1MiB, median): X.XX``.
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
CUDA_SIZES_KB = [36, 144, 576, 2304, 9216, 36864, 65536]


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
    elif kind in ("cuda_ipc", "cuda_pinned"):
        from xdeepserve.xccl import XcclConfig, XcclGroup

        ipc = kind == "cuda_ipc"
        g = XcclGroup.init(rank, 2, store_addr=("127.0.0.1", port), host_id="bench",
                           config=XcclConfig(lanes=lanes, slots=4, slot_bytes=1 << 20, device_slot_bytes=16 << 20),
                           device="cuda:0" if ipc else None)
        peer = 1 - rank
        pinned = torch.empty(max(sizes) * 1024, dtype=torch.uint8).pin_memory()
        if ipc:
            send = lambda t, i: g.send(t, peer, i)  # noqa: E731
            recv = lambda t, i: g.recv(t, peer, i)  # noqa: E731
        else:

            def send(t, i):
                host = pinned[: t.numel()]
                host.copy_(t)
                g.send(host, peer, i)

            def recv(t, i):
                host = pinned[: t.numel()]
                g.recv(host, peer, i)
                t.copy_(host)
                torch.cuda.synchronize()
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
        dev = "cuda:0" if kind.startswith("cuda") else "cpu"
        a, b = torch.ones(n, dtype=torch.uint8, device=dev), torch.empty(n, dtype=torch.uint8, device=dev)
        out[kb] = _pingpong(rank, send, recv, a, b, iters if kb <= 1152 else max(20, iters // 5))
    if kind in ("xccl", "cuda_ipc", "cuda_pinned"):
        g.close()
    if rank == 0:
        results.put(out)


EP_TOKENS = [4, 16, 32, 64, 128]
EP_HIDDEN, EP_TOPK, EP_EXPERTS, EP_WORLD = 1024, 8, 32, 4


def _routed_batch(rank: int, tokens: int):
    """Hidden states, top-k expert ids and gate weights of one rank's tokens (seeded by the rank)."""
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(tokens, EP_HIDDEN, generator=g)
    ids = torch.stack([torch.randperm(EP_EXPERTS, generator=g)[:EP_TOPK] for _ in range(tokens)])
    return x, ids, torch.rand(tokens, EP_TOPK, generator=g)


def _spawn_ranks(target, args_of_rank: list[tuple]):
    """One spawned process per rank running ``target(*args, results)``; returns what rank 0 reports."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, results)) for args in args_of_rank]
    for p in procs:
        p.start()
    return _collect(results, procs)


class GlooAllToAll:
    """Baseline exchange with dispatch/combine's contract: gloo all_to_all_single of the byte counts,
    then of the bytes."""

    def __init__(self, pg, rank: int, world_size: int) -> None:
        self.pg, self.rank, self.world_size = pg, rank, world_size

    def alltoallv(self, sends, event_id):
        counts = torch.tensor([s.size for s in sends], dtype=torch.int64)
        recv_counts = torch.empty_like(counts)
        self.pg.alltoall_base(recv_counts, counts, [], []).wait()
        data = torch.from_numpy(np.concatenate(sends)) if sum(s.size for s in sends) else torch.empty(0, dtype=torch.uint8)
        out = torch.empty(int(recv_counts.sum()), dtype=torch.uint8)
        self.pg.alltoall_base(out, data, recv_counts.tolist(), counts.tolist()).wait()
        return [t.numpy() for t in torch.split(out, recv_counts.tolist())]


def _ep_worker(kind: str, rank: int, port: int, iters: int, results) -> None:
    import datetime

    torch.set_num_threads(1)
    from xdeepserve.xccl.ep import ExpertPlacement, combine, dispatch

    if kind == "xccl":
        from xdeepserve.xccl import XcclConfig, XcclGroup

        row = EP_HIDDEN * 4 + 4
        ex = XcclGroup.init(rank, EP_WORLD, store_addr=("127.0.0.1", port), host_id="bench",
                            config=XcclConfig(lanes=1, exchange_bytes=max(EP_TOKENS) * EP_TOPK * row))
    else:
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", port, EP_WORLD, is_master=rank == 0, timeout=datetime.timedelta(seconds=60))
        ex = GlooAllToAll(dist.ProcessGroupGloo(store, rank, EP_WORLD, datetime.timedelta(seconds=60)), rank, EP_WORLD)
    placement = ExpertPlacement.contiguous(EP_EXPERTS, EP_WORLD)
    out = {}
    event = 0
    for int8 in (False, True):
        for t in EP_TOKENS:
            x, ids, w = _routed_batch(rank, t)
            times = []
            for i in range(iters + 3):
                t0 = time.perf_counter()
                rows, _, _, handle = dispatch(ex, x, ids, w, placement, event_id=event, int8=int8)
                combine(ex, rows, handle, event_id=event + 1)
                event += 2
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            out[(int8, t)] = times
    if kind == "xccl":
        ex.close()
    if rank == 0:
        results.put(out)


def run_ep(kind: str, iters: int) -> dict:
    from xdeepserve.api.launch import free_port

    port = free_port()
    return _spawn_ranks(_ep_worker, [(kind, r, port, iters) for r in range(EP_WORLD)])


def _collect(results, procs):
    """Rank 0's result; raises at once if a worker died instead of waiting for nothing."""
    import queue

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            out = results.get(timeout=1)
            break
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"benchmark worker {dead[0].name} exited with code {dead[0].exitcode}") from None
    else:
        raise TimeoutError("benchmark workers did not report within 900 s")
    for p in procs:
        p.join(timeout=30)
    return out


AFD_ATTN, AFD_EXPERTS, AFD_TOKENS = 3, 4, 32


def _afd_worker(rank: int, port: int, trampoline: bool, iters: int, results) -> None:
    torch.set_num_threads(1)
    from xdeepserve.xccl import XcclConfig, XcclGroup
    from xdeepserve.xccl.afd import AfdLayout, a2e, a2e_serve, e2a, e2a_serve

    world = AFD_ATTN + AFD_EXPERTS
    g = XcclGroup.init(rank, world, store_addr=("127.0.0.1", port), host_id="bench",
                       config=XcclConfig(lanes=1, exchange_bytes=AFD_ATTN * AFD_TOKENS * EP_TOPK * (EP_HIDDEN * 4 + 4)))
    layout = AfdLayout(tuple(range(AFD_EXPERTS, world)), tuple(range(AFD_EXPERTS)), EP_EXPERTS, trampoline)
    x, ids, w = _routed_batch(rank, AFD_TOKENS)
    times = []
    for i in range(iters + 3):
        t0 = time.perf_counter()
        if rank in layout.attention:
            h = a2e(g, layout, x, ids, w, event_id=2 * i)
            e2a(g, layout, h, event_id=2 * i + 1)
        else:
            rows, _, _, h = a2e_serve(g, layout, hidden=EP_HIDDEN, dtype=torch.float32, event_id=2 * i)
            e2a_serve(g, layout, rows, h, event_id=2 * i + 1)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    g.close()
    if rank == AFD_EXPERTS:  # the first attention rank reports
        results.put(times)


def run_afd(trampoline: bool, iters: int) -> list[float]:
    from xdeepserve.api.launch import free_port

    port = free_port()
    return _spawn_ranks(_afd_worker, [(r, port, trampoline, iters) for r in range(AFD_ATTN + AFD_EXPERTS)])


def run_p2p(kind: str, lanes: int, sizes: list[int], iters: int) -> dict[int, list[float]]:
    from xdeepserve.api.launch import free_port

    a, b = mp.get_context("spawn").Pipe()
    port = free_port()
    return _spawn_ranks(_worker, [(kind, r, port, lanes, sizes, iters, (a, b)[r]) for r in (0, 1)])


def run_cuda(iters: int) -> None:
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    runs = {
        "xccl cuda ipc": run_p2p("cuda_ipc", 1, CUDA_SIZES_KB, iters),
        "pinned host + xccl shm": run_p2p("cuda_pinned", 2, CUDA_SIZES_KB, iters),
    }
    print("\nCUDA tensor p2p, one GPU, two processes: one-way latency, µs (p50 / p99 / max) and median GB/s")
    print(f"{'size':>9} " + " ".join(f"{name:>30}" for name in runs))
    ratios = []
    for kb in CUDA_SIZES_KB:
        cells = []
        for res in runs.values():
            p50, p99, mx = _stats(res[kb])
            cells.append(f"{p50:8.0f}/{p99:7.0f}/{mx:7.0f} {kb * 1024 / p50 / 1e3:6.2f}")
        print(f"{kb:>7}KB " + " ".join(f"{c:>30}" for c in cells))
        if kb >= 1024:
            ratios.append(_stats(runs["pinned host + xccl shm"][kb])[0] / _stats(runs["xccl cuda ipc"][kb])[0])
    print(f"cuda ipc vs pinned-host p2p bandwidth ratio (>=1MiB, median): {math.exp(np.mean(np.log(ratios))):.2f}")


def _stats(ts: list[float]) -> tuple[float, float, float]:
    arr = np.array(ts) * 1e6
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--cuda", action="store_true", help="only the CUDA IPC p2p comparison (needs a GPU)")
    args = ap.parse_args()
    import os

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    if args.cuda:
        run_cuda(args.iters)
        return
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
    ep = {"xccl": run_ep("xccl", max(20, args.iters // 4)), "gloo": run_ep("gloo", max(20, args.iters // 4))}
    print(f"\ndispatch + combine, {EP_WORLD} ranks, hidden {EP_HIDDEN}, top-{EP_TOPK} of {EP_EXPERTS} experts; "
          f"µs per round trip (p50 / p99 / max)")
    print(f"{'payload':>8}{'tokens':>8}{'xccl exchange':>26}{'gloo all_to_all_single':>26}{'speed-up':>10}")
    ep_ratios = []
    for int8 in (False, True):
        for t in EP_TOKENS:
            a, b = _stats(ep["xccl"][(int8, t)]), _stats(ep["gloo"][(int8, t)])
            ep_ratios.append(b[0] / a[0])
            print(f"{'int8' if int8 else 'fp32':>8}{t:>8}{a[0]:>10.0f}/{a[1]:>7.0f}/{a[2]:>7.0f}"
                  f"{b[0]:>10.0f}/{b[1]:>7.0f}/{b[2]:>7.0f}{b[0] / a[0]:>9.2f}x")
    print(f"dispatch+combine speed-up over gloo (geometric mean): {math.exp(np.mean(np.log(ep_ratios))):.2f}")
    afd = {"trampolines": run_afd(True, max(20, args.iters // 4)), "direct": run_afd(False, max(20, args.iters // 4))}
    print(f"\nA2E + E2A, {AFD_ATTN} attention x {AFD_EXPERTS} expert ranks, {AFD_TOKENS} tokens per attention rank, "
          f"hidden {EP_HIDDEN}, top-{EP_TOPK} of {EP_EXPERTS}; µs per round trip (p50 / p99 / max)")
    for name, ts in afd.items():
        p50, p99, mx = _stats(ts)
        print(f"{name:>12}: {p50:8.0f} / {p99:7.0f} / {mx:7.0f}   p99/p50 {p99 / p50:.2f}")
    print(f"xccl vs gloo p2p latency ratio (<=1MiB, median): {math.exp(np.mean(np.log(ratios))):.2f}")


if __name__ == "__main__":
    main()
