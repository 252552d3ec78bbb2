"""The TE-shell of an instance: a thin dispatcher in front of the instance's DP groups.

It takes requests (prefill instance: from job executors; decode instance: transfer tasks from prefill
output processes), picks a DP group (:mod:`.routing`) and forwards them; it does not touch tokens on the
way back (each DP group's output process streams to the frontend directly). It aggregates its groups'
load reports into one instance report for the executors, and their health: a group is alive while its
process exists (the shell runs on the group's host) and reported within ``STALE_S``.
"""

from __future__ import annotations

import logging
import os

import zmq

from ..xccl.poll import pid_alive
from .net import ControlProcess, Outbox, Registry, bind_inbox, error_output, run_control
from .routing import Target, pick_decode, pick_prefill
from .spec import DeploymentSpec

log = logging.getLogger(__name__)

STALE_S = 5.0  # a group whose reports stop this long is skipped (a long prefill step can be a few seconds)


def merge_stats(stats: list[dict]) -> dict:
    """Engine statistics of several DP groups as one: counters summed, KV usage averaged."""
    out: dict = {}
    for st in stats:
        for k, v in st.items():
            out[k] = out.get(k, 0) + v
    if stats and "kv_cache_usage" in out:
        out["kv_cache_usage"] /= len(stats)
    return out


class Shell(ControlProcess):
    def __init__(self, spec: DeploymentSpec, instance: str, store_addr: tuple[str, int]) -> None:
        self.spec, self.inst = spec, spec.instance(instance)
        self.name = f"{instance}/shell"
        self.registry = Registry(store_addr)
        self.ctx = zmq.Context()
        self.inbox, endpoint = bind_inbox(self.ctx, spec.hosts[self.inst.host])
        self.out = Outbox(self.ctx, self.registry)
        self.groups = {g: Target(g) for g in self.inst.group_names}
        self.pids: dict[str, int] = {}
        self.executors = [f"executor-{i}" for i in range(spec.executors)]
        self.registry.publish(self.name, endpoint)
        self.registry.store.set(f"ready/{self.name}", str(os.getpid()))

    def alive(self, now: float) -> list[Target]:
        return [t for g, t in self.groups.items()
                if t.seen and now - t.seen < STALE_S and g in self.pids and pid_alive(self.pids[g])]

    def summary(self, now: float) -> dict:
        alive = self.alive(now)
        loads = [t.load for t in alive]
        return {
            "alive": len(alive),
            "groups": len(self.groups),
            "waiting_tokens": sum(x.get("waiting_tokens", 0) for x in loads),
            "batch": sum(x.get("batch", 0) for x in loads),
            "max_batch": sum(x.get("max_batch", 0) for x in loads),
            "num_blocks": sum(x.get("num_blocks", 0) for x in loads),
            "used_blocks": sum(x.get("used_blocks", 0) for x in loads),
            "reserved_blocks": sum(x.get("reserved_blocks", 0) for x in loads),
            "parked": sum(x.get("parked", 0) for x in loads),
            "pids": {t.name: self.pids[t.name] for t in alive},
            "engine": merge_stats([x["stats"] for x in loads if "stats" in x]),
        }

    def handle(self, msg: list, now: float) -> None:
        kind = msg[0]
        if kind == "stats":
            _, group, pid, load = msg
            if group in self.groups:
                if self.pids.get(group) != pid:
                    self.out.refresh(group)  # a replacement: connect to its new endpoint
                self.pids[group] = pid
                self.groups[group].report(load, now)
        elif kind == "add":  # prefill: rid, prompt, sampling, frontend, decode instance
            target = pick_prefill(self.alive(now), msg[2])
            if target is None or not self.out.try_send(target.name, *msg):
                self.tick(now)  # the executors' view is a heartbeat old: correct it before the frontend retries
                self.out.try_send(msg[4], "outputs", [error_output(
                    msg[1], f"no live DP group in {self.inst.name}; retry the request", self.name)])
            else:  # the frontend watches the group that holds the request
                self.out.try_send(msg[4], "routed", msg[1], target.name, self.pids[target.name], 0)
        elif kind == "transfer":  # decode: rid, prompt, out, sampling, frontend, detok, src group, ...
            _, rid, prompt, out_tokens, sp_wire, frontend = msg[:6]
            src = msg[7]
            need = len(prompt) + sp_wire.get("max_tokens", 16)
            target = pick_decode(self.alive(now), -(-need // 16))
            if target is None or not self.out.try_send(target.name, *msg):
                self.tick(now)  # as for "add": the executors stop routing here before the retry
                self.out.try_send(src, "release", rid)
                self.out.try_send(frontend, "outputs", [error_output(
                    rid, f"no live DP group in {self.inst.name}; retry the request", self.name)])
            else:
                self.out.try_send(frontend, "routed", rid, target.name, self.pids[target.name], 1)
        elif kind == "abort":
            for g in self.groups:
                self.out.try_send(g, "abort", msg[1])

    def tick(self, now: float) -> None:
        summary = self.summary(now)
        for ex in self.executors:
            self.out.try_send(ex, "load", self.inst.name, summary)


def run_shell(spec: DeploymentSpec, instance: str, store_addr: tuple[str, int]) -> None:
    run_control(lambda: Shell(spec, instance, store_addr))
