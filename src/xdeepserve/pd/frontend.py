"""An API frontend of a disaggregated deployment.

Several frontend processes serve one port (``SO_REUSEPORT``: the kernel spreads connections over them).
Each runs the same OpenAI-compatible app as ``xds serve`` (:func:`xdeepserve.api.server.build_app`) over a
:class:`PDClient` instead of a local engine: a request goes to a randomly chosen live job executor, and
its tokens come back straight from the output processes of the DP groups that prefill and decode it
(the first token from the prefill group, the rest from the decode group). Deltas carry their cumulative
token count, so the stream is put back in order if the decode side's first delta overtakes the prefill
side's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import zmq
import zmq.asyncio

from ..engine.client import EngineDeadError
from ..engine.core import EngineStats
from ..engine.core_proc import logprobs_from_wire, pack, unpack
from ..engine.request import FinishReason, InvalidRequestError, RequestOutput, SamplingParams, check_prompt
from ..model.loader import load_tokenizer
from .net import DEAD_AFTER_S, REJECTED, UNAVAILABLE, Registry
from .spec import DeploymentSpec

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300.0
MAX_ATTEMPTS = 4  # a request is resumed at most this many times minus one
EXECUTOR_GRACE_S = 0.5  # a request not routed yet is resent when its executor is declared dead
ROUTE_TIMEOUT_S = 10.0  # ... or when no TE-shell took it within this (it was lost with a dying shell)
RETRIABLE = (UNAVAILABLE, "KV transfer failed")


@dataclass
class Flight:
    """One attempt of a request: where it is, so that it can be resumed when that part dies."""

    queue: asyncio.Queue
    executor: tuple[str, str] = ("", "")  # (name, endpoint): which incarnation took it
    sent_at: float = 0.0
    holder: tuple[str, int] | None = None  # (DP group, its pid) holding the request now
    stage: int = -1  # 0: prefill, 1: decode
    resuming: bool = False


@dataclass(frozen=True)
class Resume:
    reason: str


class PDClient:
    """The engine-client interface of :mod:`xdeepserve.api.server`, over a disaggregated deployment."""

    def __init__(self, spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> None:
        self.spec, self.name = spec, name
        model_dir = spec.model_dir()
        self.tokenizer = load_tokenizer(model_dir)
        self.model_name = spec.engine.get("served_model_name") or Path(model_dir).resolve().name
        self.registry = Registry(store_addr)
        self.max_model_len = 0
        self.vocab_size = 0
        self.eos_token_ids: tuple[int, ...] = ()
        self._ctx = zmq.asyncio.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.bind(f"tcp://{spec.hosts[spec.frontend_host]}:*")
        self._push: dict[str, tuple[str, zmq.asyncio.Socket]] = {}  # executor -> (endpoint, socket)
        # executor -> (last heartbeat, ready, engine stats, {DP group: pid} of the live groups it knows, endpoint)
        self._executors: dict[str, tuple[float, bool, dict, dict, str]] = {}
        self._flights: dict[str, Flight] = {}  # by attempt id
        self._requests: set[str] = set()  # client request ids in flight
        self.resumed = 0  # requests resumed after a failure (for operators and tests)
        self._tasks: list[asyncio.Task] = []
        self.registry.publish(name, self._pull.getsockopt_string(zmq.LAST_ENDPOINT))

    @classmethod
    async def start(cls, spec: DeploymentSpec, name: str, store_addr: tuple[str, int],
                    stop: asyncio.Event | None = None) -> PDClient | None:
        """Wait until the deployment can serve (None if ``stop`` is set first)."""
        self = cls(spec, name, store_addr)
        self._tasks = [asyncio.create_task(self._read_loop())]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            info = self.registry.get_json("info/model")
            if info is not None and self.healthy:
                break
            if stop is not None and stop.is_set():
                await self.shutdown()
                return None
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineDeadError(f"{name}: the deployment did not become ready within {STARTUP_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        self.max_model_len, self.vocab_size = info["max_model_len"], info["vocab_size"]
        self.eos_token_ids = tuple(info["eos_token_ids"])
        return self

    async def shutdown(self) -> None:
        for f in list(self._flights.values()):
            f.queue.put_nowait(EngineDeadError("frontend shut down"))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for s in (self._pull, *(sock for _, sock in self._push.values())):
            s.close(linger=0)
        self._ctx.term()

    # ---- executors -----------------------------------------------------------------------------------
    def live_executors(self) -> list[str]:
        now = time.monotonic()
        return [n for n, (seen, ready, *_) in self._executors.items() if ready and now - seen < DEAD_AFTER_S]

    @property
    def healthy(self) -> bool:
        return bool(self.live_executors())

    def stats(self) -> EngineStats:
        """The deployment's engine statistics, as the freshest live executor last reported them."""
        live = self.live_executors()
        if not live:
            return EngineStats()
        stats = max((self._executors[n] for n in live), key=lambda e: e[0])[2]
        return EngineStats(**{k: v for k, v in stats.items() if k in EngineStats.__dataclass_fields__})

    def _socket(self, executor: str) -> tuple[zmq.asyncio.Socket, str]:
        """The socket to the incarnation of ``executor`` that sent the last heartbeat."""
        endpoint = self._executors[executor][4]
        cached = self._push.get(executor)
        if cached is None or cached[0] != endpoint:
            if cached is not None:
                cached[1].close(linger=0)
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.connect(endpoint)
            cached = self._push[executor] = (endpoint, sock)
        return cached[1], endpoint

    async def _send(self, *msg) -> tuple[str, str]:
        """Send to a random live executor; returns its (name, endpoint)."""
        live = self.live_executors()
        random.shuffle(live)
        for ex in live:
            sock, endpoint = self._socket(ex)
            try:
                await sock.send(pack(*msg), zmq.NOBLOCK)
                return ex, endpoint
            except zmq.Again:
                continue
        now = time.monotonic()
        if any(now - seen < DEAD_AFTER_S for seen, *_ in self._executors.values()):
            raise EngineDeadError("no capacity: the deployment has no live prefill or decode instance right now")
        raise EngineDeadError("no live job executor in the deployment")

    # ---- requests ------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], sampling: SamplingParams) -> None:
        check_prompt(prompt_token_ids, max_model_len=self.max_model_len, vocab_size=self.vocab_size,
                     max_tokens=sampling.max_tokens)

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams
                       ) -> AsyncIterator[RequestOutput]:
        """Stream one request. When the DP group holding it dies (or the KV it waits for is lost, or its
        executor dies before routing it), the request is resumed: prompt + the tokens streamed so far go
        to a live prefill instance as a new attempt, and the stream continues from there — for greedy
        requests exactly as if nothing had happened."""
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        self.validate(prompt_token_ids, sampling)
        self._requests.add(request_id)
        tokens: list[int] = []  # output tokens streamed to the client so far, over all attempts
        text = ""  # ... and their text
        attempt_id = request_id
        finished = False
        try:
            for attempt in range(MAX_ATTEMPTS):
                attempt_id = request_id if attempt == 0 else f"{request_id}#{attempt}"
                flight = self._flights[attempt_id] = Flight(asyncio.Queue(), sent_at=time.monotonic())
                sp = replace(sampling, max_tokens=sampling.max_tokens - len(tokens),
                             min_tokens=max(0, sampling.min_tokens - len(tokens)))
                flight.executor = await self._send("submit", attempt_id, list(prompt_token_ids) + tokens,
                                                   sp.to_wire(), self.name)
                reason = None
                async for item in self._attempt(flight):
                    if isinstance(item, Resume):
                        reason = item.reason
                        break
                    tokens += item.token_ids
                    text += item.text
                    finished = item.finished
                    yield replace(item, request_id=request_id, num_prompt_tokens=len(prompt_token_ids),
                                  num_output_tokens=len(tokens))
                    if finished:
                        return
                held = self._held_back(prompt_token_ids, tokens, text)
                if held:  # text of streamed tokens the lost attempt still held back (stop-string window)
                    text += held
                    yield RequestOutput(request_id, held, (), None, (), len(prompt_token_ids), len(tokens))
                self._flights.pop(attempt_id, None)
                with contextlib.suppress(EngineDeadError, zmq.ZMQError):
                    await self._send("abort", [attempt_id])  # whatever is left of it
                if len(tokens) >= sampling.max_tokens:  # only its final message was lost
                    finished = True
                    yield RequestOutput(request_id, "", (), FinishReason.LENGTH, (), len(prompt_token_ids),
                                        len(tokens))
                    return
                self.resumed += 1
                log.warning("%s: resuming %s after %d tokens: %s", self.name, request_id, len(tokens), reason)
                await asyncio.sleep(0.05 * attempt)
            raise EngineDeadError(f"request {request_id} failed {MAX_ATTEMPTS} times; last: {reason}")
        finally:
            self._flights.pop(attempt_id, None)
            self._requests.discard(request_id)
            if not finished:
                with contextlib.suppress(EngineDeadError, zmq.ZMQError):
                    await self._send("abort", [attempt_id])

    def _held_back(self, prompt: list[int], tokens: list[int], text: str) -> str:
        """The text of ``tokens`` not streamed yet (an output process holds back the last characters
        while they could start a stop string). Decoded with a few prompt tokens as context, as the
        output process does."""
        if not tokens:
            return ""
        ctx = prompt[-5:]
        full = self.tokenizer.decode(ctx + tokens, skip_special_tokens=True)
        head = self.tokenizer.decode(ctx, skip_special_tokens=True)
        if not full.startswith(head) or full.endswith("\ufffd"):
            return ""
        produced = full[len(head):]
        return produced[len(text):] if produced.startswith(text) else ""

    async def _attempt(self, flight: Flight) -> AsyncIterator[RequestOutput | Resume]:
        """The outputs of one attempt, in token order; a :class:`Resume` when it is lost."""
        received = 0
        early: dict[int, RequestOutput] = {}  # deltas that overtook an earlier one, by their first token
        while True:
            item = await flight.queue.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Resume):
                yield item
                return
            if item.finish_reason is FinishReason.ERROR and item.error:
                if item.error.startswith(REJECTED):
                    raise InvalidRequestError(item.error.removeprefix(REJECTED))
                if item.error.startswith(RETRIABLE):
                    yield Resume(item.error.removeprefix(UNAVAILABLE))
                    return
            first = item.num_output_tokens - len(item.token_ids)
            if item.token_ids and first > received:
                early[first] = item
                continue
            while item is not None:
                received = max(received, item.num_output_tokens)
                yield item
                if item.finished:
                    return
                item = early.pop(received, None)

    async def abort(self, request_id: str) -> None:
        ids = [f for f in self._flights if f == request_id or f.startswith(request_id + "#")]
        with contextlib.suppress(EngineDeadError):
            await self._send("abort", ids or [request_id])

    def _watch(self) -> None:
        """After each heartbeat: resume the attempts whose DP group (or, before routing, executor) died."""
        now = time.monotonic()
        live_ex = set(self.live_executors())  # ready ones: they have heard from every instance
        if not live_ex:
            return  # no complete view (e.g. the only executor just restarted): judge nothing
        live: dict[str, int] = {}
        for name in live_ex:
            live.update(self._executors[name][3])
        for flight in self._flights.values():
            if flight.resuming:
                continue
            if flight.holder is not None:
                group, pid = flight.holder
                if live.get(group) != pid:
                    flight.resuming = True
                    flight.queue.put_nowait(Resume(f"{group} (pid {pid}) is gone"))
            elif now - flight.sent_at > EXECUTOR_GRACE_S:
                name, endpoint = flight.executor
                if name not in self._executors or self._executors[name][4] != endpoint or (
                        now - self._executors[name][0] > DEAD_AFTER_S):
                    flight.resuming = True
                    flight.queue.put_nowait(Resume(f"{name} is gone before routing it"))
                elif now - flight.sent_at > ROUTE_TIMEOUT_S:  # lost on the way (e.g. a shell died)
                    flight.resuming = True
                    flight.queue.put_nowait(Resume(f"not routed within {ROUTE_TIMEOUT_S:.0f} s"))

    async def _read_loop(self) -> None:
        while True:
            msg = unpack(await self._pull.recv())
            if msg[0] == "outputs":
                for rid, text, ids, reason, lps, n_prompt, n_out, n_cached, err, _source in msg[1]:
                    f = self._flights.get(rid)
                    if f is not None:
                        f.queue.put_nowait(RequestOutput(rid, text, tuple(ids), FinishReason(reason) if reason else None,
                                                         logprobs_from_wire(lps), n_prompt, n_out, n_cached, err))
            elif msg[0] == "routed":
                _, rid, group, pid, stage = msg
                f = self._flights.get(rid)
                if f is not None and stage >= f.stage:
                    f.holder, f.stage = (group, pid), stage
            elif msg[0] == "hb":
                _, name, ready, stats, pids, endpoint = msg
                self._executors[name] = (time.monotonic(), ready, stats, pids, endpoint)
                self._watch()


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other frontends can bind too (the kernel balances connections)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this platform has no SO_REUSEPORT; run one frontend per port")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve_frontend(spec: DeploymentSpec, name: str, store_addr: tuple[str, int], log_level: str = "warning") -> None:
    import uvicorn

    from ..api.server import _Server, build_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server: _Server | None = None

    def on_signal() -> None:
        stop.set()
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    client = await PDClient.start(spec, name, store_addr, stop)
    if client is None:
        return
    sock = reuseport_socket(spec.hosts[spec.frontend_host], spec.port)  # listen once requests can be served
    client.registry.store.set(f"ready/{name}", str(os.getpid()))
    parent = os.getppid()

    async def watch_parent() -> None:  # the launcher went away (killed): stop too
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        on_signal()

    watchdog = asyncio.create_task(watch_parent())
    try:
        server = _Server(uvicorn.Config(build_app(client), log_level=log_level, timeout_graceful_shutdown=5))
        if not stop.is_set():
            await server.serve(sockets=[sock])
    finally:
        watchdog.cancel()
        await client.shutdown()
        sock.close()


def run_frontend(spec: DeploymentSpec, name: str, store_addr: tuple[str, int], log_level: str = "warning") -> None:
    asyncio.run(serve_frontend(spec, name, store_addr, log_level))
