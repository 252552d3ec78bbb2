"""Reliable message channels over real TCP sockets, with seeded fault injection.

Every data message carries a per-channel ``msg_id``; the receiver acknowledges it and delivers it at
most once (duplicates are dropped by id). The sender retransmits every ``rto_s`` until acknowledged or
until its deadline, then raises :class:`PeerUnreachableError` naming the peer. A closed connection or
``dead_after_s`` without any frame (heartbeats flow every ``heartbeat_s``) marks the peer dead: pending
and later sends fail with :class:`PeerDeadError` naming it. Nothing waits forever.

Fault injection (:class:`FaultConfig`) acts on the sending side of every frame, acks and heartbeats
included: drop with ``drop_prob``, send twice with ``dup_prob``, delay each copy by up to
``max_delay_ms`` (which also reorders). Its random stream is seeded per (seed, local, peer) channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .messages import Ack, ErrorReply, Heartbeat, ProtocolError, decode_body, encode_frame

log = logging.getLogger(__name__)


class ControlPlaneError(RuntimeError):
    """Base class of control-plane failures."""


class PeerDeadError(ControlPlaneError):
    """The named peer closed its connection or fell silent; raised instead of waiting forever."""

    def __init__(self, peer: str, reason: str):
        super().__init__(f"peer {peer} is dead: {reason}")
        self.peer = peer


class PeerUnreachableError(PeerDeadError):
    """The named peer did not acknowledge a message before the deadline."""


@dataclass(frozen=True)
class FaultConfig:
    drop_prob: float = 0.0
    dup_prob: float = 0.0
    max_delay_ms: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.drop_prob < 1 and 0 <= self.dup_prob <= 1 and self.max_delay_ms >= 0):
            raise ValueError(f"invalid fault config {self}")

    def to_args(self) -> list[str]:
        return ["--drop", str(self.drop_prob), "--dup", str(self.dup_prob), "--delay-ms", str(self.max_delay_ms),
                "--fault-seed", str(self.seed)]


@dataclass(frozen=True)
class ChannelTiming:
    rto_s: float = 0.05
    send_timeout_s: float = 3.0
    heartbeat_s: float = 0.1
    dead_after_s: float = 1.5


Handler = Callable[["Channel", object], Awaitable[None]]


class Channel:
    """One side of a TCP connection carrying acknowledged messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local: str, peer: str,
                 handler: Handler, faults: FaultConfig = FaultConfig(), timing: ChannelTiming = ChannelTiming()):
        self.reader, self.writer = reader, writer
        self.local, self.peer = local, peer
        self.handler = handler
        self.faults, self.timing = faults, timing
        self.rng = random.Random(f"{faults.seed}:{local}->{peer}")
        self.loop = asyncio.get_running_loop()
        self._next_id = 1
        self._pending: dict[int, asyncio.Future] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self.dead_reason: str | None = None
        self.last_heard = time.monotonic()
        self.on_dead: Callable[[Channel], None] | None = None
        self.stats = {"sent": 0, "dropped": 0, "duplicated": 0, "retransmitted": 0, "dup_received": 0}
        self._spawn(self._read_loop())
        self._spawn(self._heartbeat_loop())

    # ---- lifecycle ----
    @property
    def alive(self) -> bool:
        return self.dead_reason is None

    def _spawn(self, coro) -> asyncio.Task:
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def spawn(self, coro) -> asyncio.Task:
        """Run a coroutine tied to this channel's lifetime (errors are logged, never lost silently)."""
        async def guarded():
            try:
                await coro
            except ControlPlaneError as exc:
                log.warning("%s: %s", self.local, exc)
            except Exception:
                log.exception("%s: task failed", self.local)
        return self._spawn(guarded())

    def mark_dead(self, reason: str) -> None:
        if self.dead_reason is not None:
            return
        self.dead_reason = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerDeadError(self.peer, reason))
        self._pending.clear()
        with contextlib.suppress(Exception):  # closing a broken transport may raise anything
            self.writer.close()
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()
        if self.on_dead:
            self.on_dead(self)

    async def close(self) -> None:
        self.mark_dead("closed locally")

    # ---- sending ----
    def _write(self, frame: bytes) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(frame)

    def _emit(self, msg_id: int, msg) -> None:
        """Put one frame on the wire, subject to injected faults."""
        if not self.alive:
            return
        f = self.faults
        self.stats["sent"] += 1
        if f.drop_prob and self.rng.random() < f.drop_prob:
            self.stats["dropped"] += 1
            return
        copies = 2 if f.dup_prob and self.rng.random() < f.dup_prob else 1
        if copies == 2:
            self.stats["duplicated"] += 1
        frame = encode_frame(msg_id, msg)
        for _ in range(copies):
            delay = self.rng.uniform(0, f.max_delay_ms) / 1e3 if f.max_delay_ms else 0.0
            if delay > 0:
                self.loop.call_later(delay, self._write, frame)
            else:
                self._write(frame)

    async def send(self, msg, timeout_s: float | None = None) -> None:
        """Deliver ``msg`` reliably (at most once at the receiver); raise if the peer is dead/unreachable."""
        if not self.alive:
            raise PeerDeadError(self.peer, self.dead_reason or "dead")
        timeout_s = self.timing.send_timeout_s if timeout_s is None else timeout_s
        msg_id = self._next_id
        self._next_id += 1
        fut = self.loop.create_future()
        self._pending[msg_id] = fut
        deadline = time.monotonic() + timeout_s
        first = True
        while True:
            if not first:
                self.stats["retransmitted"] += 1
            first = False
            self._emit(msg_id, msg)
            wait = min(self.timing.rto_s, max(deadline - time.monotonic(), 0.0))
            try:
                await asyncio.wait_for(asyncio.shield(fut), wait)
                return
            except asyncio.TimeoutError:
                if time.monotonic() >= deadline:
                    self._pending.pop(msg_id, None)
                    if not fut.done():
                        fut.cancel()
                    raise PeerUnreachableError(
                        self.peer, f"no ack for {type(msg).__name__} within {timeout_s:.2f} s") from None

    # ---- receiving ----
    async def _dispatch(self, msg) -> None:
        """Run the handler; an unexpected exception is logged and, for a request, answered with an ErrorReply.

        So a handler bug never leaves a silently dead task behind and a client waiting for a reply
        learns what went wrong instead of timing out.
        """
        try:
            await self.handler(self, msg)
        except (ControlPlaneError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("%s: handler failed on %s from %s", self.local, type(msg).__name__, self.peer)
            rid = getattr(msg, "request_id", None)
            if isinstance(rid, int) and not isinstance(msg, ErrorReply):
                await self.send(ErrorReply(rid, f"{self.local} failed to handle {type(msg).__name__}: "
                                                f"{type(exc).__name__}: {exc}"))

    async def _read_loop(self) -> None:
        reason = "connection closed by peer"
        try:
            while True:
                header = await self.reader.readexactly(4)
                body = await self.reader.readexactly(int.from_bytes(header, "big"))
                self.last_heard = time.monotonic()
                try:
                    msg_id, msg = decode_body(body)
                except ProtocolError as exc:
                    log.warning("%s: dropping frame from %s: %s", self.local, self.peer, exc)
                    continue
                if isinstance(msg, Ack):
                    fut = self._pending.pop(msg.msg_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                    continue
                if isinstance(msg, Heartbeat) or msg_id == 0:
                    continue
                self._emit(0, Ack(msg_id))
                if msg_id in self._seen:
                    self.stats["dup_received"] += 1
                    continue
                self._seen[msg_id] = None
                if len(self._seen) > 8192:
                    self._seen.popitem(last=False)
                self.spawn(self._dispatch(msg))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        except asyncio.CancelledError:
            return
        self.mark_dead(reason)

    async def _heartbeat_loop(self) -> None:
        while self.alive:
            self._emit(0, Heartbeat(time.time()))
            await asyncio.sleep(self.timing.heartbeat_s)
            silent = time.monotonic() - self.last_heard
            if silent > self.timing.dead_after_s:
                self.mark_dead(f"silent for {silent:.2f} s")
                return


async def open_channel(host: str, port: int, local: str, peer: str, handler: Handler,
                       faults: FaultConfig = FaultConfig(), timing: ChannelTiming = ChannelTiming(),
                       connect_timeout_s: float = 5.0) -> Channel:
    """Connect (retrying until ``connect_timeout_s``) and wrap the stream in a :class:`Channel`."""
    deadline = time.monotonic() + connect_timeout_s
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    max(deadline - time.monotonic(), 0.01))
            return Channel(reader, writer, local, peer, handler, faults, timing)
        except (OSError, asyncio.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise PeerDeadError(peer, f"cannot connect to {host}:{port}: {exc}") from exc
            await asyncio.sleep(0.05)
