"""Re-entry planning for :class:`~sdwn_multicast.marl.env.CrossDomainMulticastEnv` (``MarlEnvConfig.reentry``;
the env module docstring, "Re-entry", describes it): the root's planned tree and oriented crossings that may
enter a domain again, and the ranked components each domain grafts. A mixin: the environment inherits it and
calls these methods when its configuration asks for re-entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np

from ..topology import Node
from ..trees import MulticastError, tree_from_edges
from .channels import ROOT, ROOT_CROSSING_EXTRA
from .paths import dijkstra, widest_shortest

#: bound of a member terminal: it may attach to any component of its domain
NO_BOUND = 1 << 30


def reduce_union(graph: nx.Graph, union: nx.Graph, terminals: Sequence[Node], objective: str) -> nx.Graph:
    """The tree a re-entry plan's union (components + crossings, possibly with cycles) is reduced to: the best
    spanning tree for ``objective`` (cheapest, or widest by 1 / bandwidth; only the order of the weights
    matters), pruned to ``terminals``. For ``"cost"`` it may use every up link of ``graph`` between the
    union's nodes (KMB's last step), which can only lower the tree cost. The environment and the root
    controller both compose with it."""
    weight = {"bandwidth": "inv_bw", "loss": "loss"}.get(objective, "delay_ms")
    edges = graph.subgraph(union.nodes).edges if objective == "cost" else union.edges
    return tree_from_edges(graph, edges, terminals, weight)


class ReentryPlanning:
    """The re-entry half of the environment (state lives on the environment: ``planned``, ``entry_rank``,
    ``exit_bound``, per-domain component labels ``_label`` and terminal bounds ``_bound``)."""

    def _oriented(self, r: int) -> tuple[Node, Node]:
        """(exit, entry) of root candidate ``r``: link ``r mod L`` from its first endpoint (r < L) or its second."""
        u, v = self._inter[r % len(self._inter)]
        return (u, v) if r < len(self._inter) else (v, u)

    def _reset_segments(self, spec: dict) -> None:
        """A domain controller's episode (re-entry): ``spec = {"domain": d, "entries": {node: rank},
        "terminals": {node: bound}}`` from the root's plan (:meth:`segment_plan`); only domain ``d``'s agent
        acts, and the episode ends with the forest of its components in ``infos[a]["tree"]``."""
        if not self.config.reentry:
            raise MulticastError("a segments episode needs a re-entry configuration (MarlEnvConfig.reentry)")
        d, entries, terminals = spec["domain"], dict(spec["entries"]), dict(spec["terminals"])
        dom = self.topology.domain_of
        outside = [n for n in (*entries, *terminals) if dom.get(n) != d]
        if not entries or outside:
            raise MulticastError(f"segments of domain {d}: needs entries, and {outside} are not APs of domain {d}")
        self.source = min(entries, key=entries.get)
        self.members = tuple(t for t in terminals if t not in entries) or (self.source,)
        self._segment_only = True
        self._start_episode()  # reentry: _start_reentry, which sees _segment_only
        self.entry_rank = dict(entries)
        self.planned = {*entries, *terminals}
        self.local_members = {x: [] for x in range(self.topology.n_domains)}
        self.local_members[d] = [t for t, b in terminals.items() if b <= 0]  # bound <= 0: any component
        self.exit_bound = {d: {t: int(b) for t, b in terminals.items() if b > 0}}
        self._member_local[d] = np.array([self._local[d][m] for m in self.local_members[d]], dtype=np.int64)
        self._start_reentry_intra()
        self._refresh()

    def segment_plan(self) -> dict[int, tuple[tuple[tuple[Node, int], ...], tuple[tuple[Node, int], ...]]]:
        """Re-entry, after the root's phase: per domain, its entries (node, rank) and terminals (node, bound:
        an exit attaches to components of rank < bound, a member (bound 0) to any) for :meth:`_reset_segments`."""
        if not self.config.reentry or self.phase != "intra":
            raise MulticastError("segment_plan() needs a re-entry episode past the root's phase")
        out = {}
        for d in self.segment:
            entries = tuple((n, k) for n, k in self.entry_rank.items() if self.topology.domain_of[n] == d)
            terms = tuple((t, 0 if b >= NO_BOUND else b) for t, b in self._bound[d].items())
            out[d] = (entries, terms)
        return out

    def _start_reentry(self) -> None:
        self.planned: set[Node] = {self.source}  # the root's planned tree: nodes the tree will hold
        self.entry_rank: dict[Node, int] = {self.source: 0}  # entries in plan order (the source first)
        self.exit_bound: dict[int, dict[Node, int]] = {}  # per domain: exit -> components it may attach to
        self._idle_root_obs: np.ndarray | None = None  # the root's observation once it is idle (fixed)
        if self._segment_only:
            return
        self._absorb()
        if all(m in self.planned for m in self.members):
            self._start_reentry_intra()

    def _absorb(self) -> None:
        """Add to the planned tree, nearest first (Takahashi-Matsuyama's order), every member whose cheapest
        path from it stays inside the member's domain; stop at the first one reached best over a crossing."""
        idx, nodes, dom = self.topology.node_index, self.topology.nodes, self.topology.domain_of
        while True:
            rest = [m for m in self.members if m not in self.planned]
            if not rest:
                return
            value, hops, pred = self._search(None, [idx[n] for n in self.planned])
            m = min(rest, key=lambda n: (*self._rank(value[idx[n]], hops[idx[n]]), idx[n]))
            path = [idx[m]]
            while pred[path[-1]] >= 0:
                path.append(pred[path[-1]])
            if not self._reached(value[idx[m]]) or any(dom[nodes[i]] != dom[m] for i in path):
                return
            self.planned.update(nodes[i] for i in path)

    def _search(self, d: int | None, sources: Sequence[int], blocked: Sequence[bool] | None = None):
        """Re-entry planning paths from ``sources`` inside domain ``d`` (local indices) or, for ``d`` None, over
        the whole network: (value, hops, predecessor) per node. The value is the cheapest cost (cost
        objectives; inf if unreachable) or the widest bottleneck in Mb/s, fewest hops among the widest
        ("bandwidth"; 0 if unreachable)."""
        v = self._view
        if self.config.objective == "bandwidth":
            return widest_shortest(v.gnbr_bw if d is None else v.nbr_bw[d], sources, blocked)
        dist, pred = dijkstra(v.gnbr_cost if d is None else v.nbr_cost[d], sources, blocked)
        return dist, [0.0] * len(dist), pred

    def _reached(self, value: float) -> bool:
        return value > 0 if self.config.objective == "bandwidth" else math.isfinite(value)

    def _rank(self, value: float, hops: float) -> tuple:
        """Sort key of a planning value, best first: cheapest, or widest (quantised) then fewest hops."""
        if self.config.objective == "bandwidth":
            return -math.floor(value / self.config.graft_order_bw_step_mbps + 1e-9), hops
        return round(value, 9), hops

    def _plan_search(self) -> None:
        """Per domain: cheapest intra-domain paths from the planned tree; whole network: cheapest path from
        each node to a member not yet planned, avoiding the planned tree (``onward``)."""
        dom, idx = self.topology.domain_of, self.topology.node_index
        self._adist: dict[int, tuple[list[float], list[float], list[int]]] = {}
        for d in range(self.topology.n_domains):
            src = [self._local[d][n] for n in self.planned if dom[n] == d]
            if src:
                self._adist[d] = self._search(d, src)
        blocked = [False] * len(self.topology.nodes)
        for n in self.planned:
            blocked[idx[n]] = True
        rest = [idx[m] for m in self.members if m not in self.planned]
        self._onward = self._search(None, rest, blocked)[:2]

    def _reentry_root_mask(self, mask: np.ndarray) -> np.ndarray:
        """A crossing u -> v is valid if the link is up, u is reachable inside its domain from the planned
        tree, v is not planned and v reaches a member not yet planned without touching the planned tree."""
        self._plan_search()
        dom, idx = self.topology.domain_of, self.topology.node_index
        for r in range(self._n_cross):
            if self._view.inter_bw[r % len(self._inter)] <= 0:  # link down
                continue
            u, v = self._oriented(r)
            a = self._adist.get(dom[u])
            if a is None or not self._reached(a[0][self._local[dom[u]][u]]):
                continue
            if v not in self.planned and self._reached(self._onward[0][idx[v]]):
                mask[r] = 1
        if not mask.any():
            mask[-1] = 1  # no crossing reaches the rest (cannot happen for a connected request); step fails
        return mask

    def _reentry_root_step(self, action: int) -> float:
        if action == self._n_cross:
            rest = [m for m in self.members if m not in self.planned]
            self.failure = f"no crossing from the planned tree reaches members {rest}"
            return 0.0
        u, v = self._oriented(action)
        dom = self.topology.domain_of
        du, dv = dom[u], dom[v]
        pred = self._adist[du][2]
        i = self._local[du][u]
        while i >= 0:  # the cheapest path from the planned tree to the exit joins the plan
            self.planned.add(self._dnodes[du][i])
            i = pred[i]
        self.planned.add(v)
        self.plan.append((action % len(self._inter), u, v))
        self.taboo.append(set())
        k = len(self.plan)
        self.entry_rank[v] = k
        self.entry.setdefault(dv, v)
        self.parent.setdefault(dv, du)
        self.exits.setdefault(dv, [])
        self.exits.setdefault(du, []).append(u)
        # the exit may attach only to components entered before this crossing, so every component stays
        # connected to the source through earlier ones (no cycle through its own descendants)
        bounds = self.exit_bound.setdefault(du, {})
        bounds[u] = min(bounds.get(u, k), k)
        self._absorb()
        if all(m in self.planned for m in self.members):
            self._start_reentry_intra()
        return 0.0

    def reentry_crossing_value(self, r: int) -> tuple[float, float, float] | None:
        """Re-entry root candidate ``r`` (an oriented link), None unless valid now: (value of the best path
        planned tree -> exit -> link -> entry -> nearest member not yet planned, value of its onward part
        entry -> member, hops of the whole path). Values are scaled costs (cost objectives) or bottlenecks in
        Mb/s ("bandwidth")."""
        if self.phase != "inter" or r >= self._n_cross or not self._mask[ROOT][r]:
            return None
        u, v = self._oriented(r)
        du, j, iv = self.topology.domain_of[u], r % len(self._inter), self.topology.node_index[v]
        a, a_hops, _ = (x[self._local[du][u]] for x in self._adist[du])
        o, o_hops = self._onward[0][iv], self._onward[1][iv]
        hops = a_hops + 1 + o_hops
        if self.config.objective == "bandwidth":
            return min(a, self._view.inter_bw[j], o), o, hops
        return a + self._view.inter_cost[j] + o, o, hops

    def _reentry_crossing_costs(self, r: int) -> tuple[float, float, float]:
        """The root's three summary columns for candidate ``r`` (zeros unless valid now): the whole path's
        closeness 1 / (1 + cost) or bottleneck / ``bw_ref_mbps``, the onward part's, and 1.0 (no separate
        transit term, so the actor's combination of the columns is the whole path's value)."""
        val = self.reentry_crossing_value(r)
        if val is None:
            return 0.0, 0.0, 0.0
        total, onward, _ = val
        if self.config.objective == "bandwidth":
            ref = self.config.bw_ref_mbps
            return min(total, ref) / ref, min(onward, ref) / ref, 1.0
        return float(1.0 / (1.0 + total)), float(1.0 / (1.0 + onward)), 1.0

    def _reentry_root_crossings(self) -> np.ndarray:
        if self.phase != "inter" and self._idle_root_obs is not None:
            return self._idle_root_obs  # the plan no longer changes once the domains graft
        n_l = len(self._inter)
        extra = np.zeros((self._n_cross, len(ROOT_CROSSING_EXTRA)), dtype=np.float32)
        chosen = {j for j, _, _ in self.plan}
        dom = self.topology.domain_of
        for r in range(self._n_cross):
            u, v = self._oriented(r)
            a = self._adist.get(dom[u]) if self.phase == "inter" else None
            extra[r, 0] = a is not None and self._reached(a[0][self._local[dom[u]][u]])
            extra[r, 1] = v in self.planned
            extra[r, 2] = r % n_l in chosen
            extra[r, 3:] = self._reentry_crossing_costs(r)
        out = np.concatenate([np.concatenate([self._view.inter_features] * 2), extra], axis=1)
        if self.phase != "inter":
            self._idle_root_obs = out
        return out

    def _start_reentry_intra(self) -> None:
        """Every domain with an entry grafts its members (any component) and exits (earlier components only)
        onto components that start at its entries."""
        self.phase = "intra"
        dom = self.topology.domain_of
        self._label = [np.full(len(ns), -1, dtype=np.int64) for ns in self._dnodes]
        self._bound: dict[int, dict[Node, int]] = {}
        self._walk_bound: dict[int, int] = {}
        for e, k in self.entry_rank.items():
            d = dom[e]
            if d not in self.segment:
                self.segment[d] = nx.Graph()
            self.segment[d].add_node(e)
            self._label[d][self._local[d][e]] = k
            self._seg_bw[d][self._local[d][e]] = np.inf
        for d in self.segment:
            bound = dict.fromkeys(self.local_members[d], NO_BOUND)
            for u, k in self.exit_bound.get(d, {}).items():
                bound[u] = min(bound.get(u, k), k)
            self._bound[d] = bound
            self.pending[d] = sorted(bound, key=self.topology.node_index.get)
            self.walk[d] = []
            self._next_walk(d)

    def _grafted(self, d: int, t: Node) -> bool:
        lab = self._label[d][self._local[d][t]]
        return 0 <= lab < self._bound[d][t]

    def _reentry_next_walk(self, d: int) -> None:
        """The pending terminal best placed to reach one of the components it may attach to grafts next
        (cheapest, or widest then fewest hops for "bandwidth")."""
        self.walk[d] = []
        self.pending[d] = [t for t in self.pending[d] if not self._grafted(d, t)]
        if not self.pending[d]:
            return
        loc, best, best_key = self._local[d], 0, None
        for b in sorted({self._bound[d][t] for t in self.pending[d]}):
            self._walk_bound[d] = b
            value, hops = self.graft_view(d) if self.config.objective == "bandwidth" else self.graft_cost_view(d)
            for k, t in enumerate(self.pending[d]):
                key = (*self._rank(value[loc[t]], hops[loc[t]]), k)
                if self._bound[d][t] == b and (best_key is None or key < best_key):
                    best, best_key = k, key
        t = self.pending[d].pop(best)
        self.walk[d] = [t]
        self._walk_bound[d] = self._bound[d][t]

    def _reentry_domain_step(self, d: int, nxt: Node) -> None:
        walk, lab, loc = self.walk[d], self._label[d], self._local[d]
        k = lab[loc[nxt]]
        if not 0 <= k < self._walk_bound[d]:  # not a target (other components are passable)
            walk.append(nxt)
            return
        nx.add_path(self.segment[d], [*walk, nxt])
        # the walk joins component k (a node on two components keeps the earlier one); its nodes inherit the
        # attachment's bottleneck, narrowed link by link back to the terminal
        seg_bw, bw = self._seg_bw[d], self._view.bw[d]
        prev = loc[nxt]
        b = seg_bw[prev]
        for node in reversed(walk):
            i = loc[node]
            lab[i] = k if lab[i] < 0 else min(lab[i], k)
            b = min(b, bw[prev, i])
            seg_bw[i] = max(seg_bw[i], b)
            prev = i
        self._next_walk(d)
