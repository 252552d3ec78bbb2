"""Process entry points: ``python -m sdwn_multicast.control.processes root|domain ...``.

Each process prints ``READY <port>`` on stdout once it serves, logs to stderr, and exits when its stdin
closes (so a crashed parent never leaves controllers behind). A domain controller that loses the root
keeps serving its domain and reconnects with backoff (``--reconnect-min``/``--reconnect-max``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from ..topology import load_topology
from .domain import DomainController
from .root import RootController
from .transport import ChannelTiming, FaultConfig


def _exit_when_stdin_closes() -> None:
    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def parse(argv):
    p = argparse.ArgumentParser(prog="sdwn-controller")
    p.add_argument("role", choices=["root", "domain"])
    p.add_argument("--topology", default="paper30")
    p.add_argument("--domains", type=int, default=None)
    p.add_argument("--domain", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--root-port", type=int, default=0)
    p.add_argument("--sync-period", type=float, default=0.5)
    p.add_argument("--staleness-bound", type=float, default=2.0)
    p.add_argument("--segment-timeout", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--dup", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--rto", type=float, default=0.05)
    p.add_argument("--heartbeat", type=float, default=0.1)
    p.add_argument("--dead-after", type=float, default=1.5)
    p.add_argument("--reconnect-min", type=float, default=0.2, help="first reconnect delay after losing the root")
    p.add_argument("--reconnect-max", type=float, default=5.0, help="reconnect backoff cap")
    p.add_argument("--marl", action="store_true", help="load the trained agents at start (else on first use)")
    p.add_argument("--marl-checkpoint", default=None, help="training output folder (default: committed)")
    return p.parse_args(argv)


async def _run(args) -> int:
    topo = load_topology(args.topology, n_domains=args.domains, seed=args.seed)
    faults = FaultConfig(args.drop, args.dup, args.delay_ms, args.fault_seed)
    timing = ChannelTiming(rto_s=args.rto, send_timeout_s=3.0, heartbeat_s=args.heartbeat,
                           dead_after_s=args.dead_after)
    if args.role == "root":
        root = RootController(topo, args.sync_period, args.staleness_bound, faults, timing, args.segment_timeout,
                              marl_checkpoint=args.marl_checkpoint, preload_marl=args.marl)
        server = await root.serve(args.port)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()
        return 0
    dc = DomainController(topo, args.domain, args.sync_period, faults, timing, seed=args.seed,
                          reconnect_min_s=args.reconnect_min, reconnect_max_s=args.reconnect_max,
                          marl_checkpoint=args.marl_checkpoint, preload_marl=args.marl)
    port = await dc.start(args.root_port, args.port)
    print(f"READY {port}", flush=True)
    await dc.stopped.wait()
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.role}{'' if args.role == 'root' else args.domain} %(message)s")
    _exit_when_stdin_closes()
    return asyncio.run(_run(args))


if __name__ == "__main__":
    raise SystemExit(main())
