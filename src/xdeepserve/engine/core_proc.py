"""The DP group's processes: the engine-core busy loop and its output child (paper §4.2, Figure 9).

::

    frontend ──add/abort──▶ engine core ──token ids──▶ output child ──text deltas──▶ frontend
        ▲                        │                          │
        └────── ready / stats ───┘           ◀──abort (stop string)

The engine core only schedules and runs the model; it never touches text. The output child detokenises,
applies stop strings and streams deltas straight to the frontend, so the return path has no central
bottleneck. Control messages are msgpack over ZeroMQ PUSH/PULL sockets (ipc:// on one host).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import asdict, dataclass

import msgpack
import zmq

from .config import EngineConfig
from .request import EngineOutput, FinishReason, InvalidRequestError, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

OUTPUT_SEND_TIMEOUT_MS = 2000
STATS_INTERVAL_S = 0.25
STATS_MIN_INTERVAL_S = 0.02  # when requests finish, stats go out at once, but not more often than this
REJECTED = "invalid request: "  # prefix of the error of a request the engine refused to admit
IDLE_POLL_MS = 100
GC_EVERY_STEPS = 500  # proactive GC (paper §4.4): collect at a safe point, not mid-step


@dataclass(frozen=True)
class ProcAddresses:
    core_input: str  # engine core PULL (frontend and output child push here)
    core_to_output: str  # engine core PUSH -> output child PULL
    frontend: str  # frontend PULL (output child and engine core push here)


# ---- wire helpers ---------------------------------------------------------------------------------------


def pack(*msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes) -> list:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def logprobs_to_wire(lps: tuple[TokenLogprob, ...]) -> list:
    return [[lp.token_id, lp.logprob, [list(t) for t in lp.top]] for lp in lps]


def logprobs_from_wire(w: list) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(t, lp, tuple((int(a), float(b)) for a, b in top)) for t, lp, top in w)


def _output_to_wire(o: EngineOutput) -> list:
    return [
        o.request_id,
        list(o.new_token_ids),
        o.finish_reason.value if o.finish_reason else None,
        logprobs_to_wire(o.logprobs),
        o.num_prompt_tokens,
        o.num_cached_tokens,
        o.error,
    ]


def _output_from_wire(w: list) -> EngineOutput:
    rid, ids, reason, lps, n_prompt, n_cached, err = w
    return EngineOutput(
        rid, tuple(ids), FinishReason(reason) if reason else None, logprobs_from_wire(lps), n_prompt, n_cached, err
    )


# ---- engine core process -----------------------------------------------------------------------------------


def run_engine_core(config: EngineConfig, addrs: ProcAddresses) -> None:
    """Entry point of the engine-core process. Never returns normally except on shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend decides when we stop
    frontend_pid = os.getppid()
    ctx = zmq.Context()
    to_frontend = ctx.socket(zmq.PUSH)
    to_frontend.connect(addrs.frontend)
    try:
        from .core import EngineCore

        core = EngineCore(config)
        core.warm_up()
    except Exception as e:
        to_frontend.send(pack("fatal", f"engine failed to start: {type(e).__name__}: {e}"))
        to_frontend.close(linger=2000)
        raise
    inp = ctx.socket(zmq.PULL)
    inp.bind(addrs.core_input)
    to_output = ctx.socket(zmq.PUSH)
    # a PUSH with no live peer blocks forever: bound every send, and check the child every iteration
    to_output.setsockopt(zmq.SNDTIMEO, OUTPUT_SEND_TIMEOUT_MS)
    to_output.bind(addrs.core_to_output)
    child = mp.get_context("spawn").Process(
        target=run_output_process, args=(config.model, addrs), name="xds-output", daemon=True
    )
    child.start()
    _wait_for_output_process(inp, child)

    def send_to_output(msg: bytes) -> None:
        try:
            to_output.send(msg)
        except zmq.Again:
            state = "alive" if child.is_alive() else f"dead, exit code {child.exitcode}"
            raise RuntimeError(
                f"output process (pid {child.pid}, {state}) took no message for {OUTPUT_SEND_TIMEOUT_MS} ms"
            ) from None

    to_frontend.send(
        pack(
            "ready",
            {
                "max_model_len": core.max_model_len,
                "vocab_size": core.vocab_size,
                "eos_token_ids": list(core.eos_token_ids),
                "num_kv_blocks": core.kv.num_blocks,
                "pid": os.getpid(),
                "output_pid": child.pid,
            },
        )
    )
    gc.disable()
    poller = zmq.Poller()
    poller.register(inp, zmq.POLLIN)
    last_stats = 0.0
    running = True
    admissions = 0
    generation: dict[str, int] = {}  # request id -> admission number, to match stop-string aborts
    try:
        while running:
            timeout = 0 if core.has_work() else IDLE_POLL_MS
            while poller.poll(timeout):
                timeout = 0
                msg = unpack(inp.recv())
                kind = msg[0]
                if kind == "add":
                    _, rid, prompt, sp_wire = msg
                    try:
                        sp = SamplingParams.from_wire(sp_wire)
                        if core.abort([rid]):
                            # The frontend refuses ids it still streams, so an id still running here
                            # was ended by a stop string whose abort from the output child has not
                            # arrived yet: the client reused it at once. Drop the old one silently.
                            generation.pop(rid, None)
                        core.add_request(rid, prompt, sp)
                        admissions += 1
                        generation[rid] = admissions
                        send_to_output(pack("register", rid, admissions, prompt[-8:], list(sp.stop),
                                            sp.include_stop_str_in_output))
                    except (InvalidRequestError, TypeError, ValueError) as e:
                        err = EngineOutput(rid, (), FinishReason.ERROR, error=f"{REJECTED}{e}")
                        send_to_output(pack("register", rid, 0, [], [], False))
                        send_to_output(pack("outputs", [_output_to_wire(err)]))
                elif kind == "abort":  # from the frontend: the client went away
                    aborted = core.abort(msg[1])
                    for r in aborted:
                        generation.pop(r, None)
                    if aborted:
                        outs = [_output_to_wire(EngineOutput(r, (), FinishReason.ABORT)) for r in aborted]
                        send_to_output(pack("outputs", outs))
                elif kind == "stop":  # from the output child: a stop string ended these requests
                    # only the admission the child saw: the id may already name a newer request
                    ended = [r for r, g in msg[1] if generation.get(r) == g]
                    for r in core.abort(ended):
                        generation.pop(r, None)
                elif kind == "shutdown":
                    running = False
                    break
            if not running:
                break
            if not child.is_alive():
                raise RuntimeError(f"output process (pid {child.pid}) died with exit code {child.exitcode}")
            changed = False
            if core.has_work():
                outs = core.step()
                if outs:
                    send_to_output(pack("outputs", [_output_to_wire(o) for o in outs]))
                    for o in outs:
                        if o.finished:
                            generation.pop(o.request_id, None)
                    changed = any(o.finished for o in outs) or not core.has_work()
                if outs and core.num_steps % GC_EVERY_STEPS == 0:
                    gc.collect()
            elif os.getppid() != frontend_pid:
                log.warning("frontend (pid %d) is gone; engine core exiting", frontend_pid)
                break
            now = time.monotonic()
            if now - last_stats >= (STATS_MIN_INTERVAL_S if changed else STATS_INTERVAL_S):
                to_frontend.send(pack("stats", asdict(core.stats())))
                last_stats = now
    except Exception as e:
        to_frontend.send(pack("fatal", f"engine core failed: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise
    finally:
        with contextlib.suppress(zmq.ZMQError):
            to_output.send(pack("shutdown"), zmq.NOBLOCK)
        child.join(timeout=2)
        if child.is_alive():
            child.terminate()
        for s in (inp, to_output, to_frontend):
            s.close(linger=500)
        ctx.term()


OUTPUT_START_TIMEOUT_S = 120.0


def _wait_for_output_process(inp: zmq.Socket, child: mp.Process) -> None:
    """Block until the output child has its tokenizer and sockets (else the first request would wait
    for its start-up)."""
    deadline = time.monotonic() + OUTPUT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if inp.poll(100) and unpack(inp.recv())[0] == "output_ready":
            return
        if not child.is_alive():
            raise RuntimeError(f"output process exited with code {child.exitcode} during start-up")
    raise RuntimeError(f"output process not ready within {OUTPUT_START_TIMEOUT_S:.0f} s")


# ---- output child process ---------------------------------------------------------------------------------


def detokenize(detok, out: EngineOutput, count: int) -> tuple[list, FinishReason | None, bool]:
    """One engine output through its request's detokeniser. Returns the delta in the frontend's wire
    format (``count``: output tokens so far, including these), the finish reason (STOP when a stop string
    ended it) and whether the engine core must be told to stop the request (a stop string it cannot see)."""
    text = detok.add(out.new_token_ids, out.finished)
    reason = out.finish_reason
    if detok.stopped:
        reason = FinishReason.STOP
    delta = [out.request_id, text, list(out.new_token_ids), reason.value if reason else None,
             logprobs_to_wire(out.logprobs), out.num_prompt_tokens, count, out.num_cached_tokens, out.error]
    return delta, reason, detok.stopped and not out.finished


def run_output_process(model_dir: str, addrs: ProcAddresses) -> None:
    """Detokenise engine outputs and stream text deltas to the frontend; report stop-string hits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..model.loader import load_tokenizer
    from .detokenizer import IncrementalDetokenizer

    tokenizer = load_tokenizer(model_dir)
    parent = os.getppid()
    ctx = zmq.Context()
    inp = ctx.socket(zmq.PULL)
    inp.connect(addrs.core_to_output)
    to_frontend = ctx.socket(zmq.PUSH)
    to_frontend.connect(addrs.frontend)
    to_core = ctx.socket(zmq.PUSH)
    to_core.connect(addrs.core_input)
    to_core.send(pack("output_ready"))
    # rid -> (detokenizer, [output tokens so far], admission number)
    states: dict[str, tuple[IncrementalDetokenizer, list[int], int]] = {}
    try:
        while True:
            if not inp.poll(1000):
                if os.getppid() != parent:  # the engine core is gone
                    return
                continue
            msg = unpack(inp.recv())
            if msg[0] == "shutdown":
                return
            if msg[0] == "register":
                _, rid, admission, tail, stop, include = msg
                states[rid] = (IncrementalDetokenizer(tokenizer, tail, tuple(stop), include), [0], admission)
                continue
            deltas, stopped = [], []
            for w in msg[1]:
                out = _output_from_wire(w)
                state = states.get(out.request_id)
                if state is None:
                    continue  # already finished here (e.g. by a stop string)
                detok, count, admission = state
                count[0] += len(out.new_token_ids)
                delta, reason, stop_engine = detokenize(detok, out, count[0])
                if stop_engine:
                    stopped.append([out.request_id, admission])
                if reason is not None:
                    del states[out.request_id]
                deltas.append(delta)
            if deltas:
                to_frontend.send(pack("outputs", deltas))
            if stopped:
                to_core.send(pack("stop", stopped))
    finally:
        for s in (inp, to_frontend, to_core):
            s.close(linger=200)
        ctx.term()
