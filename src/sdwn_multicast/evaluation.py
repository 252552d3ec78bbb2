"""Evaluation harness: every method on the same seeded requests; CSV, Markdown summary, PNG plots.

A request is (topology, snapshot, source, members). For each topology one seeded simulator runs forward
and each request is drawn a random number of 10 s steps after the previous one, so requests see
different hours of the day, traffic and failures. Every method builds its tree on the same snapshot
graph; trees are validated and measured with :func:`tree_metrics`.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from .baselines import METHODS, ProblemTooLargeError, SolverError, exact_steiner_tree, get_method, kmb_tree
from .simulator import LinkStateSimulator, LinkStateSnapshot, with_link_failed
from .topology import FIXED_TOPOLOGIES, MultiDomainTopology, Node, load_topology
from .trees import (
    MulticastError,
    compose_cross_domain_tree,
    graft_member,
    prune_member,
    repair_link_failure,
    tree_cost,
    validate_tree,
)

COMPOSED_PREFIX = "composed-"
DEFAULT_METHODS: tuple[str, ...] = (
    "spt", "kmb", "mehlhorn", "tm", "sctf", "ga", "qlearning", "ilp", "kmb-bw", "kmb-delay", "kmb-loss", "kmb-hops",
    "composed-kmb", "composed-ilp",
)
METRICS: dict[str, str] = {
    "bottleneck_bw_mbps": "mean bottleneck bandwidth of source->receiver paths (Mb/s, higher is better)",
    "mean_link_delay_ms": "mean link delay over tree links (ms)",
    "mean_link_loss": "mean link loss over tree links",
    "tree_length": "tree length (links)",
    "max_e2e_delay_ms": "end-to-end delay to the farthest receiver (ms)",
    "delivery_prob": "mean probability that a packet reaches a receiver",
    "cost_ratio": "tree cost / exact optimum cost (same cost weight)",
    "decision_time_ms": "time to build the tree (ms)",
}


@dataclass(frozen=True)
class EvalConfig:
    topologies: tuple[str, ...] = ("paper30", "geant", "germany50")
    methods: tuple[str, ...] = DEFAULT_METHODS
    n_requests: int = 100
    group_size: tuple[int, int] = (3, 12)
    cost_weight: str = "delay_ms"
    n_domains: int = 3
    seed: int = 0
    steps_between_requests: tuple[int, int] = (30, 720)
    ilp_time_limit_s: float = 60.0
    #: folder of the ``marl`` method's trained policy (None: the committed paper30 checkpoint)
    marl_checkpoint: str | None = None


@dataclass(frozen=True)
class EvalRequest:
    request_id: int
    topology: str
    step: int
    hour: float
    source: Node
    members: tuple[Node, ...]


@dataclass
class EvalResult:
    config: EvalConfig
    rows: pd.DataFrame
    elapsed_s: float
    extra: dict = field(default_factory=dict)


def tree_metrics(graph: nx.Graph, tree: nx.Graph, source: Node, members: tuple[Node, ...], cost_weight: str
                 ) -> dict[str, float]:
    """Quality of a valid tree on the snapshot graph (paths are the tree paths from the source)."""
    edges = list(tree.edges)
    attrs = [graph.edges[e] for e in edges]
    paths = nx.single_source_shortest_path(tree, source)
    bottleneck, e2e, delivery = [], [], []
    for m in members:
        p = paths[m]
        hops = [graph.edges[a, b] for a, b in zip(p, p[1:])]
        bottleneck.append(min((h["free_bw_mbps"] for h in hops), default=math.inf))
        e2e.append(sum(h["delay_ms"] for h in hops))
        delivery.append(float(np.prod([1.0 - h["loss"] for h in hops])))
    return {
        "bottleneck_bw_mbps": float(np.mean(bottleneck)),
        "mean_link_delay_ms": float(np.mean([a["delay_ms"] for a in attrs])) if attrs else 0.0,
        "mean_link_loss": float(np.mean([a["loss"] for a in attrs])) if attrs else 0.0,
        "tree_length": float(len(edges)),
        "max_e2e_delay_ms": float(max(e2e)),
        "delivery_prob": float(np.mean(delivery)),
        "cost": tree_cost(graph, tree, cost_weight),
    }


def build_tree(method: str, topology: MultiDomainTopology, graph: nx.Graph, source: Node,
               members: tuple[Node, ...], cost_weight: str, ilp_time_limit_s: float = 60.0) -> nx.Graph:
    """Build one tree by method name; ``composed-<m>`` = inter-domain plan + ``<m>`` inside each domain."""
    if method.startswith(COMPOSED_PREFIX):
        intra = get_method(method[len(COMPOSED_PREFIX):])
        return compose_cross_domain_tree(topology, graph, source, members, intra.weight or cost_weight,
                                         intra.algorithm)
    m = get_method(method)
    if method == "ilp":
        return m.algorithm(graph, source, members, cost_weight, time_limit_s=ilp_time_limit_s)
    return m.build(graph, source, members, cost_weight)


# ---- the learned method (MA-CDMR agents, issue 8) ----
MARL_METHOD = "marl"
#: the learned methods and their objective (``MarlEnvConfig.objective``): ``marl`` is bandwidth-weighted,
#: ``marl-delay`` / ``marl-loss`` are the delay- and loss-weighted variants (compare with kmb / kmb-loss),
#: ``marl-cost`` minimises the tree cost (sum of link delays) the exact ILP minimises (compare with ilp)
MARL_METHODS: dict[str, str] = {MARL_METHOD: "bandwidth", "marl-delay": "delay", "marl-loss": "loss",
                                 "marl-cost": "cost"}
MARL_CHECKPOINTS = Path(__file__).resolve().parent / "marl" / "checkpoints"
DEFAULT_MARL_CHECKPOINT = MARL_CHECKPOINTS / "paper30"


def default_marl_checkpoint(objective: str = "bandwidth") -> Path:
    """The committed paper30 checkpoint of an objective (``paper30``, ``paper30-delay``, ``paper30-loss``)."""
    return DEFAULT_MARL_CHECKPOINT if objective == "bandwidth" else MARL_CHECKPOINTS / f"paper30-{objective}"


class MarlCheckpointError(ValueError):
    """The ``marl`` method's checkpoint is missing or does not fit the topology (number of domains)."""


def committed_checkpoint_for(topology: MultiDomainTopology, objective: str = "bandwidth") -> Path:
    """The committed checkpoint of ``objective`` trained on ``topology`` (by name, e.g. ``paper30``,
    ``geant-k3``), else the paper30 one of that objective: the topology is then held out (never seen in
    training)."""
    import json

    for d in sorted(MARL_CHECKPOINTS.iterdir()):
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            continue
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("objective", "bandwidth") != objective:
            continue
        name = cfg["topology"] if cfg.get("n_domains") is None else f"{cfg['topology']}-k{cfg['n_domains']}"
        if name.lower() == topology.name.lower():
            return d
    return default_marl_checkpoint(objective)


class MarlRouter:
    """Trained MA-CDMR agents played greedily on one request's snapshot; the tree they build, or an error.

    With ``checkpoint_dir`` every topology is served by that checkpoint; without, each topology by the
    committed checkpoint trained on it (:func:`committed_checkpoint_for`), paper30's for held-out ones.
    The actors are size-independent (per-crossing / per-node encoders), so a checkpoint serves any
    topology with the domain count it was trained with; the critics are not used here.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None, torch_threads: int | None = 1,
                 objective: str = "bandwidth"):
        import torch

        # One decision is ~20 forward passes of MLPs with a few thousand weights: intra-op threads only add
        # synchronisation, and on a shared 2-core machine they made decisions 20x slower (about 240 ms
        # instead of 12 ms per paper30 tree), so the router runs torch on one thread unless told otherwise.
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.fixed = checkpoint_dir is not None
        self.objective = objective
        self.checkpoint_dir = Path(checkpoint_dir) if self.fixed else default_marl_checkpoint(objective)
        self._loaded: dict[Path, tuple] = {}
        self.policy, self.train_config = self._load(self.checkpoint_dir)
        self.n_domains = int(self.policy.n_domains)
        self.served: dict[str, Path] = {}  # topology name -> checkpoint that served it

    def _load(self, path: Path):
        from .marl.train import load_policy

        if path not in self._loaded:
            try:
                self._loaded[path] = load_policy(path)
            except FileNotFoundError as exc:
                raise MarlCheckpointError(f"marl: {exc}") from None
        return self._loaded[path]

    def checkpoint_for(self, topology: MultiDomainTopology) -> Path:
        return self.checkpoint_dir if self.fixed else committed_checkpoint_for(topology, self.objective)

    def check_topology(self, topology: MultiDomainTopology) -> None:
        path = self.checkpoint_for(topology)
        policy, cfg = self._load(path)
        if topology.n_domains != policy.n_domains:
            raise MarlCheckpointError(
                f"marl checkpoint {path} was trained on {cfg.topology} and supports "
                f"topologies with {policy.n_domains} domains; {topology.name} has {topology.n_domains} (train one "
                f"with `sdwn-mcast train` and pass its folder as the marl checkpoint)")

    def build(self, snapshot: LinkStateSnapshot, source: Node, members: tuple[Node, ...]) -> nx.Graph:
        from .marl.env import CrossDomainMulticastEnv, InvalidActionError
        from .marl.train import run_episode

        topo = snapshot.topology
        self.check_topology(topo)
        path = self.checkpoint_for(topo)
        self.served[topo.name] = path
        policy, cfg = self._load(path)
        env = CrossDomainMulticastEnv(snapshot, cfg.env_config())
        try:
            _, _, info = run_episode(env, policy, seed=0, greedy=True,
                                     options={"source": source, "members": list(members)})
        except InvalidActionError as exc:
            raise MulticastError(f"marl episode failed: {exc}") from None
        if info["tree"] is None:
            raise MulticastError(f"marl episode failed: {info['failure']}")
        return info["tree"]


def _check_method(m: str) -> None:
    if m not in MARL_METHODS:
        get_method(m[len(COMPOSED_PREFIX):] if m.startswith(COMPOSED_PREFIX) else m)


def _draw_request(rng: np.random.Generator, graph: nx.Graph, group_size: tuple[int, int]
                  ) -> tuple[Node, tuple[Node, ...]]:
    comp = sorted(max(nx.connected_components(graph), key=len), key=str)
    source = comp[int(rng.integers(len(comp)))]
    others = [n for n in comp if n != source]
    k = int(rng.integers(group_size[0], min(group_size[1], len(others)) + 1))
    members = tuple(others[i] for i in sorted(rng.choice(len(others), size=k, replace=False)))
    return source, members


def make_requests(topology: MultiDomainTopology, n_requests: int, seed: int, group_size=(3, 12),
                  steps_between_requests=(30, 720)) -> list[tuple[EvalRequest, LinkStateSnapshot]]:
    """Seeded requests with their snapshots (one simulator run per topology)."""
    sim = LinkStateSimulator(topology, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for rid in range(n_requests):
        for _ in range(int(rng.integers(*steps_between_requests))):
            snap = sim.step()
        graph = snap.to_graph()
        source, members = _draw_request(rng, graph, group_size)
        out.append((EvalRequest(rid, topology.name, snap.step, round(snap.hour, 3), source, members), snap))
    return out


def run_evaluation(config: EvalConfig, progress: bool = True) -> EvalResult:
    for m in config.methods:
        _check_method(m)
    # config.marl_checkpoint replaces the bandwidth-weighted ``marl`` checkpoint only
    routers = {m: MarlRouter(config.marl_checkpoint if m == MARL_METHOD else None, objective=obj)
               for m, obj in MARL_METHODS.items() if m in config.methods}
    t0 = time.perf_counter()
    rows: list[dict] = []
    jobs = []
    for ti, name in enumerate(config.topologies):
        # the paper topologies keep their fixed domains; n_domains partitions the others
        k = None if name.lower() in FIXED_TOPOLOGIES else config.n_domains
        topo = load_topology(name, n_domains=k, seed=config.seed)
        for router in routers.values():
            router.check_topology(topo)
        for req, snap in make_requests(topo, config.n_requests, config.seed + 1000 * ti, config.group_size,
                                       config.steps_between_requests):
            jobs.append((name, topo, req, snap))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs) * len(config.methods), desc="eval", unit="tree", mininterval=1.0)
    for name, topo, req, snap in jobs:
        graph = snap.to_graph()
        for method in config.methods:
            row = {"topology": name, "request_id": req.request_id, "step": req.step, "hour": req.hour,
                   "source": req.source, "members": " ".join(map(str, req.members)),
                   "n_members": len(req.members), "method": method, "valid": False, "error": ""}
            t = time.perf_counter()
            try:
                if method in routers:
                    tree = routers[method].build(snap, req.source, req.members)
                else:
                    tree = build_tree(method, topo, graph, req.source, req.members, config.cost_weight,
                                      config.ilp_time_limit_s)
                row["decision_time_ms"] = (time.perf_counter() - t) * 1e3
                validate_tree(graph, tree, req.source, req.members)
                row.update(tree_metrics(graph, tree, req.source, req.members, config.cost_weight))
                row["valid"] = True
            except (MulticastError, SolverError, ProblemTooLargeError) as exc:
                row["decision_time_ms"] = (time.perf_counter() - t) * 1e3
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows)
    if "cost" not in df:
        df["cost"] = np.nan
    opt = df[(df.method == "ilp") & df.valid].set_index(["topology", "request_id"])["cost"]
    key = pd.MultiIndex.from_frame(df[["topology", "request_id"]])
    df["opt_cost"] = opt.reindex(key).to_numpy() if len(opt) else np.nan
    df["cost_ratio"] = df["cost"] / df["opt_cost"]
    extra = {}
    for m, router in routers.items():
        key = "marl_checkpoint" if m == MARL_METHOD else f"{m}_checkpoint"
        extra[key] = ", ".join(f"{t}: {p}" for t, p in router.served.items()) or str(router.checkpoint_dir)
    return EvalResult(config=config, rows=df, elapsed_s=time.perf_counter() - t0, extra=extra)


def bottleneck_ratio(df: pd.DataFrame, method: str = MARL_METHOD, reference: str = "kmb") -> pd.Series:
    """Per request where both built a valid tree: ``method``'s bottleneck bandwidth / ``reference``'s."""
    key = ["topology", "request_id"]
    a = df[(df.method == method) & df.valid].set_index(key)["bottleneck_bw_mbps"]
    b = df[(df.method == reference) & df.valid].set_index(key)["bottleneck_bw_mbps"]
    both = a.index.intersection(b.index)
    return (a.loc[both] / b.loc[both]).replace([np.inf, -np.inf], np.nan).dropna()


def metric_ratio(df: pd.DataFrame, method: str, reference: str, metric: str) -> pd.Series:
    """Per request where both built a valid tree: ``method``'s ``metric`` / ``reference``'s (finite only)."""
    key = ["topology", "request_id"]
    a = df[(df.method == method) & df.valid].set_index(key)[metric]
    b = df[(df.method == reference) & df.valid].set_index(key)[metric]
    both = a.index.intersection(b.index)
    return (a.loc[both] / b.loc[both]).replace([np.inf, -np.inf], np.nan).dropna()


def invalid_rate(df: pd.DataFrame, method: str) -> tuple[int, int]:
    """(requests without a valid tree, requests) of one method."""
    s = df[df.method == method]
    return int((~s.valid).sum()), len(s)


def mean_ci95(values: pd.Series) -> tuple[float, float]:
    """Mean and half-width of the Student-t 95 % confidence interval (nan-safe)."""
    from scipy import stats

    v = values.dropna().to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), 0.0
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def _fixed_note(topologies) -> str:
    fixed = [t for t in topologies if t.lower() in FIXED_TOPOLOGIES]
    return f" ({', '.join(fixed)}: the paper's fixed domains)" if fixed else ""


def summary_markdown(result: EvalResult, machine: str) -> str:
    df, cfg = result.rows, result.config
    lines = [f"# SDWN multicast evaluation ({', '.join(cfg.topologies)})", "",
             f"{cfg.n_requests} requests per topology, group size {cfg.group_size[0]}-{cfg.group_size[1]}, "
             f"{cfg.n_domains} domains{_fixed_note(cfg.topologies)}, cost weight `{cfg.cost_weight}`, seed {cfg.seed}. "
             f"Machine: {machine}. Wall time {result.elapsed_s:.1f} s.", "",
             "Cells are mean ± 95 % CI (Student t over requests) of valid trees; `invalid` counts requests",
             "for which the method returned no valid tree (error or failed validation).", ""]
    cols = list(METRICS)
    for topo in cfg.topologies:
        sub = df[df.topology == topo]
        lines += [f"## {topo}", "", "| method | " + " | ".join(cols) + " | invalid |",
                  "|---" * (len(cols) + 2) + "|"]
        for method in cfg.methods:
            s = sub[(sub.method == method)]
            ok = s[s.valid]
            cells = []
            for c in cols:
                mu, h = mean_ci95(ok[c]) if c in ok else (math.nan, math.nan)
                cells.append("n/a" if math.isnan(mu) else f"{mu:.3f} ± {h:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {int((~s.valid).sum())}/{len(s)} |")
        lines.append("")
    gap = decomposition_gap(df)
    if gap:
        lines += ["## Decomposition gap", "",
                  "Cost of inter-domain plan + intra-domain trees divided by the flat exact optimum "
                  "(1.000 = no loss from decomposing).", "",
                  "| topology | composition | mean ± 95 % CI | share of requests with gap > 1 % | max |",
                  "|---|---|---|---|---|"]
        for (topo, method), (mu, h, share, mx) in gap.items():
            lines.append(f"| {topo} | {method} | {mu:.3f} ± {h:.3f} | {share:.0%} | {mx:.3f} |")
        lines.append("")
    return "\n".join(lines)


def decomposition_gap(df: pd.DataFrame) -> dict:
    out = {}
    for (topo, method), s in df[df.method.str.startswith(COMPOSED_PREFIX) & df.valid].groupby(
            ["topology", "method"], sort=False):
        r = s["cost_ratio"].dropna()
        if len(r):
            mu, h = mean_ci95(r)
            out[(topo, method)] = (mu, h, float((r > 1.01).mean()), float(r.max()))
    return out


def plot_results(result: EvalResult, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df, cfg = result.rows, result.config
    paths = []
    for metric, label in METRICS.items():
        fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(cfg.methods) * len(cfg.topologies) / 2), 4.2))
        width = 0.8 / len(cfg.topologies)
        x = np.arange(len(cfg.methods))
        for ti, topo in enumerate(cfg.topologies):
            stats_ = [mean_ci95(df[(df.topology == topo) & (df.method == m) & df.valid][metric])
                      for m in cfg.methods]
            ax.bar(x + ti * width - 0.4 + width / 2, [s[0] for s in stats_], width,
                   yerr=[s[1] for s in stats_], capsize=2, label=topo)
        ax.set_xticks(x, cfg.methods, rotation=45, ha="right")
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(metric)
        if metric == "cost_ratio":
            ax.axhline(1.0, color="k", lw=0.8)
            ok = df[df.valid]["cost_ratio"].dropna()
            lo = float(ok.min()) if len(ok) else 1.0
            ax.set_ylim(bottom=min(0.95, lo))
        if metric == "decision_time_ms":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / f"{metric}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "requests.csv"
    result.rows.to_csv(csv, index=False, float_format="%.6g")
    md = out / "summary.md"
    md.write_text(summary_markdown(result, cpu_model()))
    pngs = plot_results(result, out)
    return {"csv": csv, "summary": md, **{p.stem: p for p in pngs}}


QUICK_CONFIG = EvalConfig(topologies=("paper30", "abilene", "geant"), n_requests=30, steps_between_requests=(30, 360))

__all__ = ["DEFAULT_MARL_CHECKPOINT", "MARL_CHECKPOINTS", "committed_checkpoint_for", "DEFAULT_METHODS", "EvalConfig", "EvalRequest", "EvalResult", "MARL_METHOD", "MARL_METHODS", "default_marl_checkpoint", "metric_ratio",
           "METHODS", "METRICS", "QUICK_CONFIG", "MarlCheckpointError", "MarlRouter", "bottleneck_ratio", "build_tree",
           "invalid_rate", "decomposition_gap", "make_requests", "mean_ci95", "run_evaluation", "summary_markdown",
           "tree_metrics", "write_outputs"]


# ---------------------------------------------------------------------------------------------------------
# Incremental repair vs rebuilding.
# ---------------------------------------------------------------------------------------------------------

REPAIR_EVENTS = ("join", "leave", "link_failure")


def run_repair_evaluation(topologies: tuple[str, ...], n_requests: int, seed: int = 0,
                          cost_weight: str = "delay_ms", progress: bool = True) -> pd.DataFrame:
    """For each request: build a KMB tree, apply one event of each kind, and compare repair with rebuild.

    Events: a random non-member joins (``graft_member``), a random member leaves (``prune_member``), a
    random tree link fails (``repair_link_failure`` on the snapshot without that link). For every event
    the repaired tree is validated and its cost compared with KMB rebuilt from scratch and with the exact
    optimum of the new request; decision times of repair and rebuild are recorded.
    """
    rows = []
    jobs = []
    for ti, name in enumerate(topologies):
        topo = load_topology(name, seed=seed)
        for req, snap in make_requests(topo, n_requests, seed + 1000 * ti):
            jobs.append((name, req, snap))
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="repair", unit="request", mininterval=1.0)
    rng = np.random.default_rng(seed)
    for name, req, snap in it:
        graph = snap.to_graph()
        base = kmb_tree(graph, req.source, req.members, cost_weight)
        outsiders = [n for n in nx.node_connected_component(graph, req.source)
                     if n not in base and n != req.source]
        events = []
        if outsiders:
            joiner = outsiders[int(rng.integers(len(outsiders)))]
            members = (*req.members, joiner)
            events.append(("join", graph, members, partial(graft_member, graph, base, joiner, cost_weight)))
        if len(req.members) > 1:
            leaver = req.members[int(rng.integers(len(req.members)))]
            members = tuple(m for m in req.members if m != leaver)
            events.append(("leave", graph, members, partial(prune_member, base, req.source, members, leaver)))
        u, v = sorted(base.edges)[int(rng.integers(base.number_of_edges()))]
        g_fail = with_link_failed(snap, u, v).to_graph()
        reach = nx.node_connected_component(g_fail, req.source)
        if all(m in reach for m in req.members):
            events.append(("link_failure", g_fail, req.members,
                           partial(repair_link_failure, g_fail, base, req.source, req.members, cost_weight)))
        for event, g, members, repair in events:
            t = time.perf_counter()
            repaired = repair()
            t_repair = (time.perf_counter() - t) * 1e3
            validate_tree(g, repaired, req.source, members)
            t = time.perf_counter()
            rebuilt = kmb_tree(g, req.source, members, cost_weight)
            t_rebuild = (time.perf_counter() - t) * 1e3
            opt = tree_cost(g, exact_steiner_tree(g, req.source, members, cost_weight), cost_weight)
            c_rep = tree_cost(g, repaired, cost_weight)
            rows.append({"topology": name, "request_id": req.request_id, "event": event,
                         "repaired_cost": c_rep, "rebuilt_kmb_cost": tree_cost(g, rebuilt, cost_weight),
                         "opt_cost": opt, "repair_ratio_to_opt": c_rep / opt,
                         "rebuild_ratio_to_opt": tree_cost(g, rebuilt, cost_weight) / opt,
                         "links_changed": len(set(map(frozenset, repaired.edges)) ^ set(map(frozenset, base.edges))),
                         "repair_time_ms": t_repair, "rebuild_time_ms": t_rebuild})
    return pd.DataFrame(rows)


def repair_summary_markdown(df: pd.DataFrame, machine: str) -> str:
    lines = ["# Incremental repair vs rebuilding (KMB trees, cost weight `delay_ms`)", "",
             f"Machine: {machine}. Mean ± 95 % CI over requests; every repaired tree passed validation.", "",
             "| topology | event | n | repaired / optimum | rebuilt KMB / optimum | links changed | "
             "repair time (ms) | rebuild time (ms) |", "|---|---|---|---|---|---|---|---|"]
    for (topo, event), s in df.groupby(["topology", "event"], sort=False):
        cells = [f"{m:.3f} ± {h:.3f}" for m, h in (mean_ci95(s[c]) for c in (
            "repair_ratio_to_opt", "rebuild_ratio_to_opt", "links_changed", "repair_time_ms", "rebuild_time_ms"))]
        lines.append(f"| {topo} | {event} | {len(s)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Sessions under churn and link failures, served by the learned agents.
# ---------------------------------------------------------------------------------------------------------


def run_marl_session_evaluation(topologies: tuple[str, ...], n_sessions: int, events_per_session: int = 6,
                                seed: int = 0, n_domains: int = 3, checkpoint_dir: str | Path | None = None,
                                progress: bool = True, objective: str = "bandwidth") -> pd.DataFrame:
    """Multicast sessions under member churn and link failures, each event answered by the agents.

    A session starts with the agents' tree for a seeded request. Then ``events_per_session`` events hit it
    cumulatively, in random order: a non-member joins, a member leaves (the group keeps at least one), or a
    link of the current tree fails (it stays down for the rest of the session). After each event the
    agents decide the new tree on the new state in one greedy episode — one decision, no fallback — and
    it is validated. Per event: whether the agents served it (a failure that leaves a domain unable to be
    entered once can make the decomposition impossible; flat KMB is then reported as still serving or
    not), the decision time, links changed against the previous tree, and its bottleneck bandwidth against
    delay-weighted KMB rebuilt on the same state (and its tree cost, sum of link delays, against KMB's).
    ``objective`` picks the committed agents of that objective when ``checkpoint_dir`` is not given.
    """
    router = MarlRouter(checkpoint_dir, objective=objective)
    rows = []
    jobs = []
    for ti, name in enumerate(topologies):
        k = None if name.lower() in FIXED_TOPOLOGIES else n_domains
        topo = load_topology(name, n_domains=k, seed=seed)
        router.check_topology(topo)
        for req, snap in make_requests(topo, n_sessions, seed + 1000 * ti):
            jobs.append((name, req, snap))
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="sessions", unit="session", mininterval=1.0)
    rng = np.random.default_rng(seed)
    for name, req, snap in it:
        members = req.members
        try:
            tree = router.build(snap, req.source, members)
        except MulticastError:
            continue  # the session never started (reported by the main evaluation)
        for k in range(events_per_session):
            graph = snap.to_graph()
            kinds = ["join", "link_failure"] + (["leave"] if len(members) > 1 else [])
            event = kinds[int(rng.integers(len(kinds)))]
            if event == "join":
                outsiders = sorted((n for n in nx.node_connected_component(graph, req.source)
                                    if n not in members and n != req.source), key=str)
                if not outsiders:
                    continue
                members = (*members, outsiders[int(rng.integers(len(outsiders)))])
            elif event == "leave":
                gone = int(rng.integers(len(members)))
                members = members[:gone] + members[gone + 1:]
            else:
                u, v = sorted(tree.edges, key=str)[int(rng.integers(tree.number_of_edges()))]
                snap = with_link_failed(snap, u, v)
                graph = snap.to_graph()
            row = {"topology": name, "session": req.request_id, "event_index": k, "event": event,
                   "n_members": len(members), "served": False, "kmb_served": False, "error": ""}
            reach = nx.node_connected_component(graph, req.source)
            if not all(m in reach for m in members):
                row["error"] = "a member is cut off from the source"
                rows.append(row)
                members = tuple(m for m in members if m in reach) or members
                continue
            kmb = kmb_tree(graph, req.source, members, "delay_ms")
            row["kmb_served"] = True
            km = tree_metrics(graph, kmb, req.source, members, "delay_ms")
            row["kmb_bottleneck_bw_mbps"], row["kmb_cost"] = km["bottleneck_bw_mbps"], km["cost"]
            t = time.perf_counter()
            try:
                new = router.build(snap, req.source, members)
                row["decision_time_ms"] = (time.perf_counter() - t) * 1e3
                validate_tree(graph, new, req.source, members)
            except MulticastError as exc:
                row["decision_time_ms"] = (time.perf_counter() - t) * 1e3
                row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                continue
            m = tree_metrics(graph, new, req.source, members, "delay_ms")
            row.update(served=True, bottleneck_bw_mbps=m["bottleneck_bw_mbps"],
                       bw_ratio_vs_kmb=m["bottleneck_bw_mbps"] / row["kmb_bottleneck_bw_mbps"],
                       cost_ratio_vs_kmb=m["cost"] / row["kmb_cost"],
                       links_changed=len(set(map(frozenset, new.edges)) ^ set(map(frozenset, tree.edges))),
                       tree_length=m["tree_length"])
            rows.append(row)
            tree = new
    return pd.DataFrame(rows)


def session_summary_markdown(df: pd.DataFrame, machine: str) -> str:
    lines = ["# Sessions under churn and link failures, served by the MA-CDMR agents", "",
             f"Machine: {machine}. One row per event kind; every served tree passed validation. "
             "`served` = the agents built a valid tree in one decision; `KMB served` = flat delay-weighted "
             "KMB found one on the same state (members cut off from the source are counted in neither).", "",
             "| topology | event | events | served by agents | KMB served | decision (ms) | links changed | "
             "bw ratio vs KMB | cost ratio vs KMB |", "|---|---|---|---|---|---|---|---|---|"]
    for (topo, event), s in df.groupby(["topology", "event"], sort=False):
        ok = s[s.served]
        cells = []
        for c in ("decision_time_ms", "links_changed", "bw_ratio_vs_kmb", "cost_ratio_vs_kmb"):
            mu, h = mean_ci95(ok[c]) if c in ok else (math.nan, math.nan)
            cells.append("n/a" if math.isnan(mu) else f"{mu:.3f} ± {h:.3f}")
        lines.append(f"| {topo} | {event} | {len(s)} | {int(s.served.sum())} | {int(s.kmb_served.sum())} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
