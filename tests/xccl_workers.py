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


def run_transfers(group: XcclGroup, transfers: list[tuple[int, int, int, str, int]]) -> list[bool]:
    """transfers: (src, dst, numel, dtype, event_id), issued in this order by every rank."""
    handles, checks = [], []
    for src, dst, numel, dtype, event in transfers:
        if group.rank == src:
            handles.append(group.isend(payload(event, numel, dtype), dst, event))
        elif group.rank == dst:
            out = torch.empty(numel, dtype=DTYPES[dtype])
            handles.append(group.irecv(out, src, event))
            checks.append((out, event, numel, dtype))
    for h in handles:
        h.wait(timeout_s=60)
    return [bool(torch.equal(out, payload(event, numel, dtype))) for out, event, numel, dtype in checks]


def worker(rank: int, world: int, port: int, host_id: str, config: dict, commands, results) -> None:
    try:
        group = XcclGroup.init(rank, world, store_addr=("127.0.0.1", port), host_id=host_id,
                               config=XcclConfig(**config))
    except Exception as e:
        results.put((rank, "error", f"{type(e).__name__}: {e}"))
        return
    results.put((rank, "ready", {"pid": os.getpid(), "transports": {p: group.transport(p) for p in group.channels}}))
    while True:
        cmd, arg = commands.get()
        try:
            if cmd == "stop":
                group.close()
                results.put((rank, "stopped", None))
                return
            if cmd == "transfers":
                results.put((rank, "ok", run_transfers(group, arg)))
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
