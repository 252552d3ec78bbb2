"""Worker processes for the XCCL tests: each forms a group and then runs commands sent by the test."""

from __future__ import annotations

import os
import traceback

import torch

from xdeepserve.xccl import XcclConfig, XcclError, XcclGroup

DTYPES = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8, "bfloat16": torch.bfloat16}


def payload(seed: int, numel: int, dtype: str) -> torch.Tensor:
    """Deterministic message content, so sender, receiver and test agree without shipping it."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 255, (numel,), generator=g, dtype=torch.int64)
    return data.to(DTYPES[dtype])


def run_transfers(group: XcclGroup, transfers: list[tuple[int, int, int, str, int]], device: str = "cpu") -> list[bool]:
    """transfers: (src, dst, numel, dtype, event_id), issued in this order by every rank."""
    handles, checks = [], []
    for src, dst, numel, dtype, event in transfers:
        if group.rank == src:
            handles.append(group.isend(payload(event, numel, dtype).to(device), dst, event))
        elif group.rank == dst:
            out = torch.empty(numel, dtype=DTYPES[dtype], device=device)
            handles.append(group.irecv(out, src, event))
            checks.append((out, event, numel, dtype))
    for h in handles:
        h.wait(timeout_s=60)
    return [bool(torch.equal(out.cpu(), payload(event, numel, dtype))) for out, event, numel, dtype in checks]


def expert_fn(rows: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
    """A stand-in expert e: rows * (e + 1) + e / 100 (different per expert, cheap, exact in fp32)."""
    e = global_ids.to(torch.float32).unsqueeze(1)
    return (rows.float() * (e + 1) + e / 100).to(rows.dtype)


def run_ep(group: XcclGroup, seed: int, tokens: list[int], k: int, experts: int, hidden: int, int8: bool,
           dtype: str) -> float:
    """One dispatch + expert compute + combine; returns the max error against the local reference."""
    from xdeepserve.xccl.ep import ExpertPlacement, combine, dispatch

    g = torch.Generator().manual_seed(seed * 100 + group.rank)
    t = tokens[group.rank]
    x = torch.randn(t, hidden, generator=g).to(DTYPES[dtype])
    ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(t)]) if t else torch.zeros(0, k, dtype=torch.long)
    weights = torch.rand(t, k, generator=g)
    placement = ExpertPlacement.contiguous(experts, group.world_size)
    rows, local_ids, per_expert, handle = dispatch(group, x, ids, weights, placement, event_id=2 * seed, int8=int8)
    assert int(per_expert.sum()) == rows.shape[0]
    global_ids = placement.local_experts(group.rank)[local_ids]
    out = combine(group, expert_fn(rows, global_ids), handle, event_id=2 * seed + 1)
    ref = torch.zeros(t, hidden)
    for j in range(k):
        ref += weights[:, j : j + 1] * expert_fn(x, ids[:, j]).float()
    return float((out.float() - ref).abs().max()) if t else 0.0


def run_afd(group: XcclGroup, seed: int, attention: list[int], experts: list[int], tokens: int, k: int,
            num_experts: int, hidden: int, int8: bool) -> float | None:
    """One A2E + expert compute + E2A; attention ranks return their max error against the reference."""
    from xdeepserve.xccl.afd import AfdLayout, a2e, a2e_serve, e2a, e2a_serve

    layout = AfdLayout(tuple(attention), tuple(experts), num_experts)
    event = 3 * seed
    if group.rank in attention:
        g = torch.Generator().manual_seed(seed * 100 + group.rank)
        x = torch.randn(tokens, hidden, generator=g)
        ids = torch.stack([torch.randperm(num_experts, generator=g)[:k] for _ in range(tokens)]) if tokens else torch.zeros(0, k, dtype=torch.long)
        w = torch.rand(tokens, k, generator=g)
        handle = a2e(group, layout, x, ids, w, event_id=event, int8=int8)
        out = e2a(group, layout, handle, event_id=event + 1)
        ref = torch.zeros(tokens, hidden)
        for j in range(k):
            ref += w[:, j : j + 1] * expert_fn(x, ids[:, j])
        return float((out - ref).abs().max()) if tokens else 0.0
    if group.rank in experts:
        rows, local, _, handle = a2e_serve(group, layout, hidden=hidden, dtype=torch.float32, event_id=event, int8=int8)
        global_ids = layout.placement.local_experts(group.rank)[local]
        e2a_serve(group, layout, expert_fn(rows, global_ids), handle, event_id=event + 1)
    return None


def worker(rank: int, world: int, port: int, host_id: str, config: dict, commands, results) -> None:
    config = dict(config)
    device = config.pop("device", None)  # a CUDA device for every rank (GPU tests)
    try:
        group = XcclGroup.init(rank, world, store_addr=("127.0.0.1", port), host_id=host_id,
                               config=XcclConfig(**config), device=device)
    except Exception as e:
        results.put((rank, "error", f"{type(e).__name__}: {e}"))
        return
    results.put((rank, "ready", {
        "pid": os.getpid(),
        "transports": {p: group.transport(p) for p in group.channels},
        "cuda_transports": {p: group.transport(p, cuda=True) for p in group.channels},
    }))
    while True:
        cmd, arg = commands.get()
        try:
            if cmd == "stop":
                group.close()
                results.put((rank, "stopped", None))
                return
            if cmd == "transfers":
                results.put((rank, "ok", run_transfers(group, arg)))
            elif cmd == "cuda_transfers":
                results.put((rank, "ok", run_transfers(group, arg, device)))
            elif cmd == "mixed_order":  # a non-blocking send, then a blocking one, to the same peer
                if rank == 0:
                    h = group.isend(payload(1, 50_000, "float32"), 1, 1)
                    group.send(payload(2, 70_000, "float32"), 1, 2)
                    h.wait(timeout_s=30)
                    results.put((rank, "ok", True))
                else:
                    a, b = torch.empty(50_000), torch.empty(70_000)
                    group.recv(a, 0, 1)
                    group.recv(b, 0, 2)
                    results.put((rank, "ok", torch.equal(a, payload(1, 50_000, "float32"))
                                 and torch.equal(b, payload(2, 70_000, "float32"))))
            elif cmd == "afd":
                results.put((rank, "ok", run_afd(group, **arg)))
            elif cmd == "ep":
                results.put((rank, "ok", run_ep(group, **arg)))
            elif cmd == "send":
                peer, numel, event = arg
                group.send(torch.ones(numel), peer, event)
                results.put((rank, "ok", None))
            elif cmd == "recv":
                peer, numel, event = arg
                results.put((rank, "ok", group.recv(torch.empty(numel), peer, event)))
        except XcclError as e:
            results.put((rank, "xccl_error", (type(e).__name__, e.peer, str(e))))
        except Exception:
            results.put((rank, "error", traceback.format_exc()))
