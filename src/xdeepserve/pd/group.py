"""One DP group of a disaggregated deployment: an engine-core process and its output child.

A DP group is self-contained: its own scheduler, KV cache, prefix cache and statistics. Its engine core
takes requests from its TE-shell and streams token ids to its output child, which detokenises and sends
text deltas straight to the frontend that holds each request's client connection.

Prefill group (``prefill_only`` engine)::

    shell ──add──▶ core ──ids, kv_ready──▶ output child ──first token──▶ frontend
                                              └──transfer task (+ detokeniser state)──▶ decode shell
    decode group ──pull(rid, event)──▶ core ──KV rows over XCCL──▶ decode group; send done ⇒ blocks freed

Decode group::

    decode shell ──transfer──▶ core: waits for free blocks (back-pressure), asks the prefill group to
    send, receives the rows asynchronously over XCCL into its own blocks, then decodes; its output
    child continues the detokeniser where the prefill side stopped.

Each prefill-decode pair of groups has its own two-rank XCCL group (shared memory on one host, gloo
across hosts), formed when the decode group starts: the decode side hosts the pair's store and sends
``connect`` to the prefill group, and both join in background threads. A prefill group keeps the KV of a
parked request until the pull completes (a finished XCCL send means the receiver has every byte), is
refused (``release``), or nobody pulled it for ``PARK_TTL_S``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import asdict

import torch
import zmq

from ..api.launch import free_port
from ..engine.config import EngineConfig
from ..engine.core_proc import GC_EVERY_STEPS, _output_from_wire, _output_to_wire, detokenize, pack, unpack
from ..engine.request import EngineOutput, FinishReason, InvalidRequestError, SamplingParams
from .kv_transfer import KVGeometry, KVSender, TransferTask, XcclPull, dtype_name
from .net import HEARTBEAT_S, REJECTED, UNAVAILABLE, Outbox, Registry, bind_inbox, error_output
from .spec import DeploymentSpec

log = logging.getLogger(__name__)

PARK_TTL_S = 30.0  # a parked request nobody pulled for this long has its blocks freed
ABORTED_TTL_S = 60.0  # how long a decode group remembers aborted ids (their transfer may still arrive)
ORPHAN_CHECK_S = 1.0  # output process: how often it looks for requests whose frontend was replaced
PAIR_TIMEOUT_S = 120.0
KV_TIMEOUT_S = 10.0  # XCCL deadline of one KV transfer
PEER_CHECK_S = 0.25  # decode: how often the prefill peers' liveness is checked
PEER_STALE_S = 3.0  # ... a peer whose load reports stop this long counts as dead (hung or unreachable)
PROBE_AFTER_S = 1.0  # decode: a pull waiting this long triggers a link probe to its prefill group
PROBE_TIMEOUT_S = 1.0  # ... which must come back within this


def group_load(core) -> dict:
    """What the TE-shell dispatches on: batch occupancy, KV usage counting the blocks the running requests
    will still need for their remaining output, queued prompt tokens, parked transfers."""
    sch, kv = core.scheduler, core.kv
    reserved = 0
    for req in sch.running:
        need = kv.blocks_needed(min(req.num_prompt_tokens + req.sampling.max_tokens, core.max_model_len))
        reserved += max(0, need - len(req.block_ids))
    for req, _ in sch.awaiting_kv:
        reserved += kv.blocks_needed(min(req.num_prompt_tokens + req.sampling.max_tokens, core.max_model_len))
    waiting_tokens = sum(r.num_tokens - r.num_computed_tokens for r in sch.waiting)
    waiting_tokens += sum(r.num_tokens - r.num_computed_tokens for r in sch.running
                          if r.num_computed_tokens < r.num_prompt_tokens)
    used = kv.num_blocks - kv.num_free_blocks
    return {
        "batch": len(sch.running) + len(sch.awaiting_kv) + len(sch.receiving),
        "max_batch": sch.max_num_seqs,
        "num_blocks": kv.num_blocks,
        "used_blocks": used,
        "reserved_blocks": reserved,
        "waiting": len(sch.waiting),
        "waiting_tokens": waiting_tokens,
        "parked": len(sch.parked),
        "stats": asdict(core.stats()),
    }


class GroupCore:
    """The engine-core side of a DP group (its message handling and loop)."""

    def __init__(self, spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> None:
        self.spec, self.name = spec, name
        self.inst, self.index = spec.group(name)
        self.role = self.inst.role
        self.host_id = self.inst.host
        self.address = spec.hosts[self.host_id]
        self.model_dir = spec.model_dir()
        self.config: EngineConfig = spec.engine_config(self.inst, self.model_dir)
        self.registry = Registry(store_addr)
        self.store_addr = store_addr
        self.ctx = zmq.Context()
        self.inbox, self.endpoint = bind_inbox(self.ctx, self.address)
        self.out = Outbox(self.ctx, self.registry)
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="xds-pair")
        self.pairs: dict[str, object] = {}  # peer group -> XcclGroup
        self.pending_pairs: dict[str, concurrent.futures.Future] = {}
        self.senders: dict[str, KVSender] = {}  # prefill: decode group -> sender
        self.parked_since: dict[str, float] = {}
        self.events: dict[str, int] = {}  # decode: prefill group -> last event id
        self.aborted: dict[str, float] = {}  # recently aborted ids (an abort can overtake its request)
        self.generation: dict[str, int] = {}
        self.admissions = 0
        self.source: dict[str, str] = {}  # decode: request -> the prefill group holding its KV
        self.frontends: dict[str, str] = {}  # prefill: request -> its frontend (until its KV is released)
        self.peer_pid: dict[str, int] = {}  # decode: prefill group -> pid of the incarnation we paired with
        self.peer_seen: dict[str, tuple[int, float]] = {}  # ... (report seq, when it last changed)
        self.pull_started: dict[str, float] = {}  # decode: request -> when its pull was asked for
        self.added_at: dict[str, float] = {}  # decode: request -> when its transfer task arrived
        self.probed_at: dict[str, float] = {}  # decode: prefill group -> last probe
        self.probes: dict[str, tuple[object, float]] = {}  # decode: prefill group -> (probe handle, sent at)
        self.link_state: dict[str, str] = {}  # decode: prefill group -> "ok" / "saturated" / "broken"
        self.last_peer_check = 0.0
        self.seq = 0

    # ---- start-up ------------------------------------------------------------------------------------
    def start(self) -> None:
        from ..engine.core import EngineCore

        self.core = EngineCore(self.config)
        self.core.warm_up()
        caches = self.core.runner.kv_caches
        self.geometry, self.dtype = KVGeometry.of(caches), dtype_name(caches[0][0].dtype)
        self.to_output = self.ctx.socket(zmq.PUSH)
        self.to_output.setsockopt(zmq.SNDTIMEO, 2000)
        port = self.to_output.bind_to_random_port("tcp://127.0.0.1")
        self.child = mp.get_context("spawn").Process(
            target=run_group_output,
            args=(self.model_dir, self.name, self.role, self.store_addr, self.endpoint, f"tcp://127.0.0.1:{port}",
                  self.dtype, asdict(self.geometry)),
            name=f"xds-{self.name}-output", daemon=True,
        )
        self.child.start()
        deadline = time.monotonic() + 120
        while not (self.inbox.poll(100) and unpack(self.inbox.recv())[0] == "output_ready"):
            if not self.child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: output process failed to start (exit code {self.child.exitcode})")
        self.registry.publish(self.name, self.endpoint)
        if self.role == "decode":
            self.connect_prefill_groups()
        self.registry.set_json("info/model", {"max_model_len": self.core.max_model_len,
                                              "vocab_size": self.core.vocab_size,
                                              "eos_token_ids": list(self.core.eos_token_ids)})
        self.registry.store.set(f"ready/{self.name}", str(os.getpid()))
        log.info("%s ready (pid %d, %d KV blocks)", self.name, os.getpid(), self.core.kv.num_blocks)

    def connect_prefill_groups(self) -> None:
        """Form one two-rank XCCL group with every prefill group (this side hosts the pair's store)."""

        deadline = time.monotonic() + PAIR_TIMEOUT_S
        for inst in self.spec.prefill:
            for peer in inst.group_names:
                while not self.registry.store.check([f"ready/{peer}"]):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name}: prefill group {peer} not ready within {PAIR_TIMEOUT_S:.0f} s")
                    time.sleep(0.1)
                self.pair_with(peer)
        for fut in list(self.pending_pairs.values()):
            fut.result(timeout=PAIR_TIMEOUT_S)
        self.advance_pairs()

    def pair_with(self, peer: str) -> None:
        """Decode side: (re)form the XCCL pair with the current incarnation of prefill group ``peer``."""
        from ..xccl import XcclConfig, XcclGroup

        self.peer_pid[peer] = int(self.registry.store.get(f"ready/{peer}"))
        self.out.refresh(peer)
        port = free_port(self.address)
        self.out.send(peer, "connect", self.name, self.address, port, self.host_id)
        self.pending_pairs[peer] = self.pool.submit(
            XcclGroup.init, 0, 2, store_addr=(self.address, port), host_id=self.host_id,
            config=XcclConfig(timeout_s=KV_TIMEOUT_S))

    # ---- messages ------------------------------------------------------------------------------------
    def send_to_output(self, *msg) -> None:
        try:
            self.to_output.send(pack(*msg))
        except zmq.Again:
            raise RuntimeError(f"{self.name}: output process (pid {self.child.pid}) took no message for 2 s") from None

    def register(self, rid: str, frontend: str, sp: SamplingParams, prompt: list[int], detok_state=None,
                 n_out: int = 0, handoff=None) -> None:
        self.admissions += 1
        self.generation[rid] = self.admissions
        self.send_to_output("register", rid, self.admissions, frontend, detok_state, prompt[-8:], list(sp.stop),
                            sp.include_stop_str_in_output, n_out, handoff)

    def reject(self, rid: str, frontend: str, error: str) -> None:
        self.send_to_output("register", rid, 0, frontend, None, [], [], False, 0, None)
        err = EngineOutput(rid, (), FinishReason.ERROR, error=error)
        self.send_to_output("outputs", [_output_to_wire(err) + [0]])

    def handle(self, msg: list) -> bool:
        kind = msg[0]
        if kind == "add":  # prefill / colocated: (rid, prompt, sampling, frontend, decode instance or None)
            _, rid, prompt, sp_wire, frontend, decode = msg
            if rid in self.aborted:  # its abort overtook it
                return True
            try:
                sp = SamplingParams.from_wire(sp_wire)
                self.core.add_request(rid, prompt, sp)
                self.frontends[rid] = frontend
            except (InvalidRequestError, TypeError, ValueError) as e:
                self.reject(rid, frontend, f"{REJECTED}{e}")
                return True
            self.register(rid, frontend, sp, prompt, handoff=[decode, prompt, sp_wire] if decode else None)
        elif kind == "transfer":  # decode: a prefilled request to continue
            self.add_transfer(msg)
        elif kind == "pull":  # prefill: a decode group has blocks for it and waits for the rows
            _, rid, event, decode_group = msg
            sender = self.senders.get(decode_group)
            try:
                if sender is None:
                    raise RuntimeError(f"no XCCL pair with {decode_group}")
                sender.start(rid, self.core.export_kv(rid), 0, event)
            except Exception as e:
                log.warning("%s: cannot send the KV of %s to %s: %s", self.name, rid, decode_group, e)
                self.release(rid)
                if sender is not None:  # a 1-byte answer fails that receive at once (size mismatch), and
                    sender.group.isend(torch.zeros(1, dtype=torch.uint8), 0, event)  # keeps the pair in step
        elif kind == "probe":  # prefill: a decode group checks the link with a dummy payload
            _, event, decode_group = msg
            sender = self.senders.get(decode_group)
            if sender is not None:
                sender.group.isend(torch.zeros(16, dtype=torch.uint8), 0, event)
        elif kind == "release":  # prefill: the decode side will not pull it
            self.release(msg[1])
        elif kind == "connect":  # prefill: a decode group forms its pair with us
            from ..xccl import XcclConfig, XcclGroup

            _, peer, addr, port, peer_host = msg
            self.pending_pairs[peer] = self.pool.submit(
                XcclGroup.init, 1, 2, store_addr=(addr, port), host_id=self.host_id,
                config=XcclConfig(timeout_s=KV_TIMEOUT_S))
        elif kind == "abort":
            now = time.monotonic()
            for rid in msg[1]:
                self.aborted[rid] = now
            aborted = self.core.abort(msg[1])
            for rid in aborted:
                self.generation.pop(rid, None)
                self.parked_since.pop(rid, None)
                self.frontends.pop(rid, None)
            if aborted:
                self.send_to_output("outputs", [_output_to_wire(EngineOutput(r, (), FinishReason.ABORT)) + [0]
                                                for r in aborted])
        elif kind == "stop":  # from the output child: a stop string ended these requests
            ended = [r for r, g in msg[1] if self.generation.get(r) == g]
            for r in self.core.abort(ended):
                self.generation.pop(r, None)
                self.parked_since.pop(r, None)
        elif kind == "shutdown":
            return False
        return True

    def add_transfer(self, msg: list) -> None:
        _, rid, prompt, out_tokens, sp_wire, frontend, detok_state, src, kv_tokens, dtype, geometry = msg
        if rid in self.aborted:  # aborted before its transfer arrived
            self.out.try_send(src, "release", rid)
            return
        try:
            sp = SamplingParams.from_wire(sp_wire)
            if kv_tokens != len(prompt) + len(out_tokens) - 1:
                raise InvalidRequestError(f"{kv_tokens} KV tokens for {len(prompt)} prompt and {len(out_tokens)} output tokens")
            if src not in self.pairs or self.link_state.get(src) == "dead":
                raise InvalidRequestError(f"no live XCCL pair with prefill group {src}")
            task = TransferTask(rid, 1, 0, kv_tokens, dtype, KVGeometry(**geometry))

            def fetch(caches, block_ids, block_size, n):
                pair = self.pairs.get(src)  # the current pair (it may have been re-formed meanwhile)
                if pair is None or self.link_state.get(src) == "dead":
                    raise RuntimeError(f"no live XCCL pair with prefill group {src}")
                event = self.next_event(src)
                pull = XcclPull(pair, TransferTask(**{**task.__dict__, "event_id": event}), caches, block_ids,
                                block_size)  # the receive is posted before the sender is asked
                self.out.send(src, "pull", rid, event, self.name)
                self.pull_started[rid] = time.monotonic()
                return pull

            self.core.add_transferred_request(rid, prompt, out_tokens, sp, fetch)
            self.source[rid] = src
            self.added_at[rid] = time.monotonic()
        except Exception as e:
            self.out.try_send(src, "release", rid)
            self.reject(rid, frontend, f"{UNAVAILABLE}cannot continue the request on {self.name}: {e}")
            return
        self.register(rid, frontend, sp, prompt + out_tokens, detok_state=detok_state, n_out=len(out_tokens))

    def release(self, rid: str) -> None:
        """Prefill: free a parked request's blocks and forget it."""
        self.core.release_kv(rid)
        self.parked_since.pop(rid, None)
        self.generation.pop(rid, None)
        self.frontends.pop(rid, None)

    def next_event(self, peer: str) -> int:
        event = self.events[peer] = self.events.get(peer, 0) + 1
        return event

    # ---- decode: prefill peers' health -------------------------------------------------------------------
    def fail_from(self, peer: str, why: str) -> None:
        """Fail (retriably) every request whose KV is still on prefill group ``peer``."""
        sch = self.core.scheduler
        waiting = {r.request_id for r, _ in sch.awaiting_kv} | set(sch.receiving)
        victims = [rid for rid, src in self.source.items() if src == peer and rid in waiting]
        for rid in self.core.abort(victims):
            self.generation.pop(rid, None)
            self.pull_started.pop(rid, None)
            self.source.pop(rid, None)
        if victims:
            log.warning("%s: %s; %d requests go back to be prefilled again", self.name, why, len(victims))
            err = UNAVAILABLE + why
            self.send_to_output("outputs", [_output_to_wire(EngineOutput(r, (), FinishReason.ERROR, error=err)) + [0]
                                            for r in victims])

    def check_peers(self, now: float) -> None:
        """Notice a prefill group that died (same host: its pid), hung (its load reports stopped for
        ``PEER_STALE_S``, on any host) or was replaced (a new pid in the rendezvous) within about
        ``PEER_CHECK_S``: the requests whose KV is there are failed retriably. A hung group that comes
        back gets a fresh XCCL pair (transfers that timed out may have left the old one out of step)."""
        from ..xccl.poll import pid_alive

        self.last_peer_check = now
        for inst in self.spec.prefill:
            for peer in inst.group_names:
                key = f"ready/{peer}"
                pid = int(self.registry.store.get(key)) if self.registry.store.check([key]) else None
                if pid != self.peer_pid.get(peer):
                    if pid is not None and peer not in self.pending_pairs:
                        self.fail_from(peer, f"prefill group {peer} was replaced")
                        self.pair_with(peer)
                    continue
                load = self.registry.get_json(f"load/{peer}") or {}
                seq, since = self.peer_seen.get(peer, (-1, now))
                if load.get("seq") != seq:
                    self.peer_seen[peer] = (load.get("seq"), now)
                stale = now - self.peer_seen[peer][1] > PEER_STALE_S
                dead = stale or (inst.host == self.host_id and not pid_alive(pid))
                if dead and self.link_state.get(peer) != "dead":
                    self.link_state[peer] = "dead"
                    why = "stopped reporting" if stale and pid_alive(pid) else "died"
                    self.fail_from(peer, f"prefill group {peer} (pid {pid}) {why}")
                elif not dead and self.link_state.get(peer) == "dead" and peer not in self.pending_pairs:
                    self.pair_with(peer)  # it is back: a fresh pair (link state "ok" once formed)

    def probe_links(self, now: float) -> None:
        """Saturated or broken? When a peer's requests have waited here more than ``PROBE_AFTER_S`` for
        blocks and no pull from that peer is in flight (so the pair's queue is empty), send a 16-byte
        probe over the pair. Back within ``PROBE_TIMEOUT_S``: the link works and the wait is this side's
        saturation (back-pressure, as intended). Not back: the link is broken, and the requests waiting
        on that peer are failed retriably (their frontends resume them elsewhere)."""
        for peer, (handle, sent) in list(self.probes.items()):
            if handle.test():
                del self.probes[peer]
                try:
                    handle.wait(0)
                    self.link_state[peer] = "saturated"
                except Exception as e:
                    self.link_state[peer] = "broken"
                    self.fail_from(peer, f"the KV link to {peer} is broken ({e})")
            elif now - sent > PROBE_TIMEOUT_S:
                del self.probes[peer]
                self.link_state[peer] = "broken"
                self.fail_from(peer, f"the KV link to {peer} is broken (probe not back in {PROBE_TIMEOUT_S:.0f} s)")
        sch = self.core.scheduler
        pulling = {self.source.get(rid) for rid in sch.receiving}
        waiting = {self.source.get(req.request_id) for req, _ in sch.awaiting_kv
                   if now - self.added_at.get(req.request_id, now) > PROBE_AFTER_S}
        for peer in waiting - pulling - {None} - set(self.probes):
            if now - self.probed_at.get(peer, 0.0) < PROBE_AFTER_S:
                continue
            group = self.pairs.get(peer)
            if group is not None:
                event = self.next_event(peer)
                handle = group.irecv(torch.empty(16, dtype=torch.uint8), 1, event)
                self.out.try_send(peer, "probe", event, self.name)
                self.probes[peer] = (handle, now)
                self.probed_at[peer] = now

    # ---- the loop ------------------------------------------------------------------------------------
    def idle_timeout_ms(self) -> int:
        sch = self.core.scheduler
        if sch.waiting or sch.running:
            return 0
        if sch.awaiting_kv or sch.receiving or any(s.inflight for s in self.senders.values()) or self.pending_pairs:
            return 2
        return 50

    def advance_pairs(self) -> None:
        for peer, fut in list(self.pending_pairs.items()):
            if fut.done():
                del self.pending_pairs[peer]
                try:
                    group = fut.result()
                except Exception as e:
                    log.error("%s: XCCL pair with %s failed: %s", self.name, peer, e)
                    continue
                old = self.pairs.pop(peer, None)
                if old is not None:
                    old.close()
                self.pairs[peer] = group
                self.senders[peer] = KVSender(group)
                self.link_state[peer] = "ok"
                self.events[peer] = 0
                log.info("%s: XCCL pair with %s over %s", self.name, peer, group.transport(1 - group.rank))

    def advance_sends(self) -> None:
        now = time.monotonic()
        for sender in self.senders.values():
            for rid, err in sender.poll():
                if err is not None:
                    log.warning("%s: KV send of %s failed: %s", self.name, rid, err)
                self.release(rid)
        for rid, since in list(self.parked_since.items()):
            if now - since > PARK_TTL_S and not any(rid in s.inflight for s in self.senders.values()):
                log.warning("%s: nobody pulled %s for %.0f s; freeing its blocks", self.name, rid, PARK_TTL_S)
                frontend = self.frontends.get(rid)
                self.release(rid)
                if frontend:  # its frontend resumes it (a late pull gets a short answer and fails)
                    self.out.try_send(frontend, "outputs", [error_output(
                        rid, f"its KV waited {PARK_TTL_S:.0f} s on {self.name} and was freed", self.name)])
        for rid, since in list(self.aborted.items()):
            if now - since > ABORTED_TTL_S:
                del self.aborted[rid]

    def run(self) -> None:
        shell = self.inst.name + "/shell"
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        parent = os.getppid()
        last_stats = last_published = 0.0
        gc.disable()
        running = True
        while running:
            timeout = self.idle_timeout_ms()
            while poller.poll(timeout):
                timeout = 0
                if not self.handle(unpack(self.inbox.recv())):
                    running = False
                    break
            if not running:
                break
            if not self.child.is_alive():
                raise RuntimeError(f"output process (pid {self.child.pid}) died with exit code {self.child.exitcode}")
            if self.pending_pairs:
                self.advance_pairs()
            changed = False
            if self.core.has_work():
                outs = self.core.step()
                if outs:
                    now = time.monotonic()
                    for o in outs:
                        if o.kv_ready_tokens:
                            self.parked_since[o.request_id] = now
                        if o.finished:
                            self.generation.pop(o.request_id, None)
                            self.frontends.pop(o.request_id, None)
                    self.send_to_output("outputs", [_output_to_wire(o) + [o.kv_ready_tokens] for o in outs])
                    changed = any(o.finished or o.kv_ready_tokens for o in outs)
                    if self.core.num_steps % GC_EVERY_STEPS == 0:
                        gc.collect()
            if self.senders or self.parked_since or self.aborted:
                self.advance_sends()
            now = time.monotonic()
            if self.role == "decode":
                if self.pull_started:
                    receiving = self.core.scheduler.receiving
                    for rid in [r for r in self.pull_started if r not in receiving]:
                        del self.pull_started[rid]
                if now - self.last_peer_check >= PEER_CHECK_S:
                    try:
                        self.check_peers(now)
                        self.probe_links(now)
                    except (RuntimeError, OSError) as e:  # the rendezvous store is unreachable: retry later
                        log.warning("%s: peer check failed: %s", self.name, e)
                        self.last_peer_check = now
                    for rid in [r for r in self.source if r not in self.core.scheduler.requests]:
                        del self.source[rid]
                        self.added_at.pop(rid, None)
            if now - last_stats >= (0.02 if changed else HEARTBEAT_S):
                self.seq += 1
                load = {**group_load(self.core), "seq": self.seq, "links": self.link_state}
                self.out.try_send(shell, "stats", self.name, os.getpid(), load)
                if now - last_published >= HEARTBEAT_S:  # for peers on other hosts, operators and tests
                    last_published = now
                    with contextlib.suppress(RuntimeError, OSError):
                        self.registry.set_json(f"load/{self.name}", load)
                last_stats = now
            if os.getppid() != parent:
                log.warning("%s: launcher gone; exiting", self.name)
                break

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.to_output.send(pack("shutdown"), zmq.NOBLOCK)
        self.child.join(timeout=2)
        if self.child.is_alive():
            self.child.terminate()
        for group in self.pairs.values():
            group.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.out.close()
        self.inbox.close(linger=0)
        self.to_output.close(linger=0)
        self.ctx.term()


def run_group(spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> None:
    """Entry point of a DP group's engine-core process."""
    group = GroupCore(spec, name, store_addr)
    try:
        group.start()
        group.run()
    except Exception:
        log.error("%s failed:\n%s", name, traceback.format_exc())
        raise
    finally:
        group.close()


# ---- output child ------------------------------------------------------------------------------------------


def run_group_output(model_dir: str, name: str, role: str, store_addr: tuple[str, int], core_endpoint: str,
                     feed: str, dtype: str, geometry: dict) -> None:
    """Detokenise the group's outputs and stream each request's deltas to its frontend; on a prefill
    group, hand each request over to its decode instance after the first token."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..engine.detokenizer import IncrementalDetokenizer
    from ..model.loader import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    parent = os.getppid()
    ctx = zmq.Context()
    registry = Registry(store_addr)
    out = Outbox(ctx, registry)
    inp = ctx.socket(zmq.PULL)
    inp.connect(feed)
    to_core = ctx.socket(zmq.PUSH)
    to_core.connect(core_endpoint)
    to_core.send(pack("output_ready"))
    states: dict[str, dict] = {}
    last_check = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now - last_check >= ORPHAN_CHECK_S:  # a frontend was replaced: its clients are gone
                last_check = now
                orphans = [[rid, st["admission"]] for rid, st in states.items()
                           if st["endpoint"] and out.current(st["frontend"]) not in (None, st["endpoint"])]
                if orphans:
                    log.warning("%s: %d requests of replaced frontends stopped", name, len(orphans))
                    for rid, _ in orphans:
                        del states[rid]
                    to_core.send(pack("stop", orphans))
            if not inp.poll(int(ORPHAN_CHECK_S * 1000)):
                if os.getppid() != parent:
                    return
                continue
            msg = unpack(inp.recv())
            if msg[0] == "shutdown":
                return
            if msg[0] == "register":
                _, rid, admission, frontend, detok_state, tail, stop, include, n_out, handoff = msg
                detok = (IncrementalDetokenizer.resume(tokenizer, detok_state) if detok_state
                         else IncrementalDetokenizer(tokenizer, tail, tuple(stop), include))
                states[rid] = {"detok": detok, "count": n_out, "admission": admission, "frontend": frontend,
                               "handoff": handoff, "ids": [], "endpoint": out.current(frontend)}
                continue
            by_frontend: dict[str, list] = {}
            stopped = []
            for w in msg[1]:
                out_ = _output_from_wire(w[:7])
                kv_ready = w[7]
                st = states.get(out_.request_id)
                if st is None:
                    continue
                detok = st["detok"]
                st["count"] += len(out_.new_token_ids)
                st["ids"] += out_.new_token_ids
                delta, reason, stop_engine = detokenize(detok, out_, st["count"])
                if stop_engine:
                    stopped.append([out_.request_id, st["admission"]])
                by_frontend.setdefault(st["frontend"], []).append(delta + [name])
                if reason is not None:
                    del states[out_.request_id]
                elif kv_ready and st["handoff"]:
                    decode, prompt, sp_wire = st["handoff"]
                    del states[out_.request_id]
                    ok = out.try_send(f"{decode}/shell", "transfer", out_.request_id, prompt, st["ids"], sp_wire,
                                      st["frontend"], detok.state(), name, kv_ready, dtype, geometry)
                    if not ok:
                        stopped.append([out_.request_id, st["admission"]])
                        by_frontend[st["frontend"]].append(error_output(
                            out_.request_id, f"decode instance {decode} is unavailable", name))
            for frontend, deltas in by_frontend.items():
                out.try_send(frontend, "outputs", deltas)
            if stopped:
                to_core.send(pack("stop", stopped))
    finally:
        out.close()
        inp.close(linger=0)
        to_core.close(linger=200)
        ctx.term()
