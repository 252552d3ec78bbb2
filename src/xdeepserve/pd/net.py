"""How the processes of a deployment find and reach each other.

Every process binds one ZeroMQ PULL socket (its *inbox*) on its host's address at a free port and
publishes the endpoint under its name in the deployment's torch.distributed ``TCPStore`` (the
rendezvous, hosted by the launcher of the first host). Senders look names up there and keep one PUSH
socket per peer, so the messages from one process to another arrive in order. Messages are msgpack
lists ``[kind, *fields]`` (:func:`~xdeepserve.engine.core_proc.pack`).

Sends never block: a peer whose queue is full (dead, or far behind) raises :class:`PeerUnavailable`
naming it, and the caller decides (the frontend fails the request, a shell skips the group).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable

import torch.distributed as dist
import zmq

from ..engine.core_proc import pack, unpack
from ..engine.request import FinishReason

log = logging.getLogger(__name__)

SEND_HWM = 10_000  # messages queued per peer before it counts as unavailable
HEARTBEAT_S = 0.25  # how often processes report liveness and load
DEAD_AFTER_S = 2.0  # a peer silent this long is treated as gone (generous: 2 shared cores)


# Error prefixes on the wire (final outputs with finish reason "error"):
REJECTED = "invalid request: "  # the request itself is bad: the client gets a 400
UNAVAILABLE = "unavailable: "  # a part of the deployment failed it: the frontend resumes it elsewhere


def error_output(rid: str, error: str, source: str) -> list:
    """A request's final output in the output processes' wire format, failed retriably (the frontend
    resumes it elsewhere)."""
    return [rid, "", [], FinishReason.ERROR.value, [], 0, 0, 0, UNAVAILABLE + error, source]


class PeerUnavailable(RuntimeError):
    """A peer is unknown to the rendezvous or does not take messages."""


class Registry:
    """Client of the deployment's rendezvous store: names -> endpoints, and small JSON records."""

    def __init__(self, addr: tuple[str, int], timeout_s: float = 120.0) -> None:
        self.addr = addr
        self.store = dist.TCPStore(addr[0], addr[1], is_master=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))

    def publish(self, name: str, endpoint: str) -> None:
        self.store.set(f"addr/{name}", endpoint)

    def lookup(self, name: str, timeout_s: float | None = None) -> str | None:
        """The endpoint of ``name``; None if it is not published (waiting up to ``timeout_s`` for it)."""
        key = f"addr/{name}"
        deadline = time.monotonic() + (timeout_s or 0.0)
        while True:
            if self.store.check([key]):
                return self.store.get(key).decode()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def set_json(self, key: str, value) -> None:
        self.store.set(key, json.dumps(value))

    def get_json(self, key: str, timeout_s: float = 0.0):
        deadline = time.monotonic() + timeout_s
        while not self.store.check([key]):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return json.loads(self.store.get(key).decode())


def bind_inbox(ctx: zmq.Context, address: str) -> tuple[zmq.Socket, str]:
    """A PULL socket on ``address`` at a free port, and its endpoint."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(f"tcp://{address}:*")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


REFRESH_S = 0.5  # how often a sender re-reads a peer's endpoint (a replaced peer publishes a new one)


class Outbox:
    """One PUSH socket per named peer, connected on first use and re-connected when the peer publishes
    a new endpoint (it was replaced): the endpoint is re-read at most every ``REFRESH_S``."""

    def __init__(self, ctx: zmq.Context, registry: Registry) -> None:
        self.ctx, self.registry = ctx, registry
        self.socks: dict[str, tuple[str, zmq.Socket]] = {}
        self.checked: dict[str, float] = {}

    def _socket(self, name: str, refresh: bool = False) -> zmq.Socket:
        cached = self.socks.get(name)
        now = time.monotonic()
        if cached is not None and not refresh and now - self.checked.get(name, 0.0) < REFRESH_S:
            return cached[1]
        self.checked[name] = now
        endpoint = self.registry.lookup(name)
        if endpoint is None:
            raise PeerUnavailable(f"{name} is not registered in the deployment")
        if cached is not None:
            if cached[0] == endpoint:
                return cached[1]
            cached[1].close(linger=0)
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.LINGER, 500)
        sock.connect(endpoint)
        self.socks[name] = (endpoint, sock)
        return sock

    def send(self, name: str, *msg) -> None:
        self.send_raw(name, pack(*msg))

    def send_raw(self, name: str, data: bytes) -> None:
        sock = self._socket(name)
        try:
            sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            raise PeerUnavailable(f"{name} takes no messages (its queue of {SEND_HWM} is full)") from None

    def try_send(self, name: str, *msg) -> bool:
        """Send if possible; False (logged at debug level) when the peer is unavailable."""
        try:
            self.send(name, *msg)
            return True
        except PeerUnavailable as e:
            log.debug("%s", e)
            return False

    def refresh(self, name: str) -> None:
        """Look ``name`` up again (after it was replaced)."""
        if name in self.socks:
            self._socket(name, refresh=True)

    def current(self, name: str) -> str | None:
        """The endpoint ``name`` has now (re-read at most every ``REFRESH_S``); None if unregistered."""
        try:
            self._socket(name)
        except PeerUnavailable:
            return None
        return self.socks[name][0]

    def close(self) -> None:
        for _, sock in self.socks.values():
            sock.close(linger=0)
        self.socks.clear()


def serve_inbox(inbox: zmq.Socket, handle: Callable[[list, float], None], tick: Callable[[float], None],
                interval_s: float = HEARTBEAT_S) -> None:
    """The loop of a control process (TE-shell, job executor): handle every message as it arrives, call
    ``tick(now)`` every ``interval_s``; return on a ``shutdown`` message or when the launcher is gone."""
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    parent = os.getppid()
    last = 0.0
    while True:
        if poller.poll(int(interval_s * 1000)):
            while True:
                try:
                    data = inbox.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = unpack(data)
                if msg[0] == "shutdown":
                    return
                handle(msg, time.monotonic())
        now = time.monotonic()
        if now - last >= interval_s:
            tick(now)
            last = now
        if os.getppid() != parent:
            return


class ControlProcess:
    """A TE-shell or a job executor: an inbox, an outbox, ``handle(msg, now)`` per message and ``tick(now)``
    every heartbeat."""

    ctx: zmq.Context
    inbox: zmq.Socket
    out: Outbox

    def handle(self, msg: list, now: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def run(self) -> None:
        serve_inbox(self.inbox, self.handle, self.tick)

    def close(self) -> None:
        self.out.close()
        self.inbox.close(linger=0)
        self.ctx.term()


def run_control(make: Callable[[], ControlProcess]) -> None:
    """Entry point of a control process: the launcher decides when it stops (SIGINT ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = make()
    try:
        proc.run()
    finally:
        proc.close()
