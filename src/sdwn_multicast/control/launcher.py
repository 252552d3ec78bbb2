"""Start and stop a control plane (root + one process per domain) and talk to it as a client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..topology import Node, load_topology
from ..trees import MulticastError, UnknownNodeError
from .links import check_weight, domain_label
from .messages import (
    ErrorReply,
    GroupJoin,
    GroupLeave,
    GroupView,
    Hello,
    LinkStateReport,
    Rejected,
    TreeCommit,
    TreeRequest,
    ViewQuery,
    ViewReply,
)
from .transport import Channel, ChannelTiming, ControlPlaneError, FaultConfig, PeerDeadError, open_channel

__all__ = ["ControlClient", "ControlPlane", "ControlPlaneError", "FaultConfig", "PeerDeadError", "RequestFailedError"]


class RequestFailedError(ControlPlaneError):
    """The root (or a domain) answered a request with an error; the message is its reason."""


class StartupError(ControlPlaneError):
    """A controller process did not become ready."""


def _read_ready(proc: subprocess.Popen, name: str, deadline: float) -> int:
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            raise StartupError(f"{name} exited before becoming ready (code {proc.poll()})")
        buf += chunk
        if b"\n" in buf:
            line = buf.split(b"\n", 1)[0].decode()
            if line.startswith("READY "):
                return int(line.split()[1])
    raise StartupError(f"{name} did not become ready in time")


class ControlPlane:
    """Root + domain controller processes on 127.0.0.1; use as a context manager (always cleans up)."""

    def __init__(self, topology: str = "paper30", n_domains: int | None = None, sync_period_s: float = 0.5,
                 staleness_bound_s: float | None = None, faults: FaultConfig = FaultConfig(), seed: int = 0,
                 timing: ChannelTiming = ChannelTiming(), segment_timeout_s: float = 2.0,
                 startup_timeout_s: float = 30.0, log_dir: str | os.PathLike | None = None,
                 marl: bool = False, marl_checkpoint: str | None = None):
        self.topology_name, self.n_domains_arg = topology, n_domains
        # marl: every controller loads its trained agent at start (requests with policy="marl" use them)
        self.marl, self.marl_checkpoint = marl, marl_checkpoint
        self.topology = load_topology(topology, n_domains=n_domains, seed=seed)
        self.sync_period_s = sync_period_s
        self.staleness_bound_s = staleness_bound_s if staleness_bound_s is not None else 4 * sync_period_s
        self.faults, self.seed, self.timing = faults, seed, timing
        self.segment_timeout_s = segment_timeout_s
        self.startup_timeout_s = startup_timeout_s
        # controller stderr logs: kept in ``log_dir`` if given, else in a temporary folder removed on close
        self._own_log_dir = log_dir is None
        self.log_dir = Path(tempfile.mkdtemp(prefix="sdwn-control-")) if log_dir is None else Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.root_port = 0
        self.domain_ports: dict[int, int] = {}
        self._clients: list[ControlClient] = []

    def _common_args(self) -> list[str]:
        args = ["--topology", self.topology_name, "--seed", str(self.seed), "--sync-period", str(self.sync_period_s),
                "--staleness-bound", str(self.staleness_bound_s), "--rto", str(self.timing.rto_s),
                "--heartbeat", str(self.timing.heartbeat_s), "--dead-after", str(self.timing.dead_after_s),
                "--segment-timeout", str(self.segment_timeout_s), *self.faults.to_args()]
        if self.n_domains_arg is not None:
            args += ["--domains", str(self.n_domains_arg)]
        if self.marl:
            args += ["--marl"]
        if self.marl_checkpoint is not None:
            args += ["--marl-checkpoint", str(self.marl_checkpoint)]
        return args

    def _spawn(self, name: str, extra: list[str]) -> int:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "sdwn_multicast.control.processes", *extra,
                                     *self._common_args()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=log)
        self.procs[name] = proc
        return _read_ready(proc, name, time.monotonic() + self.startup_timeout_s)

    def start(self) -> ControlPlane:
        try:
            self.root_port = self._spawn("root", ["root"])
            for d in range(self.topology.n_domains):
                self.domain_ports[d] = self._spawn(f"domain{d}", ["domain", "--domain", str(d),
                                                                  "--root-port", str(self.root_port)])
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def client(self, name: str = "client") -> ControlClient:
        c = ControlClient(self, name)
        self._clients.append(c)
        return c

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one controller process by name (``root`` or ``domain<d>``); SIGSTOP freezes it instead."""
        self.procs[name].send_signal(sig)

    def restart(self, name: str) -> int:
        """Kill controller ``name`` (``root`` or ``domain<d>``) and start a new one; return its port.

        A restarted domain controller is a new incarnation (its report ``seq`` starts again at 1); a
        restarted root listens on the same port, so the domain controllers reconnect to it.
        """
        old = self.procs.get(name)
        if old is not None:
            self._stop(old)
        if name == "root":
            return self._spawn("root", ["root", "--port", str(self.root_port)])
        d = int(name.removeprefix("domain"))
        self.domain_ports[d] = self._spawn(name, ["domain", "--domain", str(d), "--root-port", str(self.root_port)])
        return self.domain_ports[d]

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        proc.wait(timeout=5)
        for f in (proc.stdin, proc.stdout):
            if f:
                f.close()

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
            for f in (proc.stdin, proc.stdout):
                if f:
                    f.close()
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    @property
    def alive(self) -> dict[str, bool]:
        return {n: p.poll() is None for n, p in self.procs.items()}


class ControlClient:
    """Synchronous client (its own event-loop thread) for hosts and operators: join/leave, views, trees."""

    def __init__(self, plane: ControlPlane, name: str = "client"):
        self.plane, self.name = plane, name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"sdwn-{name}", daemon=True)
        self.thread.start()
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future] = {}
        self.rejections: list[Rejected] = []
        self.errors: list[ErrorReply] = []
        self.channels: dict[str, Channel] = {}

    def _run(self, coro, timeout_s: float):
        fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout_s), self.loop)
        try:
            return fut.result(timeout_s + 1.0)
        except (asyncio.TimeoutError, TimeoutError):
            raise ControlPlaneError(f"{self.name}: no answer within {timeout_s:.1f} s") from None

    async def _handle(self, ch: Channel, msg) -> None:
        if isinstance(msg, Rejected):
            self.rejections.append(msg)
        rid = getattr(msg, "request_id", None)
        if rid is not None and rid in self.replies and not self.replies[rid].done():
            self.replies[rid].set_result(msg)
        elif isinstance(msg, ErrorReply):
            self.errors.append(msg)

    async def _channel(self, target: str, timeout_s: float = 10.0) -> Channel:
        ch = self.channels.get(target)
        if ch is None or not ch.alive:
            port = self.plane.root_port if target == "root" else self.plane.domain_ports[int(target[6:])]
            label = "root" if target == "root" else f"domain {domain_label(int(target[6:]))}"
            # connect within half the request's time, so an unreachable peer is reported as such
            ch = await open_channel("127.0.0.1", port, self.name, label, self._handle, self.plane.faults,
                                    self.plane.timing, connect_timeout_s=min(5.0, timeout_s / 2))
            self.channels[target] = ch
            await ch.send(Hello("client", -1, self.name))
        return ch

    async def _request(self, target: str, make, timeout_s: float):
        rid = next(self.ids)
        fut = self.loop.create_future()
        self.replies[rid] = fut
        ch = await self._channel(target, timeout_s)
        watch = asyncio.ensure_future(self._dead(ch))
        try:
            await ch.send(make(rid), timeout_s=timeout_s)
            done, _ = await asyncio.wait({fut, watch}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if fut in done:
                return fut.result()
            if not ch.alive:
                raise PeerDeadError(ch.peer, ch.dead_reason or "dead")
            raise ControlPlaneError(f"{ch.peer} did not answer within {timeout_s:.1f} s")
        finally:
            watch.cancel()
            self.replies.pop(rid, None)

    @staticmethod
    async def _dead(ch: Channel) -> None:
        while ch.alive:
            await asyncio.sleep(0.02)

    # ---- public API ----
    def _domain_of(self, member: Node) -> int:
        try:
            return self.plane.topology.domain_of[member]
        except KeyError:
            raise UnknownNodeError(f"AP {member!r} is not a node of {self.plane.topology.name}") from None

    def join(self, group: int, member: int, ttl_s: float = 5.0, timeout_s: float = 5.0) -> None:
        d = self._domain_of(member)
        self._run(self._send(f"domain{d}", GroupJoin(group, member, ttl_s), timeout_s), timeout_s)

    def leave(self, group: int, member: int, timeout_s: float = 5.0) -> None:
        d = self._domain_of(member)
        self._run(self._send(f"domain{d}", GroupLeave(group, member), timeout_s), timeout_s)

    async def _send(self, target: str, msg, timeout_s: float) -> None:
        ch = await self._channel(target, timeout_s)
        await ch.send(msg, timeout_s=timeout_s)

    def view(self, target: str = "root", group: int = -1, timeout_s: float = 5.0) -> ViewReply:
        """``target`` is ``root`` or ``domain<d>``."""
        return self._run(self._request(target, lambda rid: ViewQuery(rid, group), timeout_s), timeout_s + 0.5)

    def group_view(self, group: int, target: str = "root", timeout_s: float = 5.0) -> GroupView:
        gv = self.view(target, group, timeout_s).group_view
        return gv if gv is not None else GroupView(group, 0, ())

    def request_tree(self, group: int, source: int, weight: str = "delay_ms", timeout_s: float = 10.0,
                     policy: str = "kmb") -> TreeCommit:
        """Ask the root for ``group``'s tree from ``source``; ``weight`` is one of the simulator's ``WEIGHTS``.
        ``policy="marl"``: the trained agents decide (root: crossings; each domain controller: its segment).

        Raises :class:`~sdwn_multicast.trees.MulticastError` for an unknown weight (before sending) and
        :class:`RequestFailedError` with the root's reason when the root refuses or fails.
        """
        try:
            check_weight(weight)
        except ValueError as exc:
            raise MulticastError(str(exc)) from None
        reply = self._run(self._request("root", lambda rid: TreeRequest(rid, group, source, weight, policy), timeout_s),
                          timeout_s + 0.5)
        if isinstance(reply, ErrorReply):
            raise RequestFailedError(reply.reason)
        return reply

    def send_report(self, report: LinkStateReport, timeout_s: float = 5.0) -> None:
        """Send a raw link-state report to the root (used to test that stale state is refused)."""
        self._run(self._send("root", report, timeout_s), timeout_s)

    def close(self) -> None:
        if not self.loop.is_running():
            return

        async def shutdown():
            for ch in self.channels.values():
                await ch.close()
        with contextlib.suppress(Exception):  # best effort: the loop may already be wedged
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(2.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=2.0)
