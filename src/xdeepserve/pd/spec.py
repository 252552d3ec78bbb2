"""The deployment file: which roles run, how many, on which host, with which engine settings.

A disaggregated deployment (YAML)::

    model: demo                      # a checkpoint directory, or "demo" for the built-in model
    hosts:                           # host id -> the address its processes bind (default: one host)
      host-a: {address: 127.0.0.1}
      host-b: {address: 127.0.0.1}
    rendezvous: 127.0.0.1:0          # torch TCPStore of the deployment (port 0: any free port)
    engine: {max_model_len: 256}     # EngineConfig fields for every DP group
    frontends: {count: 2, port: 8000, host: host-a}
    executors: {count: 2, host: host-a}
    prefill:                         # prefill instances, each with its DP groups
      - {dp_groups: 1, host: host-a, prompts: short}
      - {dp_groups: 1, host: host-b, prompts: long}
    decode:
      - {dp_groups: 2, host: host-b, engine: {num_kv_blocks: 64}}
    long_prompt_tokens: 128          # prompts at least this long are "long"

A colocated deployment is one ``xds serve`` process (the engine core and its output child)::

    model: demo
    colocated: {port: 8000}

or, behind the same frontends and executors, a list of colocated instances (each DP group prefills
and decodes its own requests) — the baseline a disaggregated deployment is compared with::

    colocated:
      - {dp_groups: 2}

Unknown keys and bad values are refused with the path of the offending key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import EngineConfig

ENGINE_FIELDS = {f.name for f in dataclasses.fields(EngineConfig)} - {"model", "prefill_only"}
PROMPT_CLASSES = ("any", "short", "long")


class SpecError(ValueError):
    """The deployment file is malformed; the message names the key."""


@dataclass(frozen=True)
class InstanceSpec:
    role: str  # "prefill", "decode" or "colocated"
    index: int
    dp_groups: int
    host: str
    engine: dict[str, Any]
    prompts: str = "any"  # prefill: which prompt lengths it prefers

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    def group_name(self, g: int) -> str:
        return f"{self.name}.{g}"

    @property
    def group_names(self) -> list[str]:
        return [self.group_name(g) for g in range(self.dp_groups)]


@dataclass(frozen=True)
class DeploymentSpec:
    model: str
    hosts: dict[str, str]  # host id -> bind address
    rendezvous: tuple[str, int]
    engine: dict[str, Any] = field(default_factory=dict)
    colocated: bool = False
    port: int = 8000  # frontends' shared port (or the colocated server's)
    frontends: int = 1
    frontend_host: str = ""
    executors: int = 1
    executor_host: str = ""
    prefill: tuple[InstanceSpec, ...] = ()
    decode: tuple[InstanceSpec, ...] = ()
    mixed: tuple[InstanceSpec, ...] = ()  # colocated instances behind frontends and executors
    long_prompt_tokens: int = 256

    @property
    def instances(self) -> tuple[InstanceSpec, ...]:
        return (*self.prefill, *self.decode, *self.mixed)

    def model_dir(self) -> str:
        """The checkpoint directory ("demo": the built-in demo model)."""
        if self.model == "demo":
            from ..cli import demo_model_dir

            return str(demo_model_dir())
        if not (Path(self.model) / "config.json").is_file():
            raise SpecError(f"model {self.model!r}: no checkpoint there (config.json missing)")
        return self.model

    def engine_config(self, inst: InstanceSpec | None, model_dir: str) -> EngineConfig:
        """A DP group's engine settings. Unless ``num_threads`` is set, the host's cores are split evenly
        among the DP groups placed on it (oversubscribed thread pools spin against each other)."""
        opts = {**self.engine, **(inst.engine if inst else {})}
        if inst is not None and "num_threads" not in opts:
            groups = sum(i.dp_groups for i in self.instances if i.host == inst.host)
            opts["num_threads"] = max(1, (os.cpu_count() or 1) // groups)
        return EngineConfig(model=model_dir, prefill_only=inst is not None and inst.role == "prefill", **opts)

    def processes(self, host: str | None = None) -> list[tuple[str, str]]:
        """(role, name) of every process of the deployment (on ``host`` only, when given), in start order:
        DP groups first (they publish the model info), then TE-shells, executors, frontends."""
        procs: list[tuple[str, str, str]] = []
        for inst in self.instances:
            procs += [("group", g, inst.host) for g in inst.group_names]
        procs += [("shell", inst.name, inst.host) for inst in self.instances]
        procs += [("executor", f"executor-{i}", self.executor_host) for i in range(self.executors)]
        procs += [("frontend", f"frontend-{i}", self.frontend_host) for i in range(self.frontends)]
        return [(role, name) for role, name, h in procs if host is None or h == host]

    def host_of(self, name: str) -> str:
        if name.startswith("frontend-"):
            return self.frontend_host
        if name.startswith("executor-"):
            return self.executor_host
        return self.instance(name.split(".")[0]).host

    def instance(self, name: str) -> InstanceSpec:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(f"no instance {name!r} in the deployment")

    def group(self, name: str) -> tuple[InstanceSpec, int]:
        inst_name, _, g = name.partition(".")
        inst = self.instance(inst_name)
        if not g.isdigit() or int(g) >= inst.dp_groups:
            raise KeyError(f"no DP group {name!r} in the deployment")
        return inst, int(g)


# ---- parsing -------------------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _only(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _engine(value: Any, where: str) -> dict:
    d = _mapping(value, where)
    _only(d, ENGINE_FIELDS, where)
    return dict(d)


def _host(value: Any, hosts: dict[str, str], where: str) -> str:
    if value is None:
        return next(iter(hosts))
    if value not in hosts:
        raise SpecError(f"{where}: unknown host {value!r} (hosts: {', '.join(hosts)})")
    return value


def _instances(value: Any, role: str, hosts: dict[str, str]) -> tuple[InstanceSpec, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{role}: expected a non-empty list of instances")
    out = []
    for i, item in enumerate(value):
        where = f"{role}[{i}]"
        d = _mapping(item, where)
        _only(d, {"dp_groups", "host", "engine", "prompts"} if role != "decode" else {"dp_groups", "host", "engine"},
              where)
        prompts = d.get("prompts", "any")
        if prompts not in PROMPT_CLASSES:
            raise SpecError(f"{where}.prompts: expected one of {', '.join(PROMPT_CLASSES)}, got {prompts!r}")
        out.append(InstanceSpec(role, i, _int(d.get("dp_groups", 1), f"{where}.dp_groups", 1),
                                _host(d.get("host"), hosts, f"{where}.host"), _engine(d.get("engine"), f"{where}.engine"),
                                prompts))
    return tuple(out)


def parse_rendezvous(value: str, where: str = "rendezvous") -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SpecError(f"{where}: expected HOST:PORT, got {value!r}")
    return host, int(port)


def parse_spec(data: Any) -> DeploymentSpec:
    top = _mapping(data, "deployment")
    _only(top, {"model", "hosts", "rendezvous", "engine", "colocated", "frontends", "executors", "prefill", "decode",
                "long_prompt_tokens"}, "deployment")
    model = top.get("model", "demo")
    if not isinstance(model, str) or not model:
        raise SpecError(f"model: expected a checkpoint directory or 'demo', got {model!r}")
    raw_hosts = _mapping(top.get("hosts"), "hosts") or {"local": {"address": "127.0.0.1"}}
    hosts = {}
    for h, d in raw_hosts.items():
        d = _mapping(d, f"hosts.{h}")
        _only(d, {"address"}, f"hosts.{h}")
        hosts[str(h)] = str(d.get("address", "127.0.0.1"))
    first = next(iter(hosts))
    rendezvous = parse_rendezvous(top.get("rendezvous", f"{hosts[first]}:0"))
    engine = _engine(top.get("engine"), "engine")
    mixed: tuple[InstanceSpec, ...] = ()
    if isinstance(top.get("colocated"), list):
        extra = sorted(set(top) & {"prefill", "decode"})
        if extra:
            raise SpecError(f"colocated: colocated instances do not mix with a {extra[0]!r} section")
        mixed = _instances(top["colocated"], "colocated", hosts)
    elif "colocated" in top:
        extra = sorted(set(top) & {"frontends", "executors", "prefill", "decode"})
        if extra:
            raise SpecError(f"colocated: a colocated deployment has no {extra[0]!r} section")
        d = _mapping(top["colocated"], "colocated")
        _only(d, {"port"}, "colocated")
        return DeploymentSpec(model, hosts, rendezvous, engine, colocated=True,
                              port=_int(d.get("port", 8000), "colocated.port"))
    for key in ("prefill", "decode") if not mixed else ():
        if key not in top:
            raise SpecError(f"{key}: a disaggregated deployment needs at least one {key} instance "
                            "(or write a 'colocated' section)")
    fe = _mapping(top.get("frontends"), "frontends")
    _only(fe, {"count", "port", "host"}, "frontends")
    ex = _mapping(top.get("executors"), "executors")
    _only(ex, {"count", "host"}, "executors")
    prefill = _instances(top["prefill"], "prefill", hosts) if not mixed else ()
    decode = _instances(top["decode"], "decode", hosts) if not mixed else ()
    for inst in (*prefill, *decode, *mixed):
        if "max_model_len" in inst.engine:
            raise SpecError(f"{inst.role}[{inst.index}].engine.max_model_len: every DP group must serve the same "
                            "max_model_len (a request moves between them); set it in the top-level engine")
    return DeploymentSpec(
        model, hosts, rendezvous, engine,
        port=_int(fe.get("port", 8000), "frontends.port"),
        frontends=_int(fe.get("count", 1), "frontends.count", 1),
        frontend_host=_host(fe.get("host"), hosts, "frontends.host"),
        executors=_int(ex.get("count", 1), "executors.count", 1),
        executor_host=_host(ex.get("host"), hosts, "executors.host"),
        prefill=prefill,
        decode=decode,
        mixed=mixed,
        long_prompt_tokens=_int(top.get("long_prompt_tokens", 256), "long_prompt_tokens", 1),
    )


def load_spec(path: str | Path) -> DeploymentSpec:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such deployment file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    try:
        return parse_spec(data)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
