"""A job executor: picks the prefill and decode instance of each request.

Several run; a frontend sends each request to a randomly chosen live one, so none is a single point of
failure (an executor holds no request state after forwarding). It chooses the prefill instance by
prefix-cache hit, load and prompt length (long and short prompts kept apart), and the decode instance
by KV pressure (:mod:`.routing`), from the instance reports the TE-shells send it. It tells every
frontend it is alive every ``HEARTBEAT_S``.
"""

from __future__ import annotations

import os

import zmq

from .net import DEAD_AFTER_S, ControlProcess, Outbox, Registry, bind_inbox, error_output, run_control
from .routing import Target, pick_decode, pick_prefill
from .shell import merge_stats
from .spec import DeploymentSpec


class Executor(ControlProcess):
    def __init__(self, spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> None:
        self.spec, self.name = spec, name
        self.registry = Registry(store_addr)
        self.ctx = zmq.Context()
        self.inbox, endpoint = bind_inbox(self.ctx, spec.hosts[spec.executor_host])
        self.out = Outbox(self.ctx, self.registry)
        self.prefill = {i.name: Target(i.name, prompts=i.prompts) for i in spec.prefill}
        self.decode = {i.name: Target(i.name) for i in spec.decode}
        self.mixed = {i.name: Target(i.name, prompts=i.prompts) for i in spec.mixed}
        self.frontends = [f"frontend-{i}" for i in range(spec.frontends)]
        self.endpoint = endpoint
        self.registry.publish(name, endpoint)
        self.registry.store.set(f"ready/{name}", str(os.getpid()))

    @staticmethod
    def alive(targets: dict[str, Target], now: float) -> list[Target]:
        return [t for t in targets.values() if t.seen and now - t.seen < DEAD_AFTER_S and t.load.get("alive", 0) > 0]

    def handle(self, msg: list, now: float) -> None:
        kind = msg[0]
        if kind == "submit":  # rid, prompt, sampling, frontend
            _, rid, prompt, sp_wire, frontend = msg
            if self.mixed:  # colocated instances: one pick, by the prefill cost model
                m = pick_prefill(self.alive(self.mixed, now), prompt, self.spec.long_prompt_tokens)
                if m is None or not self.out.try_send(f"{m.name}/shell", "add", rid, prompt, sp_wire, frontend, None):
                    self.out.try_send(frontend, "outputs", [error_output(
                        rid, "no live colocated instance; retry the request", self.name)])
                return
            p = pick_prefill(self.alive(self.prefill, now), prompt, self.spec.long_prompt_tokens)
            need = -(-(len(prompt) + sp_wire.get("max_tokens", 16)) // 16)
            d = pick_decode(self.alive(self.decode, now), need)
            if p is None or d is None:
                missing = "prefill" if p is None else "decode"
                self.out.try_send(frontend, "outputs", [error_output(
                    rid, f"no live {missing} instance; retry the request", self.name)])
                return
            if not self.out.try_send(f"{p.name}/shell", "add", rid, prompt, sp_wire, frontend, d.name):
                self.out.try_send(frontend, "outputs", [error_output(
                    rid, f"prefill instance {p.name} is unavailable; retry the request", self.name)])
        elif kind == "abort":  # rids: wherever they are now
            for inst in self.spec.instances:
                self.out.try_send(f"{inst.name}/shell", "abort", msg[1])
        elif kind == "load":
            _, inst, summary = msg
            target = self.prefill.get(inst) or self.decode.get(inst) or self.mixed.get(inst)
            if target is not None:
                target.report(summary, now)

    def tick(self, now: float) -> None:
        prefill, decode = self.alive(self.prefill, now), self.alive(self.decode, now)
        mixed = self.alive(self.mixed, now)
        alive = prefill + decode + mixed
        stats = merge_stats([t.load.get("engine", {}) for t in alive])
        pids = {g: pid for t in alive for g, pid in t.load.get("pids", {}).items()}
        ready = bool(mixed) if self.mixed else bool(prefill and decode)
        for fe in self.frontends:
            self.out.try_send(fe, "hb", self.name, ready, stats, pids, self.endpoint)


def run_executor(spec: DeploymentSpec, name: str, store_addr: tuple[str, int]) -> None:
    run_control(lambda: Executor(spec, name, store_addr))
