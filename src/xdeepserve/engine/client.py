"""Frontend side of a DP group: starts the engine-core process and talks to it asynchronously.

One background task reads every message the DP group sends (text deltas from the output child, stats
and lifecycle messages from the engine core) and routes deltas to per-request queues. A watchdog notices
a dead engine process within half a second and fails every in-flight request with
:class:`EngineDeadError` naming it, instead of letting callers hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import zmq
import zmq.asyncio

from ..model.loader import load_tokenizer
from .config import EngineConfig
from .core import EngineStats
from .core_proc import REJECTED, ProcAddresses, logprobs_from_wire, pack, run_engine_core, unpack
from .request import FinishReason, InvalidRequestError, RequestOutput, SamplingParams, check_prompt

WATCHDOG_INTERVAL_S = 0.5
STATS_STALE_S = 10.0


class EngineDeadError(RuntimeError):
    """The engine process is gone; requests cannot be served until it is restarted."""


class AsyncEngineClient:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        self.model_name = config.served_model_name or Path(config.model).resolve().name
        self.max_model_len = 0
        self.vocab_size = 0
        self.eos_token_ids: tuple[int, ...] = ()
        self.output_pid: int | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._stats = EngineStats()
        self._stats_time = 0.0
        self._dead: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._ipc_dir = tempfile.TemporaryDirectory(prefix="xds-")
        d = self._ipc_dir.name
        self.addrs = ProcAddresses(f"ipc://{d}/core_in", f"ipc://{d}/core_out", f"ipc://{d}/frontend")
        self._ctx = zmq.asyncio.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(self.addrs.frontend)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.connect(self.addrs.core_input)
        self._proc = mp.get_context("spawn").Process(
            target=run_engine_core, args=(config, self.addrs), name="xds-engine-core"
        )  # not a daemon: it has a child of its own; it exits by itself when this process goes away

    # ---- lifecycle ---------------------------------------------------------------------------------------
    @classmethod
    async def start(cls, config: EngineConfig, *, startup_timeout_s: float = 120.0) -> AsyncEngineClient:
        self = cls(config)
        self._proc.start()
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if await self._pull.poll(200):
                msg = unpack(await self._pull.recv())
                if msg[0] == "ready":
                    info = msg[1]
                    self.max_model_len = info["max_model_len"]
                    self.vocab_size = info["vocab_size"]
                    self.eos_token_ids = tuple(info["eos_token_ids"])
                    self.output_pid = info["output_pid"]
                    break
                if msg[0] == "fatal":
                    await self._close_sockets()
                    raise EngineDeadError(msg[1])
            if not self._proc.is_alive():
                await self._close_sockets()
                raise EngineDeadError(f"engine core process exited with code {self._proc.exitcode} during startup")
            if time.monotonic() > deadline:
                self._proc.kill()
                await self._close_sockets()
                raise EngineDeadError(f"engine core did not become ready within {startup_timeout_s:.0f} s")
        self._stats_time = time.monotonic()
        self._tasks = [asyncio.create_task(self._read_loop()), asyncio.create_task(self._watchdog())]
        return self

    async def shutdown(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(zmq.ZMQError):
                await self._push.send(pack("shutdown"))
            for _ in range(50):
                if not self._proc.is_alive():
                    break
                await asyncio.sleep(0.1)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(2)
        self._fail_all("engine shut down")
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._close_sockets()

    async def _close_sockets(self) -> None:
        self._pull.close(linger=0)
        self._push.close(linger=0)
        self._ctx.term()
        self._ipc_dir.cleanup()

    @property
    def healthy(self) -> bool:
        return (
            self._dead is None
            and self._proc.is_alive()
            and time.monotonic() - self._stats_time < STATS_STALE_S
        )

    @property
    def engine_pid(self) -> int | None:
        return self._proc.pid

    def stats(self) -> EngineStats:
        return self._stats

    # ---- requests ----------------------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], sampling: SamplingParams) -> None:
        check_prompt(prompt_token_ids, max_model_len=self.max_model_len, vocab_size=self.vocab_size,
                     max_tokens=sampling.max_tokens)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        if request_id in self._queues:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        self.validate(prompt_token_ids, sampling)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        finished = False
        try:
            await self._push.send(pack("add", request_id, list(prompt_token_ids), sampling.to_wire()))
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item.error and item.error.startswith(REJECTED):
                    finished = True
                    raise InvalidRequestError(item.error.removeprefix(REJECTED))
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished and self._dead is None:
                with contextlib.suppress(zmq.ZMQError):
                    await self._push.send(pack("abort", [request_id]))

    async def abort(self, request_id: str) -> None:
        if self._dead is None:
            await self._push.send(pack("abort", [request_id]))

    # ---- background tasks ----------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            msg = unpack(await self._pull.recv())
            kind = msg[0]
            if kind == "outputs":
                for rid, text, ids, reason, lps, n_prompt, n_out, n_cached, err in msg[1]:
                    q = self._queues.get(rid)
                    if q is not None:
                        q.put_nowait(
                            RequestOutput(
                                rid,
                                text,
                                tuple(ids),
                                FinishReason(reason) if reason else None,
                                logprobs_from_wire(lps),
                                n_prompt,
                                n_out,
                                n_cached,
                                err,
                            )
                        )
            elif kind == "stats":
                self._stats = EngineStats(**msg[1])
                self._stats_time = time.monotonic()
            elif kind == "fatal":
                self._mark_dead(msg[1].splitlines()[0])

    async def _watchdog(self) -> None:
        while self._dead is None:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if not self._proc.is_alive():
                self._mark_dead(f"engine core process (pid {self._proc.pid}) exited with code {self._proc.exitcode}")

    def _mark_dead(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        for q in list(self._queues.values()):
            q.put_nowait(EngineDeadError(reason))
