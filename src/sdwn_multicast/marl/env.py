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
tree + intra-domain trees" composes into one tree (the paper's assumption, enforced here). In the *intra*
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
  mean link delay (ms) and P the mean link loss over tree links, |T| the number of tree links;
* ``-failure_penalty`` at the end when no tree was built.

Observations come from a :class:`~sdwn_multicast.simulator.LinkStateSnapshot` — the link state the
controllers have synchronised — never from the simulator's internal state.
"""

from __future__ import annotations

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

ROOT = "root"
#: Per-link fields an agent observes and their scale (value / scale is what it sees).
LINK_FIELDS: tuple[str, ...] = ("free_bw_mbps", "delay_ms", "loss", "up")
#: Per-node indicator channels of the ``"nodes"`` observation.
NODE_CHANNELS: tuple[str, ...] = ("in_tree", "on_walk", "head", "pending", "member", "entry", "exit")
ROOT_CROSSING_EXTRA: tuple[str, ...] = ("touches_plan", "inside_plan", "chosen")
ROOT_DOMAIN_CHANNELS: tuple[str, ...] = ("in_plan", "needed", "has_members", "source_domain")


class InvalidActionError(ValueError):
    """An active agent sent an action its mask forbids, or sent none."""


def domain_agent(d: int) -> str:
    return f"domain_{d}"


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

    def __post_init__(self) -> None:
        lo, hi = self.group_size
        if not 1 <= lo <= hi:
            raise ValueError(f"group_size must satisfy 1 <= min <= max, got {self.group_size}")

    @property
    def link_scale(self) -> np.ndarray:
        return np.array([self.bw_ref_mbps, self.delay_ref_ms, 1.0, 1.0], dtype=np.float32)


class CrossDomainMulticastEnv(ParallelEnv):
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
        self._inter = topo.inter_domain_links
        n_f, n_c = len(LINK_FIELDS), len(NODE_CHANNELS)
        self._obs_spaces: dict[str, spaces.Dict] = {ROOT: spaces.Dict({
            "crossings": spaces.Box(0.0, np.inf, (len(self._inter), n_f + len(ROOT_CROSSING_EXTRA)), np.float32),
            "domains": spaces.Box(0.0, 1.0, (nd, len(ROOT_DOMAIN_CHANNELS)), np.float32),
            "action_mask": spaces.Box(0, 1, (len(self._inter) + 1,), np.int8),
        })}
        self._act_spaces: dict[str, spaces.Discrete] = {ROOT: spaces.Discrete(len(self._inter) + 1)}
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
        self.graph = self.snapshot.to_graph()
        self._dgraph = [self.graph.subgraph(ns) for ns in self._dnodes]
        self._comp: dict[Node, int] = {}
        for g in self._dgraph:
            for c, comp in enumerate(nx.connected_components(g)):
                for n in comp:
                    self._comp[n] = c
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
        self._mask_step = None
        self._root_mask = self._compute_root_mask()
        self._maybe_finish_inter()

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
        mask = np.zeros(len(self._inter) + 1, dtype=np.int8)
        if self.phase != "inter":
            mask[-1] = 1
            return mask
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
            dist = nx.single_source_shortest_path_length(self._dgraph[d], e)
            terms = [t for t in dict.fromkeys([*self.local_members[d], *self.exits[d]]) if t != e]
            self.pending[d] = sorted(terms, key=lambda t: (dist[t], self.topology.node_index[t]))
            self.walk[d] = []
            self._next_walk(d)

    # ---- domain agents (intra-domain) ----
    def _next_walk(self, d: int) -> None:
        seg = self.segment[d]
        while self.pending[d] and self.pending[d][0] in seg:
            self.pending[d].pop(0)
        self.walk[d] = [self.pending[d].pop(0)] if self.pending[d] else []

    def _domain_mask(self, d: int) -> np.ndarray:
        n = len(self._dnodes[d])
        mask = np.zeros(n + 1, dtype=np.int8)
        walk = self.walk.get(d)
        if self.phase != "intra" or not walk:
            mask[-1] = 1
            return mask
        on_walk = set(walk)
        g = self._dgraph[d]
        # nodes from which the segment is reachable without touching the walk
        free = g.subgraph([x for x in g if x not in on_walk])
        seg_nodes = list(self.segment[d].nodes)
        reach = set(seg_nodes)
        frontier = list(seg_nodes)
        while frontier:
            x = frontier.pop()
            for y in free[x]:
                if y not in reach:
                    reach.add(y)
                    frontier.append(y)
        for y in g[walk[-1]]:
            if y not in on_walk and y in reach:
                mask[self._local[d][y]] = 1
        if not mask.any():  # impossible by the reachability invariant (module docstring); never silent
            raise RuntimeError(f"domain {d}: walk {walk} has no valid next hop (invariant broken)")
        return mask

    def _domain_step(self, d: int, action: int) -> None:
        nxt = self._dnodes[d][action]
        walk = self.walk[d]
        if nxt in self.segment[d]:
            nx.add_path(self.segment[d], [*walk, nxt])
            self._next_walk(d)
        else:
            walk.append(nxt)

    # ---- step ----
    def step(self, actions: dict[str, int]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        masks = self._masks
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
        if self.phase == "inter" and self.failure is None:
            self._root_mask = self._compute_root_mask()
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

        tree = nx.Graph()
        tree.add_node(self.source)
        for seg in self.segment.values():
            tree.add_nodes_from(seg.nodes)
            tree.add_edges_from(seg.edges)
        tree.add_edges_from((bp, bc) for _, bp, bc in self.plan)
        tree = prune_tree(tree, (self.source, *self.members))
        validate_tree(self.graph, tree, self.source, self.members)
        self.tree = tree
        self.metrics = tree_metrics(self.graph, tree, self.source, self.members, "delay_ms")
        cfg, m = self.config, self.metrics
        return float(m["bottleneck_bw_mbps"] / cfg.bw_ref_mbps - m["mean_link_delay_ms"] / cfg.delay_ref_ms
                     - m["mean_link_loss"] / cfg.loss_ref - cfg.length_coef * m["tree_length"] / len(self.members))

    # ---- observations ----
    def _active_agents(self) -> list[str]:
        if self.phase == "inter":
            return [ROOT]
        return [domain_agent(d) for d in range(self.topology.n_domains) if self.walk.get(d)]

    @property
    def _masks(self) -> dict[str, np.ndarray]:
        if getattr(self, "_mask_step", None) != (self.step_count, self.phase, self.failure):
            self._mask_cache = {ROOT: self._root_mask if self.phase == "inter" else self._compute_root_mask()}
            for d in range(self.topology.n_domains):
                self._mask_cache[domain_agent(d)] = self._domain_mask(d)
            self._mask_step = (self.step_count, self.phase, self.failure)
        return self._mask_cache

    def _node_indicators(self) -> np.ndarray:
        """(N, len(NODE_CHANNELS)) float32 in ``topology.nodes`` order."""
        idx = self.topology.node_index
        out = np.zeros((len(idx), len(NODE_CHANNELS)), dtype=np.float32)
        col = {c: i for i, c in enumerate(NODE_CHANNELS)}
        for d, seg in self.segment.items():
            for n in seg:
                out[idx[n], col["in_tree"]] = 1
            for n in self.walk.get(d, []):
                out[idx[n], col["on_walk"]] = 1
            if self.walk.get(d):
                out[idx[self.walk[d][-1]], col["head"]] = 1
            for n in self.pending.get(d, []):
                out[idx[n], col["pending"]] = 1
        for m in self.members:
            out[idx[m], col["member"]] = 1
        for e in self.entry.values():
            out[idx[e], col["entry"]] = 1
        for ex in self.exits.values():
            for n in ex:
                out[idx[n], col["exit"]] = 1
        return out

    def _observations(self) -> dict[str, dict[str, np.ndarray]]:
        masks = self._masks
        scale = self.config.link_scale[:, None, None]
        nodes = self._node_indicators()
        dom_arr = self.topology.domain_array
        obs: dict[str, dict[str, np.ndarray]] = {}
        for d in range(self.topology.n_domains):
            links = self.snapshot.feature_tensor(LINK_FIELDS, domain=d) / scale
            obs[domain_agent(d)] = {"links": links.astype(np.float32), "nodes": nodes[dom_arr == d],
                                    "action_mask": masks[domain_agent(d)]}
        obs[ROOT] = {"crossings": self._root_crossings(), "domains": self._root_domains(),
                     "action_mask": masks[ROOT]}
        return obs

    def _link_features(self) -> np.ndarray:
        """(E, len(LINK_FIELDS)) scaled per-link features, 0 on failed links."""
        s = self.snapshot
        cols = [np.where(s.up, np.asarray(getattr(s, f), dtype=float), 0.0) for f in LINK_FIELDS]
        return (np.stack(cols, axis=1) / self.config.link_scale[None, :]).astype(np.float32)

    def _root_crossings(self) -> np.ndarray:
        feats = self._link_features()[[self.topology.edge_index[e] for e in self._inter]]
        extra = np.zeros((len(self._inter), len(ROOT_CROSSING_EXTRA)), dtype=np.float32)
        dom = self.topology.domain_of
        chosen = {j for j, _, _ in self.plan}
        for j, (u, v) in enumerate(self._inter):
            a, b = dom[u] in self.entry, dom[v] in self.entry
            extra[j] = (a or b, a and b, j in chosen)
        return np.concatenate([feats, extra], axis=1)

    def _root_domains(self) -> np.ndarray:
        dom_src = self.topology.domain_of[self.source]
        return np.array([[d in self.entry, d in self.needed, bool(self.local_members[d]), d == dom_src]
                         for d in range(self.topology.n_domains)], dtype=np.float32)

    def state(self) -> np.ndarray:
        """Global state for a centralised critic: per-link features, per-node indicators, phase one-hot."""
        phase = np.array([self.phase == "inter", self.phase == "intra"], dtype=np.float32)
        return np.concatenate([self._link_features().ravel(), self._node_indicators().ravel(), phase])

    def _infos(self) -> dict[str, dict]:
        active = set(self._active_agents()) if self.failure is None and self.tree is None else set()
        common = {"phase": self.phase, "failure": self.failure, "tree": self.tree, "metrics": self.metrics,
                  "backtracks": self.backtracks}
        return {a: {**common, "active": a in active} for a in self.possible_agents}

    def render(self) -> None:
        return None

    def close(self) -> None:
        return None

