"""PettingZoo ``ParallelEnv`` for cross-domain multicast tree construction (MA-CDMR, arXiv 2409.05888).

Agents
------
* ``"root"`` — the inter-domain agent of the root controller. Action ``j < L`` picks the ``j``-th
  inter-domain link of ``topology.inter_domain_links`` as the next crossing of the domain-level plan: the
  endpoint whose domain is already in the plan is the parent-side boundary node (an exit of that domain),
  the other one becomes the entry of a new domain. Action ``L`` is ``NOOP`` (when the root is idle) or
  ``BACKTRACK`` (when the root is stuck, see below).
* ``"domain_<d>"`` — the intra-domain agent of domain ``d``'s controller. Action ``i < n_d`` moves the
  walk head to the domain's ``i``-th AP (domain nodes in ``topology.nodes`` order); action ``n_d`` is
  ``NOOP`` (only allowed when the agent is idle).

An episode has two phases. In the *inter* phase only the root acts: it adds crossings until every domain
holding the source or a member is in the plan; each domain is entered exactly once, so "inter-domain
tree + intra-domain trees" composes into one tree (the paper's assumption, enforced here unless
``MarlEnvConfig.reentry`` is set: see "Re-entry" below). In the *intra*
phase every domain of the plan grafts its terminals (local members and exit boundary nodes) onto its
segment, which starts as the domain's entry (the source in the source's domain), all domains in parallel.
A graft is a walk from the pending terminal, one next hop per step, until it reaches the segment
(Takahashi-Matsuyama's grafting, chosen hop by hop by the agent); the walk touches the segment only at
its last node, so the segment stays a tree.

Masks (``obs[agent]["action_mask"]``, int8) make invalid and looping moves impossible, not penalised:

* intra: the next hop must be an up intra-domain link from the head, must not revisit a node of the
  current walk, and the segment must still be reachable from it without crossing the walk (one BFS
  from the segment). This last rule means a walk can never reach a dead end: if the segment is
  reachable from the head, some neighbour starts such a path, and the invariant carries over to it.
* root: the link must be up, join a domain in the plan to one outside it, the exit must be connected to
  its domain's entry inside that domain, the new domain's local members must be connected to the new
  entry inside the new domain, the new domain must be needed or lead (over domains outside the plan) to
  a needed one, and the crossing must not be taboo at this depth.

The root can still get stuck (e.g. a domain split by failures cannot be entered where it would have to
be left again). Then ``BACKTRACK`` is its only valid action: it undoes the last crossing and makes it
taboo at that depth (a depth-first search over plans, so it is complete). Stuck with nothing to undo,
or out of the step budget, the episode ends with ``infos[a]["failure"]`` saying why and no tree.

Reward (shared by all agents, CTDE-friendly): 0 on every step except

* ``-backtrack_penalty`` on each root backtrack (a dead end that masking cannot foresee cheaply);
* at the end, for a valid tree T with receivers M (metrics from ``evaluation.tree_metrics``)::

      R = B / B_ref - D / D_ref - P / P_ref - length_coef * |T| / |M|

  where B is the mean over receivers of the bottleneck free bandwidth on the tree path (Mb/s), D the
  mean link delay (ms) and P the mean link loss over tree links, |T| the number of tree links
  (``MarlEnvConfig.objective = "bandwidth"``, the default). The delay- and loss-weighted variants score
  ``R = -D / D_ref - length_coef * |T| / |M|`` (``"delay"``) and ``R = -P / P_ref - length_coef * |T| / |M|``
  (``"loss"``). The cost-minimising variant (``"cost"``) scores ``R = -C / (D_ref * |M|)`` with C the
  tree cost the exact ILP baseline minimises, the sum of link delays (ms) over tree links (the evaluation's
  default ``cost_weight``, ``delay_ms``); no length term, since C already sums over the links;
* ``-failure_penalty`` at the end when no tree was built.

Observations come from a :class:`~sdwn_multicast.simulator.LinkStateSnapshot` — the link state the
controllers have synchronised — never from the simulator's internal state. Besides the raw per-link
matrices, each domain agent sees two per-node summaries its controller computes from that same link state
(:meth:`CrossDomainMulticastEnv.graft_view`): ``seg_bw``, the widest bottleneck (Mb/s / ``bw_ref_mbps``)
from the domain's entry through the current segment to the node, avoiding the walk, and ``seg_reach``,
1 / (1 + hops from the node to the segment avoiding the walk) (0: the segment is unreachable, which is
also what the mask uses). The root sees, per crossing, the widest bottleneck from the parent domain's
entry to the exit (``exit_bw``), from the new entry to the new domain's local members (``entry_bw``) and
onwards to needed domains outside the plan (``transit_bw``).
With ``objective`` ``"delay"``, ``"loss"`` or ``"cost"`` (link cost: delay, as for ``"delay"``) the bandwidth summaries give way to cost ones (same shapes):
a link costs its delay (ms) or ``-ln(1 - loss)`` (additive along a path), scaled by ``delay_ref_ms`` or
``-ln(1 - loss_ref)`` (minus ``cost_offset``, at least ``cost_floor``), and a cost c is shown as the closeness ``1 / (1 + c)``. The ``seg_bw`` channel then
holds, per node, the closeness of the cheapest path to the segment avoiding the walk, through the link from
the walk head for the head's neighbours (what moving there costs); ``exit_bw`` the closeness of the
cheapest path from the parent entry to the exit plus the crossing link, ``entry_bw`` the mean closeness of
the new domain's members from the new entry and ``transit_bw`` the best closeness onwards to a needed
domain outside the plan (:meth:`CrossDomainMulticastEnv.graft_cost_view`, :meth:`crossing_costs`).
A one-hop scorer cannot see bottlenecks further away; these give it the link state a routing decision
needs, the way a link-state router runs its own shortest-path computation.

Re-entry
--------
With ``MarlEnvConfig.reentry`` the root is not limited to entering each domain once. It keeps a *planned
tree*: the node set the tree will hold, starting with the source. "Best" paths below are the cheapest for
the cost objectives and the widest (fewest hops among the widest) for ``"bandwidth"``. Before each root
decision, every member that the planned tree reaches best without leaving the member's domain is absorbed
into it, nearest first (Takahashi-Matsuyama's order), together with its path. The root acts only when the
nearest remaining member is reached best over a crossing. Its candidates are the oriented
inter-domain links u -> v (row ``j`` is link ``j`` from its first endpoint, row ``L + j`` from its
second): the link is up, u is reachable inside its domain from the planned tree, v is not planned, and v
reaches an unabsorbed member without touching the planned tree. The domain of v may already be in the
plan; v then starts a second component there. A choice adds the path to u and v to the planned tree. The
planned tree grows at every step, and the nearest member's path always offers a valid crossing, so the
root can neither loop nor get stuck. Its three summary columns hold, per candidate, the whole path's value
(planned tree -> u -> v -> nearest unabsorbed member: closeness 1 / (1 + cost), or bottleneck /
``bw_ref_mbps``), the onward part's, and 1.

In the intra phase, every entry starts a component of rank k (the source 0, the k-th crossing's entry k).
A member grafts onto any component of its domain. The exit of crossing k grafts only onto components of
rank < k, so each component stays connected to the source through earlier ones. A walk may pass through
nodes of components it may not attach to. The union of the components and the crossings is then reduced
to its best spanning tree (cheapest, or widest by 1 / bandwidth) and pruned. For the ``"cost"`` objective that spanning tree may use every up
link between the union's nodes (KMB's final step), which can only lower the tree cost the reward scores.

Speed: everything that depends only on the snapshot (per-domain link tensors, all-pairs widest bottleneck,
components, the ``networkx`` graph) is computed once per snapshot and cached; a step
updates small per-domain numpy arrays (no graph objects), so a decision is dominated by the actors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from ..simulator import LinkStateSimulator, LinkStateSnapshot
from ..topology import MultiDomainTopology, Node, TopologyError, load_topology
from ..trees import (
    DecompositionError,
    MulticastError,
    check_request,
    prune_tree,
    validate_tree,
)
from .channels import (  # noqa: F401 - re-exported: the actors and tests import them from here
    LINK_FIELDS,
    NODE_CHANNELS,
    OBJECTIVES,
    ROOT,
    ROOT_CROSSING_EXTRA,
    ROOT_DOMAIN_CHANNELS,
)
from .paths import cheapest_all_pairs, dijkstra, widest_bottleneck_all_pairs, widest_shortest  # noqa: F401 - re-exported
from .reentry import NO_BOUND, ReentryPlanning, reduce_union

#: snapshots whose per-snapshot arrays are kept (offline replay revisits the same few snapshots)
SNAPSHOT_CACHE_SIZE = 128


class InvalidActionError(ValueError):
    """An active agent sent an action its mask forbids, or sent none."""


def domain_agent(d: int) -> str:
    return f"domain_{d}"


def link_cost(objective: str, delay_ms, loss, config: MarlEnvConfig):
    """Scaled additive cost of links for a cost objective: delay / delay_ref ("delay", "cost") or -ln(1 - loss) / -ln(1 - loss_ref)."""
    if objective in ("delay", "cost"):  # "cost": the ILP's delay_ms weight, scaled
        c = np.asarray(delay_ms, dtype=float) / config.delay_ref_ms
    elif objective == "loss":
        c = -np.log1p(-np.minimum(np.asarray(loss, dtype=float), 1 - 1e-9)) / -math.log1p(-config.loss_ref)
    else:
        raise ValueError(f"objective {objective!r} has no link cost")
    if config.cost_offset:
        c = np.maximum(c - config.cost_offset, config.cost_floor)
    return c


class _SnapshotView:
    """Everything an episode needs that depends only on the snapshot (computed once, cached per env)."""

    def __init__(self, env: CrossDomainMulticastEnv, snapshot: LinkStateSnapshot):
        cfg, topo = env.config, env.topology
        self.graph = snapshot.to_graph()
        free = np.where(snapshot.up, snapshot.free_bw_mbps, 0.0)
        scale = cfg.link_scale[:, None, None]
        self.links, self.bw, self.widest, self.nbrs = [], [], [], []
        self.nbr_bw: list[list[list[tuple[int, float]]]] = []  # per domain, per local node: (neighbour, Mb/s)
        self.comp: dict[Node, int] = {}
        for d in range(topo.n_domains):
            self.links.append((snapshot.feature_tensor(LINK_FIELDS, domain=d) / scale).astype(np.float32))
            bw = snapshot.domain_dense(free, d)
            adj = snapshot.domain_dense(snapshot.up.astype(float), d) > 0
            bw = np.where(adj, np.maximum(bw, 1e-6), 0.0)  # an up link with 0 free bandwidth is still a link
            self.bw.append(bw)
            self.nbrs.append([np.flatnonzero(row) for row in adj])
            self.nbr_bw.append([[(int(j), float(bw[i, j])) for j in np.flatnonzero(row)] for i, row in enumerate(adj)])
            self.widest.append(widest_bottleneck_all_pairs(bw))
            # component label = smallest local index reachable (a node always reaches itself)
            for i, n in enumerate(env._dnodes[d]):
                self.comp[n] = int(np.argmax(self.widest[d][i] > 0))  # reachable <=> widest bottleneck > 0
        feats = [np.where(snapshot.up, np.asarray(getattr(snapshot, f), dtype=float), 0.0) for f in LINK_FIELDS]
        self.link_features = (np.stack(feats, axis=1) / cfg.link_scale[None, :]).astype(np.float32)
        self.inter_features = self.link_features[[topo.edge_index[e] for e in env._inter]]
        self.inter_bw = np.array([free[topo.edge_index[e]] if snapshot.up[topo.edge_index[e]] else 0.0
                                  for e in env._inter])
        # per domain: (local boundary AP, domain across, free Mb/s) of every up inter-domain link
        self.boundary_out: list[list[tuple[int, int, float]]] = [[] for _ in range(topo.n_domains)]
        for k, (u, v) in enumerate(env._inter):
            if self.inter_bw[k] > 0:
                du, dv = topo.domain_of[u], topo.domain_of[v]
                self.boundary_out[du].append((env._local[du][u], dv, float(self.inter_bw[k])))
                self.boundary_out[dv].append((env._local[dv][v], du, float(self.inter_bw[k])))
        # whole network, by topology.nodes index: neighbours with free Mb/s (re-entry planning by bandwidth)
        self.gnbr_bw: list[list[tuple[int, float]]] = [[] for _ in topo.nodes]
        for k, (u, v) in enumerate(topo.edges):
            if snapshot.up[k]:
                w = max(float(free[k]), 1e-6)
                self.gnbr_bw[topo.node_index[u]].append((topo.node_index[v], w))
                self.gnbr_bw[topo.node_index[v]].append((topo.node_index[u], w))
        # cost objectives: scaled additive link costs (inf = no up link), cheapest paths, neighbour lists
        self.cost, self.cheapest, self.nbr_cost, self.inter_cost = [], [], [], None
        if cfg.objective != "bandwidth":
            c = link_cost(cfg.objective, snapshot.delay_ms, snapshot.loss, cfg)
            c = np.where(snapshot.up, c, np.inf)
            for d in range(topo.n_domains):
                adj = self.bw[d] > 0
                cd = np.where(adj, snapshot.domain_dense(np.where(np.isfinite(c), c, 0.0), d), np.inf)
                self.cost.append(cd)
                self.cheapest.append(cheapest_all_pairs(cd))
                self.nbr_cost.append([[(int(j), float(cd[i, j])) for j in np.flatnonzero(row)]
                                      for i, row in enumerate(adj)])
            self.inter_cost = np.array([c[topo.edge_index[e]] for e in env._inter])
            # whole network (re-entry planning): neighbours with link cost, by topology.nodes index
            idx = topo.node_index
            self.gnbr_cost: list[list[tuple[int, float]]] = [[] for _ in topo.nodes]
            for k, (u, v) in enumerate(topo.edges):
                if snapshot.up[k] and np.isfinite(c[k]):
                    self.gnbr_cost[idx[u]].append((idx[v], float(c[k])))
                    self.gnbr_cost[idx[v]].append((idx[u], float(c[k])))


@dataclass(frozen=True)
class MarlEnvConfig:
    group_size: tuple[int, int] = (3, 12)
    bw_ref_mbps: float = 40.0
    delay_ref_ms: float = 10.0
    loss_ref: float = 0.1
    length_coef: float = 0.1
    backtrack_penalty: float = 0.05
    failure_penalty: float = 2.0
    #: step budget per episode = this x (number of nodes + number of inter-domain links)
    step_budget_factor: int = 4
    #: bandwidth quantum (Mb/s) when choosing which pending terminal to graft next (widest first)
    graft_order_bw_step_mbps: float = 0.5
    #: reward emphasis and graft summaries: "bandwidth" (default) | "delay" | "loss" | "cost" (module docstring)
    objective: str = "bandwidth"
    #: cost objectives: the graft summaries and expert use max(scaled link cost - cost_offset, cost_floor), so
    #: paths of several cheap links beat one expensive link (the reward's D and P are means over tree links,
    #: which a pure sum-of-costs expert does not minimise); 0 = plain additive cost. The reward is unchanged.
    cost_offset: float = 0.0
    cost_floor: float = 0.02
    #: the root may enter a domain more than once (a new component per entry; module docstring, "Re-entry");
    #: False keeps "each domain entered once" (the paper's decomposition)
    reentry: bool = False

    def __post_init__(self) -> None:
        if self.cost_offset < 0 or self.cost_floor <= 0:
            raise ValueError("cost_offset must be non-negative and cost_floor positive")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        lo, hi = self.group_size
        if not 1 <= lo <= hi:
            raise ValueError(f"group_size must satisfy 1 <= min <= max, got {self.group_size}")

    @property
    def link_scale(self) -> np.ndarray:
        return np.array([self.bw_ref_mbps, self.delay_ref_ms, 1.0, 1.0], dtype=np.float32)


class CrossDomainMulticastEnv(ReentryPlanning, ParallelEnv):
    """Cross-domain multicast: the root plans crossings, domain agents graft terminals hop by hop.

    ``snapshots`` (one or a sequence, all of one topology) is the synchronised link state episodes are
    drawn from (the offline dataset). ``reset(seed, options)`` draws a snapshot and a request; options
    ``{"source": s, "members": [...]}`` fix the request and ``{"snapshot_index": i}`` the snapshot.
    """

    metadata = {"name": "sdwn_multicast_cdmr_v0", "render_modes": []}

    def __init__(self, snapshots: LinkStateSnapshot | Sequence[LinkStateSnapshot],
                 config: MarlEnvConfig | None = None):
        if isinstance(snapshots, LinkStateSnapshot):
            snapshots = [snapshots]
        snapshots = list(snapshots)
        if not snapshots:
            raise ValueError("the environment needs at least one link-state snapshot")
        topo = snapshots[0].topology
        if any(s.topology is not topo for s in snapshots):
            raise TopologyError("all snapshots of one environment must share one topology object")
        self.topology: MultiDomainTopology = topo
        self.snapshots = snapshots
        self.config = config or MarlEnvConfig()
        self.render_mode = None
        nd = topo.n_domains
        self.possible_agents = [ROOT, *(domain_agent(d) for d in range(nd))]
        self.agents: list[str] = []
        self._dnodes = [topo.domain_nodes(d) for d in range(nd)]
        self._local = [{n: i for i, n in enumerate(ns)} for ns in self._dnodes]
        self._rows = [np.array([topo.node_index[n] for n in ns], dtype=np.int64) for ns in self._dnodes]
        self._inter = topo.inter_domain_links
        self._inter_domains = np.array([[topo.domain_of[u], topo.domain_of[v]] for u, v in self._inter],
                                       dtype=np.int64).reshape(-1, 2)
        self._boundary_local = [np.array(sorted(self._local[d][n] for n in topo.boundary_nodes(d)), dtype=np.int64)
                                for d in range(nd)]
        self._views: OrderedDict[int, tuple[LinkStateSnapshot, _SnapshotView]] = OrderedDict()
        self._segment_only = False  # reset(options={"segments": ...}): one domain's components only
        n_f, n_c = len(LINK_FIELDS), len(NODE_CHANNELS)
        # re-entry: one root candidate per oriented link (row j: u -> v, row L + j: v -> u of link j)
        self._n_cross = len(self._inter) * (2 if self.config.reentry else 1)
        self._obs_spaces: dict[str, spaces.Dict] = {ROOT: spaces.Dict({
            "crossings": spaces.Box(0.0, np.inf, (self._n_cross, n_f + len(ROOT_CROSSING_EXTRA)), np.float32),
            "domains": spaces.Box(0.0, 1.0, (nd, len(ROOT_DOMAIN_CHANNELS)), np.float32),
            "action_mask": spaces.Box(0, 1, (self._n_cross + 1,), np.int8),
        })}
        self._act_spaces: dict[str, spaces.Discrete] = {ROOT: spaces.Discrete(self._n_cross + 1)}
        for d, ns in enumerate(self._dnodes):
            n = len(ns)
            self._obs_spaces[domain_agent(d)] = spaces.Dict({
                "links": spaces.Box(0.0, np.inf, (n_f, n, n), np.float32),
                "nodes": spaces.Box(0.0, 1.0, (n, n_c), np.float32),
                "action_mask": spaces.Box(0, 1, (n + 1,), np.int8),
            })
            self._act_spaces[domain_agent(d)] = spaces.Discrete(n + 1)
        n_nodes, n_edges = len(topo.nodes), len(topo.edges)
        self._state_space = spaces.Box(0.0, np.inf, (n_edges * n_f + n_nodes * n_c + 2,), np.float32)
        self.max_steps = self.config.step_budget_factor * (n_nodes + len(self._inter))
        self.np_random = np.random.default_rng()

    @classmethod
    def from_topology(cls, name: str, n_snapshots: int = 4, seed: int = 0, n_domains: int | None = None,
                      steps_between: int = 30, config: MarlEnvConfig | None = None
                      ) -> CrossDomainMulticastEnv:
        """Load a topology by name (``load_topology``) and record ``n_snapshots`` seeded snapshots."""
        if n_snapshots < 1 or steps_between < 1:
            raise ValueError("n_snapshots and steps_between must be at least 1")
        topo = load_topology(name, n_domains=n_domains, seed=seed)
        sim = LinkStateSimulator(topo, seed=seed)
        snaps = []
        for _ in range(n_snapshots):
            for _ in range(steps_between):
                snap = sim.step()
            snaps.append(snap)
        return cls(snaps, config)

    # ---- spaces ----
    def observation_space(self, agent: str) -> spaces.Dict:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._act_spaces[agent]

    @property
    def state_space(self) -> spaces.Box:
        return self._state_space

    # ---- reset ----
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        options = options or {}
        idx = options.get("snapshot_index")
        if idx is None:
            idx = int(self.np_random.integers(len(self.snapshots)))
        elif not 0 <= idx < len(self.snapshots):
            raise IndexError(f"snapshot_index {idx} out of range (0..{len(self.snapshots) - 1})")
        self.snapshot = self.snapshots[idx]
        self._view = self._snapshot_view(self.snapshot)
        self.graph, self._comp = self._view.graph, self._view.comp
        self._segment_only = False
        if "segments" in options:
            self._reset_segments(options["segments"])
            self.agents = list(self.possible_agents)
            return self._observations(), self._infos()
        if "source" in options or "members" in options:
            if "source" not in options or "members" not in options:
                raise MulticastError("a fixed request needs both 'source' and 'members'")
            self.source = options["source"]
            self.members = check_request(self.graph, self.source, options["members"])
            self._check_source_domain()
        else:
            self.source, self.members = self._draw_request()
        self._start_episode()
        self.agents = list(self.possible_agents)
        return self._observations(), self._infos()

    def _snapshot_view(self, snapshot: LinkStateSnapshot) -> _SnapshotView:
        key = id(snapshot)
        hit = self._views.get(key)
        if hit is not None and hit[0] is snapshot:
            self._views.move_to_end(key)
            return hit[1]
        view = _SnapshotView(self, snapshot)
        self._views[key] = (snapshot, view)
        if len(self._views) > SNAPSHOT_CACHE_SIZE:
            self._views.popitem(last=False)
        return view

    def _draw_request(self) -> tuple[Node, tuple[Node, ...]]:
        comp = sorted(max(nx.connected_components(self.graph), key=len), key=self.topology.node_index.get)
        if len(comp) < 2:
            raise DecompositionError("the snapshot has no two connected nodes to draw a request from")
        lo, hi = self.config.group_size
        for _ in range(100):
            source = comp[int(self.np_random.integers(len(comp)))]
            others = [n for n in comp if n != source]
            k = int(self.np_random.integers(min(lo, len(others)), min(hi, len(others)) + 1))
            members = tuple(others[i] for i in sorted(self.np_random.choice(len(others), size=k, replace=False)))
            self.source, self.members = source, members
            try:
                self._check_source_domain()
            except DecompositionError:
                continue
            return source, members
        raise DecompositionError("could not draw a request whose source domain is connected (100 tries)")

    def _check_source_domain(self) -> None:
        if self.config.reentry:  # the plan may leave the source's domain and come back
            return
        dom = self.topology.domain_of
        ds = dom[self.source]
        cut = [m for m in self.members if dom[m] == ds and self._comp[m] != self._comp[self.source]]
        if cut:
            raise DecompositionError(f"members {cut} cannot be reached from source {self.source!r} inside its "
                                     f"domain {ds}, and the source's domain is entered only once")

    def _start_episode(self) -> None:
        dom = self.topology.domain_of
        self.step_count = 0
        self.phase = "inter"
        self.failure: str | None = None
        self.tree: nx.Graph | None = None
        self.metrics: dict[str, float] | None = None
        self.backtracks = 0
        self.needed = {dom[self.source]} | {dom[m] for m in self.members}
        self.local_members = {d: [m for m in self.members if dom[m] == d] for d in range(self.topology.n_domains)}
        self.entry: dict[int, Node] = {dom[self.source]: self.source}
        self.parent: dict[int, int] = {}
        self.exits: dict[int, list[Node]] = {dom[self.source]: []}
        self.plan: list[tuple[int, Node, Node]] = []  # chosen crossings (link index, exit, entry), in order
        self.taboo: list[set[int]] = [set()]  # taboo crossings per plan depth
        self.segment: dict[int, nx.Graph] = {}
        self.pending: dict[int, list[Node]] = {}
        self.walk: dict[int, list[Node]] = {}
        # widest bottleneck from the entry along the segment, per local node (-1: not in the segment)
        self._seg_bw = [np.full(len(ns), -1.0) for ns in self._dnodes]
        self._member_local = [np.array([self._local[d][m] for m in self.local_members[d]], dtype=np.int64)
                              for d in range(self.topology.n_domains)]
        if self.config.reentry:
            self._start_reentry()
        else:
            self._maybe_finish_inter()
        self._refresh()

    # ---- root (inter-domain) ----
    def _crossing(self, j: int) -> tuple[Node, Node] | None:
        """(exit, entry) of inter-domain link ``j`` given the plan, or None if it joins no plan/non-plan pair."""
        u, v = self._inter[j]
        dom = self.topology.domain_of
        if dom[u] in self.entry and dom[v] not in self.entry:
            return u, v
        if dom[v] in self.entry and dom[u] not in self.entry:
            return v, u
        return None

    def _compute_root_mask(self) -> np.ndarray:
        mask = np.zeros(self._n_cross + 1, dtype=np.int8)
        if self.phase != "inter":
            mask[-1] = 1
            return mask
        if self.config.reentry:
            return self._reentry_root_mask(mask)
        dom = self.topology.domain_of
        useful = self._useful_domains()
        for j in range(len(self._inter)):
            if j in self.taboo[-1] or not self.graph.has_edge(*self._inter[j]):
                continue
            cross = self._crossing(j)
            if cross is None:
                continue
            bp, bc = cross
            cd = dom[bc]
            if cd not in useful or self._comp[bp] != self._comp[self.entry[dom[bp]]]:
                continue
            if any(self._comp[m] != self._comp[bc] for m in self.local_members[cd]):
                continue
            mask[j] = 1
        if not mask.any():
            mask[-1] = 1  # stuck: BACKTRACK is the only move
        return mask

    def _useful_domains(self) -> set[int]:
        """Domains outside the plan that are needed or reach a needed one through domains outside the plan."""
        dom = self.topology.domain_of
        qg = nx.Graph()
        outside = [d for d in range(self.topology.n_domains) if d not in self.entry]
        qg.add_nodes_from(outside)
        for u, v in self._inter:
            if dom[u] in qg and dom[v] in qg and self.graph.has_edge(u, v):
                qg.add_edge(dom[u], dom[v])
        missing = self.needed - set(self.entry)
        useful: set[int] = set()
        for d in missing:
            useful |= nx.node_connected_component(qg, d)
        return useful

    def _root_step(self, action: int) -> float:
        if self.config.reentry:
            return self._reentry_root_step(action)
        if action == len(self._inter):  # BACKTRACK (the mask allows it only when stuck)
            self.backtracks += 1
            if not self.plan:
                self.failure = (f"no cross-domain plan reaches domains {sorted(self.needed - set(self.entry))} "
                                "entering each domain once")
                return -self.config.backtrack_penalty
            j, bp, bc = self.plan.pop()
            self.taboo.pop()
            self.taboo[-1].add(j)
            cd = self.topology.domain_of[bc]
            del self.entry[cd], self.parent[cd], self.exits[cd]
            self.exits[self.topology.domain_of[bp]].remove(bp)
            return -self.config.backtrack_penalty
        bp, bc = self._crossing(action)
        pd, cd = self.topology.domain_of[bp], self.topology.domain_of[bc]
        self.plan.append((action, bp, bc))
        self.taboo.append(set())
        self.entry[cd], self.parent[cd] = bc, pd
        self.exits[cd] = []
        self.exits[pd].append(bp)
        self._maybe_finish_inter()
        return 0.0

    def _maybe_finish_inter(self) -> None:
        if not self.needed <= set(self.entry):
            return
        self.phase = "intra"
        for d, e in self.entry.items():
            seg = nx.Graph()
            seg.add_node(e)
            self.segment[d] = seg
            self._seg_bw[d][self._local[d][e]] = np.inf
            dist = self._hops_from(d, self._local[d][e])
            terms = [t for t in dict.fromkeys([*self.local_members[d], *self.exits[d]]) if t != e]
            self.pending[d] = sorted(terms, key=lambda t: (dist[self._local[d][t]], self.topology.node_index[t]))
            self.walk[d] = []
            self._next_walk(d)

    # ---- domain agents (intra-domain) ----
    def _next_walk(self, d: int) -> None:
        """Start the next graft: the pending terminal with the widest bottleneck into the segment (ties:
        fewer hops, then the hop order from the entry) — Takahashi-Matsuyama's "closest terminal first"
        with the bottleneck as the distance."""
        if self.config.reentry:
            self._reentry_next_walk(d)
            return
        seg = self.segment[d]
        self.pending[d] = [t for t in self.pending[d] if t not in seg]
        if not self.pending[d]:
            self.walk[d] = []
            return
        self.walk[d] = []
        loc = self._local[d]
        if self.config.objective != "bandwidth":  # cheapest terminal first (Takahashi-Matsuyama)
            dist, hops = self.graft_cost_view(d)
            best = min(range(len(self.pending[d])),
                       key=lambda k: (round(dist[loc[self.pending[d][k]]], 9), hops[loc[self.pending[d][k]]], k))
            self.walk[d] = [self.pending[d].pop(best)]
            return
        b, hops = self.graft_view(d)
        step = self.config.graft_order_bw_step_mbps
        best = max(range(len(self.pending[d])),
                   key=lambda k: (math.floor(b[loc[self.pending[d][k]]] / step + 1e-9),
                                  -hops[loc[self.pending[d][k]]], -k))
        self.walk[d] = [self.pending[d].pop(best)]

    def _hops_from(self, d: int, start: int) -> list[float]:
        """Hop counts from local node ``start`` inside domain ``d`` over up links (inf if unreachable)."""
        nbr_bw = self._view.nbr_bw[d]
        hops = [math.inf] * len(nbr_bw)
        hops[start] = 0
        frontier = [start]
        while frontier:
            nxt = []
            for i in frontier:
                for j, _ in nbr_bw[i]:
                    if hops[j] == math.inf:
                        hops[j] = hops[i] + 1
                        nxt.append(j)
            frontier = nxt
        return hops

    def graft_view(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Domain ``d``'s graft summary per local node: (widest bottleneck in Mb/s from the entry through the
        segment to the node avoiding the walk, 0 if unreachable; hops to the segment avoiding the walk,
        inf if unreachable). Segment nodes hold their own bottleneck and 0 hops; walk nodes 0 and inf.

        Multi-source widest-path Dijkstra (max-min, from every segment node with its own bottleneck) and a
        breadth-first search, both over the nodes that are neither on the segment nor on the walk. On
        domains of tens of APs plain Python over adjacency lists beats numpy sweeps (no per-call overhead).
        """
        nbr_bw = self._view.nbr_bw[d]
        seg_bw = self._seg_bw[d]
        blocked, seg = self._graft_sources(d)
        b, _, _ = widest_shortest(nbr_bw, seg, blocked, source_bw=[seg_bw[i] for i in seg])
        return np.array(b), self._segment_hops(nbr_bw, seg, blocked)

    def _graft_sources(self, d: int) -> tuple[list[bool], list[int]]:
        """Domain ``d``'s graft search set-up: which local nodes no path may enter (the walk, and the segment:
        a walk ends at the first segment node it reaches, so no path runs through one) and the segment."""
        n = len(self._seg_bw[d])
        blocked = [False] * n
        for node in self.walk.get(d) or []:
            blocked[self._local[d][node]] = True
        if self.config.reentry:  # targets: the components this walk's terminal may attach to
            lab = self._label[d]
            seg = np.flatnonzero((lab >= 0) & (lab < self._walk_bound.get(d, NO_BOUND))).tolist()
        else:
            seg = np.flatnonzero(self._seg_bw[d] >= 0).tolist()
        for i in seg:
            blocked[i] = True
        return blocked, seg

    @staticmethod
    def _segment_hops(nbrs: list, seg: list[int], blocked: list[bool]) -> np.ndarray:
        """Breadth-first hops from the segment to every node avoiding ``blocked`` (0 on the segment, inf if
        unreachable)."""
        hops = [math.inf] * len(nbrs)
        for i in seg:
            hops[i] = 0
        frontier, level = seg, 0
        while frontier:
            level += 1
            nxt = []
            for i in frontier:
                for j, _ in nbrs[i]:
                    if not blocked[j] and hops[j] > level:
                        hops[j] = level
                        nxt.append(j)
            frontier = nxt
        return np.array(hops, dtype=float)

    def graft_cost_view(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Cost-objective graft summary of domain ``d`` per local node: (scaled cost of the cheapest path to
        the segment avoiding the walk, inf if unreachable; hops to the segment as in :meth:`graft_view`).

        Multi-source Dijkstra from every segment node (cost 0) over the nodes that are neither on the
        segment nor on the walk.
        """
        nbr_cost = self._view.nbr_cost[d]
        blocked, seg = self._graft_sources(d)
        dist = dijkstra(nbr_cost, seg, blocked)[0]
        return np.array(dist), self._segment_hops(nbr_cost, seg, blocked)

    def _graft_closeness(self, d: int) -> np.ndarray:
        """Cost objectives, active domain ``d``: per node 1 / (1 + cost to the segment), through the link from
        the walk head for the head's neighbours (the ``seg_bw`` channel's cost counterpart)."""
        dist = self._graft[d][0].copy()
        head = self._local[d][self.walk[d][-1]]
        for j, w in self._view.nbr_cost[d][head]:
            dist[j] = dist[j] + w
        return 1.0 / (1.0 + dist)

    def _domain_mask(self, d: int, hops: np.ndarray | None) -> np.ndarray:
        n = len(self._dnodes[d])
        mask = np.zeros(n + 1, dtype=np.int8)
        walk = self.walk.get(d)
        if self.phase != "intra" or not walk:
            mask[-1] = 1
            return mask
        # next hop: an up neighbour of the head, off the walk, from which the segment is still reachable
        # without crossing the walk (walk nodes have hops = inf), so a walk never reaches a dead end
        nbrs = self._view.nbrs[d][self._local[d][walk[-1]]]
        ok = nbrs[np.isfinite(hops[nbrs])]
        mask[ok] = 1
        if not mask.any():  # impossible by the reachability invariant (module docstring); never silent
            raise RuntimeError(f"domain {d}: walk {walk} has no valid next hop (invariant broken)")
        return mask

    def _domain_step(self, d: int, action: int) -> None:
        nxt = self._dnodes[d][action]
        walk = self.walk[d]
        if self.config.reentry:
            self._reentry_domain_step(d, nxt)
            return
        if nxt in self.segment[d]:
            nx.add_path(self.segment[d], [*walk, nxt])
            # the walk's nodes inherit the attachment's bottleneck, narrowed link by link back to the start
            loc, bw, seg_bw = self._local[d], self._view.bw[d], self._seg_bw[d]
            prev = loc[nxt]
            b = seg_bw[prev]
            for node in reversed(walk):
                i = loc[node]
                b = min(b, bw[prev, i])
                seg_bw[i] = b
                prev = i
            self._next_walk(d)
        else:
            walk.append(nxt)

    # ---- step ----
    def step(self, actions: dict[str, int]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        masks = self._mask
        reward = 0.0
        active = self._active_agents()
        for agent in active:
            if agent not in actions:
                raise InvalidActionError(f"agent {agent!r} is active and must act")
            a = int(actions[agent])
            if not 0 <= a < len(masks[agent]) or not masks[agent][a]:
                raise InvalidActionError(f"action {a} of {agent!r} is masked out (valid: "
                                         f"{np.flatnonzero(masks[agent]).tolist()})")
        self.step_count += 1
        if self.phase == "inter":
            reward += self._root_step(int(actions[ROOT]))
        else:
            for d in range(self.topology.n_domains):
                if domain_agent(d) in active:
                    self._domain_step(d, int(actions[domain_agent(d)]))
        done = self.failure is not None
        if not done and self.phase == "intra" and not any(self.walk.values()):
            reward += self._finish()
            done = True
        elif done:
            reward -= self.config.failure_penalty
        truncated = False
        if not done and self.step_count >= self.max_steps:
            self.failure = f"step budget of {self.max_steps} exhausted in the {self.phase} phase"
            reward -= self.config.failure_penalty
            truncated = True
        self._refresh()
        obs, infos = self._observations(), self._infos()
        rewards = dict.fromkeys(self.agents, reward)
        terms = dict.fromkeys(self.agents, done)
        truncs = dict.fromkeys(self.agents, truncated)
        if done or truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def _finish(self) -> float:
        """Compose segments + crossings, prune, validate, and score the tree (module docstring)."""
        from ..evaluation import tree_metrics  # lazy: evaluation will register this package's method

        if self._segment_only:  # a domain controller's components: the root composes them
            forest = nx.Graph()
            for seg in self.segment.values():
                forest.add_nodes_from(seg.nodes)
                forest.add_edges_from(seg.edges)
            self.tree = forest
            return 0.0
        tree = nx.Graph()
        tree.add_node(self.source)
        for seg in self.segment.values():
            tree.add_nodes_from(seg.nodes)
            tree.add_edges_from(seg.edges)
        tree.add_edges_from((bp, bc) for _, bp, bc in self.plan)
        if self.config.reentry:  # components of one domain may overlap: the union's best spanning tree
            tree = reduce_union(self.graph, tree, (self.source, *self.members), self.config.objective)
        else:
            tree = prune_tree(tree, (self.source, *self.members))
        validate_tree(self.graph, tree, self.source, self.members)
        self.tree = tree
        self.metrics = tree_metrics(self.graph, tree, self.source, self.members, "delay_ms")
        cfg, m = self.config, self.metrics
        if cfg.objective == "cost":  # minus the ILP's objective (sum of link delays), per receiver
            return float(-m["cost"] / (cfg.delay_ref_ms * len(self.members)))
        length = cfg.length_coef * m["tree_length"] / len(self.members)
        if cfg.objective == "delay":
            return float(-m["mean_link_delay_ms"] / cfg.delay_ref_ms - length)
        if cfg.objective == "loss":
            return float(-m["mean_link_loss"] / cfg.loss_ref - length)
        return float(m["bottleneck_bw_mbps"] / cfg.bw_ref_mbps - m["mean_link_delay_ms"] / cfg.delay_ref_ms
                     - m["mean_link_loss"] / cfg.loss_ref - cfg.length_coef * m["tree_length"] / len(self.members))

    # ---- observations ----
    def _active_agents(self) -> list[str]:
        if self.phase == "inter":
            return [ROOT]
        return [domain_agent(d) for d in range(self.topology.n_domains) if self.walk.get(d)]

    def _refresh(self) -> None:
        """Masks and per-domain node features for the current step (one graft relaxation per active domain)."""
        self._mask = {ROOT: self._compute_root_mask()}
        self._graft: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for d in range(self.topology.n_domains):
            if self.phase == "intra" and self.walk.get(d):
                self._graft[d] = self.graft_view(d) if self.config.objective == "bandwidth" else self.graft_cost_view(d)
            self._mask[domain_agent(d)] = self._domain_mask(d, self._graft.get(d, (None, None))[1])

    def _domain_nodes(self, d: int) -> np.ndarray:
        """(n_d, len(NODE_CHANNELS)) float32: indicators and graft summaries of domain ``d``'s APs."""
        loc = self._local[d]
        out = np.zeros((len(loc), len(NODE_CHANNELS)), dtype=np.float32)
        seg_bw = self._seg_bw[d]
        out[:, 0] = seg_bw >= 0
        walk = self.walk.get(d) or []
        if walk:
            out[[loc[n] for n in walk], 1] = 1
            out[loc[walk[-1]], 2] = 1
        pending = self.pending.get(d) or []
        if pending:
            out[[loc[n] for n in pending], 3] = 1
        out[self._member_local[d], 4] = 1
        if self.config.reentry:
            entries = [loc[n] for n in self.entry_rank if n in loc]
            if entries:
                out[entries, 5] = 1
            if self.exits.get(d):
                out[[loc[n] for n in self.exits[d]], 6] = 1
        elif d in self.entry:
            out[loc[self.entry[d]], 5] = 1
            if self.exits[d]:
                out[[loc[n] for n in self.exits[d]], 6] = 1
        graft = self._graft.get(d)
        if graft is not None:
            b, hops = graft
            if self.config.objective == "bandwidth":
                out[:, 7] = np.minimum(b, self.config.bw_ref_mbps) / self.config.bw_ref_mbps
            else:
                out[:, 7] = self._graft_closeness(d)
            out[:, 8] = 1.0 / (1.0 + hops)
        elif self.config.objective != "bandwidth":  # idle: the segment itself (closeness 1), nothing to graft
            out[:, 7] = out[:, 0]
            out[:, 8] = out[:, 0]
        else:  # idle: the segment itself, nothing to graft
            out[:, 7] = np.minimum(np.maximum(seg_bw, 0.0), self.config.bw_ref_mbps) / self.config.bw_ref_mbps
            out[:, 8] = out[:, 0]
        return out

    def _node_indicators(self) -> np.ndarray:
        """(N, len(NODE_CHANNELS)) float32 in ``topology.nodes`` order (all domains)."""
        out = np.zeros((len(self.topology.nodes), len(NODE_CHANNELS)), dtype=np.float32)
        for d in range(self.topology.n_domains):
            out[self._rows[d]] = self._domain_nodes(d)
        return out

    def _observations(self) -> dict[str, dict[str, np.ndarray]]:
        obs: dict[str, dict[str, np.ndarray]] = {}
        for d in range(self.topology.n_domains):
            obs[domain_agent(d)] = {"links": self._view.links[d], "nodes": self._domain_nodes(d),
                                    "action_mask": self._mask[domain_agent(d)]}
        obs[ROOT] = {"crossings": self._root_crossings(), "domains": self._root_domains(),
                     "action_mask": self._mask[ROOT]}
        return obs

    def crossing_bottlenecks(self, j: int) -> tuple[float, float, float]:
        """(exit_bw, entry_bw, transit_bw) of inter-domain link ``j`` as the next crossing, in Mb/s (zeros
        if it is not a possible crossing now).

        exit_bw: widest bottleneck inside the parent domain from its entry to the exit AP. entry_bw: mean
        over the new domain's local members of the widest bottleneck from the new entry (0 without
        members). transit_bw: the best min(widest bottleneck from the new entry to one of the new domain's
        boundary APs, free bandwidth of an up link from there into a needed domain outside the plan) — what
        the crossing offers domains further on (0 if none).
        """
        cross = self._crossing(j)
        if cross is None:
            return 0.0, 0.0, 0.0
        bp, bc = cross
        pd, cd, view = self.topology.domain_of[bp], self.topology.domain_of[bc], self._view
        exit_bw = view.widest[pd][self._local[pd][self.entry[pd]], self._local[pd][bp]]
        row = view.widest[cd][self._local[cd][bc]]
        members = self._member_local[cd]
        entry_bw = float(row[members].mean()) if len(members) else 0.0
        transit_bw = 0.0
        missing = self.needed - set(self.entry) - {cd}
        for x, other, bw in view.boundary_out[cd]:
            if other in missing:
                transit_bw = max(transit_bw, min(row[x], bw))
        return float(exit_bw), min(entry_bw, 1e9), float(min(transit_bw, 1e9))

    def crossing_costs(self, j: int) -> tuple[float, float, float]:
        """Cost objectives: (exit, entry, transit) closeness 1 / (1 + scaled cost) of inter-domain link ``j``
        as the next crossing (zeros if it is not a possible crossing now).

        exit: cheapest path inside the parent domain from its entry to the exit AP plus the crossing link
        (``objective`` "cost": from the nearest of its entry, its members and the exits already planned in it).
        entry: mean over the new domain's local members of the closeness of the cheapest path from the new
        entry (0 without members). transit: the best closeness of (cheapest path from the new entry to a
        boundary AP + an up link from there into a needed domain outside the plan), 0 if none.
        """
        if self.config.reentry:
            return self._reentry_crossing_costs(j)
        cross = self._crossing(j)
        if cross is None:
            return 0.0, 0.0, 0.0
        bp, bc = cross
        dom, view = self.topology.domain_of, self._view
        pd, cd, loc = dom[bp], dom[bc], self._local[dom[bp]]
        if self.config.objective == "cost":
            # Takahashi-Matsuyama at the root: the exit attaches to the nearest node the parent domain's tree
            # will hold (its entry, its members, exits already planned there), not to the entry only
            anchors = [loc[self.entry[pd]], *self._member_local[pd],
                       *(loc[x] for _, x, _ in self.plan if dom[x] == pd)]
            exit_c = min(view.cheapest[pd][a, loc[bp]] for a in anchors) + view.inter_cost[j]
        else:
            exit_c = view.cheapest[pd][loc[self.entry[pd]], loc[bp]] + view.inter_cost[j]
        row = view.cheapest[cd][self._local[cd][bc]]
        members = self._member_local[cd]
        entry = float((1.0 / (1.0 + row[members])).mean()) if len(members) else 0.0
        transit = 0.0
        missing = self.needed - set(self.entry) - {cd}
        for k, (u, v) in enumerate(self._inter):
            if not np.isfinite(view.inter_cost[k]):
                continue
            for x, y in ((u, v), (v, u)):
                if dom[x] == cd and dom[y] in missing:
                    transit = max(transit, 1.0 / (1.0 + row[self._local[cd][x]] + view.inter_cost[k]))
        return float(1.0 / (1.0 + exit_c)), entry, float(transit)

    def _root_crossings(self) -> np.ndarray:
        if self.config.reentry:
            return self._reentry_root_crossings()
        extra = np.zeros((len(self._inter), len(ROOT_CROSSING_EXTRA)), dtype=np.float32)
        in_plan = np.zeros(self.topology.n_domains, dtype=bool)
        in_plan[list(self.entry)] = True
        a, b = in_plan[self._inter_domains[:, 0]], in_plan[self._inter_domains[:, 1]]
        extra[:, 0], extra[:, 1] = a | b, a & b
        extra[[j for j, _, _ in self.plan], 2] = 1
        if self.phase == "inter":
            ref = self.config.bw_ref_mbps
            for j in np.flatnonzero(a ^ b):
                if self.config.objective == "bandwidth":
                    extra[j, 3:] = [min(x, ref) / ref for x in self.crossing_bottlenecks(int(j))]
                else:
                    extra[j, 3:] = self.crossing_costs(int(j))
        return np.concatenate([self._view.inter_features, extra], axis=1)

    def _root_domains(self) -> np.ndarray:
        dom_src = self.topology.domain_of[self.source]
        return np.array([[d in self.entry, d in self.needed, bool(self.local_members[d]), d == dom_src]
                         for d in range(self.topology.n_domains)], dtype=np.float32)

    def state(self) -> np.ndarray:
        """Global state for a centralised critic: per-link features, per-node indicators, phase one-hot."""
        phase = np.array([self.phase == "inter", self.phase == "intra"], dtype=np.float32)
        return np.concatenate([self._view.link_features.ravel(), self._node_indicators().ravel(), phase])

    def _infos(self) -> dict[str, dict]:
        active = set(self._active_agents()) if self.failure is None and self.tree is None else set()
        common = {"phase": self.phase, "failure": self.failure, "tree": self.tree, "metrics": self.metrics,
                  "backtracks": self.backtracks}
        return {a: {**common, "active": a in active} for a in self.possible_agents}

    def render(self) -> None:
        return None

    def close(self) -> None:
        return None



def widest_expert_action(env: CrossDomainMulticastEnv, agent: str, bw_step_mbps: float = 0.5) -> int:
    """The bandwidth-aware expert's move (behaviour-cloning teacher): widest-path grafting.

    Domain agent: the valid next hop that maximises the bottleneck the grafted terminal would get,
    min(free bandwidth of the link from the head, the node's ``seg_bw``), quantised to ``bw_step_mbps``;
    ties go to fewer hops to the segment, then the lower-delay link. Root: the valid crossing maximising
    min(exit_bw, link free bandwidth, max(entry_bw, transit_bw))
    (:meth:`CrossDomainMulticastEnv.crossing_bottlenecks`),
    quantised the same way, ties to the lower link index; a stuck root backtracks. Grafting each terminal
    by its widest path is Takahashi-Matsuyama with the bottleneck as the objective; a receiver's bottleneck
    is then the best any path into the current segment offers.
    """
    mask = env._mask[agent]
    valid = np.flatnonzero(mask[:-1])
    if not len(valid):
        return len(mask) - 1
    q = lambda x: math.floor(x / bw_step_mbps + 1e-9)  # noqa: E731 - quantiser shared by both branches
    if agent == ROOT:
        if env.config.reentry:  # the widest (then shortest) path to the next member, its crossing
            def reentry_key(r: int):
                total, _, hops = env.reentry_crossing_value(r)
                return q(total), -hops, -r
            return int(max(valid, key=reentry_key))

        def root_key(j: int):
            exit_bw, entry_bw, transit_bw = env.crossing_bottlenecks(j)
            return q(min(exit_bw, env._view.inter_bw[j], max(entry_bw, transit_bw))), -j
        return int(max(valid, key=root_key))
    d = int(agent.removeprefix("domain_"))
    head = env._local[d][env.walk[d][-1]]
    seg_bw, hops = env._graft[d]
    bw, delay = env._view.bw[d][head], env._view.links[d][LINK_FIELDS.index("delay_ms"), head]
    return int(max(valid, key=lambda y: (q(min(bw[y], seg_bw[y])), -hops[y], -delay[y], -y)))


def cheapest_expert_action(env: CrossDomainMulticastEnv, agent: str) -> int:
    """The cost objectives' expert (``objective`` "delay" / "loss" / "cost"): cheapest-path grafting.

    Domain agent: the valid next hop minimising the scaled cost of the link from the head plus the node's
    cheapest cost to the segment (i.e. maximising the ``seg_bw`` channel's closeness); ties to fewer hops,
    then the lower index. Grafting the cheapest pending terminal first by its cheapest path is
    Takahashi-Matsuyama with delay or -ln(1 - loss) as the link weight (exactly so with ``cost_offset`` 0,
    as for "cost", inside the "each domain entered once" decomposition). Root: the valid crossing maximising
    exit closeness x max(entry, transit) closeness (:meth:`CrossDomainMulticastEnv.crossing_costs`), ties to
    the lower link index; a stuck root backtracks.
    """
    mask = env._mask[agent]
    valid = np.flatnonzero(mask[:-1])
    if not len(valid):
        return len(mask) - 1
    if agent == ROOT:
        def root_key(j: int):
            exit_c, entry_c, transit_c = env.crossing_costs(j)
            return round(exit_c * max(entry_c, transit_c), 9), -j
        return int(max(valid, key=root_key))
    d = int(agent.removeprefix("domain_"))
    close = env._graft_closeness(d)
    hops = env._graft[d][1]
    return int(max(valid, key=lambda y: (round(close[y], 9), -hops[y], -y)))


def expert_action_for(env: CrossDomainMulticastEnv, agent: str) -> int:
    """The behaviour-cloning teacher for the env's objective: widest-path grafting for "bandwidth",
    cheapest-path grafting for "delay", "loss" and "cost"."""
    if env.config.objective == "bandwidth":
        return widest_expert_action(env, agent)
    return cheapest_expert_action(env, agent)
