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
from pathlib import Path

import zmq
import zmq.asyncio

from ..engine.client import EngineDeadError
from ..engine.core import EngineStats
from ..engine.core_proc import logprobs_from_wire, pack, unpack
from ..engine.request import FinishReason, InvalidRequestError, RequestOutput, SamplingParams, check_prompt
from ..model.loader import load_tokenizer
from .group import REJECTED, resolve_model
from .net import DEAD_AFTER_S, Registry
from .shell import UNAVAILABLE
from .spec import DeploymentSpec

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 300.0


class PDClient:
    """The engine-client interface of :mod:`xdeepserve.api.server`, over a disaggregated deployment."""

    def __init__(self, spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> None:
        self.spec, self.name = spec, name
        model_dir = resolve_model(spec)
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
        self._push: dict[str, zmq.asyncio.Socket] = {}
        self._executors: dict[str, tuple[float, bool, dict]] = {}  # name -> (last heartbeat, ready, stats)
        self._queues: dict[str, asyncio.Queue] = {}
        self._tasks: list[asyncio.Task] = []
        self.registry.publish(name, self._pull.getsockopt_string(zmq.LAST_ENDPOINT))

    @classmethod
    async def start(cls, spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> PDClient:
        self = cls(spec, name, store_addr)
        self._tasks = [asyncio.create_task(self._read_loop())]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            info = self.registry.get_json("info/model")
            if info is not None and self.healthy:
                break
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineDeadError(f"{name}: the deployment did not become ready within {STARTUP_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        self.max_model_len, self.vocab_size = info["max_model_len"], info["vocab_size"]
        self.eos_token_ids = tuple(info["eos_token_ids"])
        return self

    async def shutdown(self) -> None:
        for q in list(self._queues.values()):
            q.put_nowait(EngineDeadError("frontend shut down"))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for s in (self._pull, *self._push.values()):
            s.close(linger=0)
        self._ctx.term()

    # ---- executors -----------------------------------------------------------------------------------
    def live_executors(self) -> list[str]:
        now = time.monotonic()
        return [n for n, (seen, ready, _) in self._executors.items() if ready and now - seen < DEAD_AFTER_S]

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

    def _socket(self, executor: str) -> zmq.asyncio.Socket:
        sock = self._push.get(executor)
        if sock is None:
            endpoint = self.registry.lookup(executor)
            if endpoint is None:
                raise EngineDeadError(f"{executor} is not registered")
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.connect(endpoint)
            self._push[executor] = sock
        return sock

    async def _send(self, *msg) -> str:
        """Send to a random live executor; returns its name."""
        live = self.live_executors()
        random.shuffle(live)
        for ex in live:
            try:
                await self._socket(ex).send(pack(*msg), zmq.NOBLOCK)
                return ex
            except zmq.Again:
                continue
        raise EngineDeadError("no live job executor in the deployment")

    # ---- requests ------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], sampling: SamplingParams) -> None:
        check_prompt(prompt_token_ids, max_model_len=self.max_model_len, vocab_size=self.vocab_size,
                     max_tokens=sampling.max_tokens)

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams
                       ) -> AsyncIterator[RequestOutput]:
        if request_id in self._queues:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        self.validate(prompt_token_ids, sampling)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        finished = False
        received = 0  # output tokens delivered so far
        early: dict[int, RequestOutput] = {}  # deltas that overtook an earlier one, by their first token
        try:
            await self._send("submit", request_id, list(prompt_token_ids), sampling.to_wire(), self.name)
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item.error and item.finish_reason is FinishReason.ERROR:
                    finished = True
                    if item.error.startswith(REJECTED):
                        raise InvalidRequestError(item.error.removeprefix(REJECTED))
                    if item.error.startswith(UNAVAILABLE):
                        raise EngineDeadError(item.error.removeprefix(UNAVAILABLE))
                first = item.num_output_tokens - len(item.token_ids)
                if item.token_ids and first > received:
                    early[first] = item
                    continue
                while item is not None:
                    received = max(received, item.num_output_tokens)
                    finished = item.finished
                    yield item
                    if finished:
                        return
                    item = early.pop(received, None)
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                with contextlib.suppress(EngineDeadError, zmq.ZMQError):
                    await self._send("abort", [request_id])

    async def abort(self, request_id: str) -> None:
        with contextlib.suppress(EngineDeadError):
            await self._send("abort", [request_id])

    async def _read_loop(self) -> None:
        while True:
            msg = unpack(await self._pull.recv())
            if msg[0] == "outputs":
                for rid, text, ids, reason, lps, n_prompt, n_out, n_cached, err, _source in msg[1]:
                    q = self._queues.get(rid)
                    if q is not None:
                        q.put_nowait(RequestOutput(rid, text, tuple(ids), FinishReason(reason) if reason else None,
                                                   logprobs_from_wire(lps), n_prompt, n_out, n_cached, err))
            elif msg[0] == "hb":
                _, name, ready, stats = msg
                self._executors[name] = (time.monotonic(), ready, stats)


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
    client = await PDClient.start(spec, name, store_addr)
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
