"""Exact minimum Steiner tree: directed multicommodity-flow ILP solved by HiGHS through PuLP.

Also a brute-force reference (enumerate Steiner-node subsets) used to check the ILP on small graphs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterable

import networkx as nx
import pulp

from ..topology import Node
from ..trees import MulticastError, check_request, prune_tree, tree_from_edges


@contextlib.contextmanager
def _c_stdout_silenced():
    """Send file descriptor 1 to /dev/null (C-level prints such as the HiGHS banner), restoring it after."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _QuietHiGHS(pulp.HiGHS):
    """PuLP's HiGHS with ``msg=False`` also silencing the banner ``highspy.Highs()`` prints when created
    (before PuLP can set ``output_flag``), so ``sdwn-mcast`` output stays clean."""

    def createAndConfigureSolver(self, lp):
        with _c_stdout_silenced():
            return super().createAndConfigureSolver(lp)


class SolverError(MulticastError):
    """The ILP solver did not prove optimality (time limit, infeasible model or solver failure)."""


class ProblemTooLargeError(MulticastError):
    """The request is beyond the size the exact method is meant for."""


def exact_steiner_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms",
                       time_limit_s: float = 60.0, max_nodes: int = 120) -> nx.Graph:
    """Minimum-weight Steiner tree by the directed multicommodity-flow formulation (Wong 1984).

    Variables: x_a in {0,1} per arc a (both directions of every link), f^k_a in [0,1] per member k.
    Each member receives one unit of its own commodity from the source; f^k_a <= x_a; every node has
    in-degree <= 1 (0 at the source); minimise sum_e w_e (x_uv + x_vu). The LP relaxation of this
    formulation equals the bidirected-cut relaxation, so HiGHS closes most instances at the root.
    Exact for ``max_nodes``-sized graphs in seconds (intended for <= ~60 nodes); raises
    :class:`SolverError` if optimality is not proven within ``time_limit_s``.
    """
    members = check_request(graph, source, members)
    comp = graph.subgraph(nx.node_connected_component(graph, source))
    if comp.number_of_nodes() > max_nodes:
        raise ProblemTooLargeError(f"exact Steiner ILP limited to {max_nodes} nodes, got {comp.number_of_nodes()}")
    nodes = list(comp.nodes)
    nid = {n: i for i, n in enumerate(nodes)}
    arcs = [(u, v) for u, v in comp.edges] + [(v, u) for u, v in comp.edges]
    prob = pulp.LpProblem("steiner", pulp.LpMinimize)
    x = {a: pulp.LpVariable(f"x_{nid[a[0]]}_{nid[a[1]]}", cat="Binary") for a in arcs}
    f = {(k, a): pulp.LpVariable(f"f_{ki}_{nid[a[0]]}_{nid[a[1]]}", lowBound=0, upBound=1)
         for ki, k in enumerate(members) for a in arcs}
    prob += pulp.lpSum(comp.edges[a][weight] * x[a] for a in arcs)
    into = {n: [a for a in arcs if a[1] == n] for n in nodes}
    out = {n: [a for a in arcs if a[0] == n] for n in nodes}
    for u, v in comp.edges:
        prob += x[(u, v)] + x[(v, u)] <= 1
    for n in nodes:
        prob += pulp.lpSum(x[a] for a in into[n]) <= (0 if n == source else 1)
    for k in members:
        for n in nodes:
            balance = pulp.lpSum(f[(k, a)] for a in into[n]) - pulp.lpSum(f[(k, a)] for a in out[n])
            prob += balance == (1 if n == k else -1 if n == source else 0)
        for a in arcs:
            prob += f[(k, a)] <= x[a]
    solver = _QuietHiGHS(msg=False, timeLimit=time_limit_s, threads=1)
    status = prob.solve(solver)
    if pulp.LpStatus[status] != "Optimal":
        raise SolverError(f"HiGHS status {pulp.LpStatus[status]} for a {len(nodes)}-node Steiner ILP")
    chosen = [a for a in arcs if (x[a].value() or 0) > 0.5]
    return tree_from_edges(comp, chosen, (source, *members), weight)


def brute_force_steiner_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms",
                             max_steiner_candidates: int = 14) -> nx.Graph:
    """Reference optimum: min over Steiner-node subsets S of MST(G[terminals + S]). Exponential; tests only."""
    members = check_request(graph, source, members)
    terminals = (source, *members)
    others = [n for n in nx.node_connected_component(graph, source) if n not in terminals]
    if len(others) > max_steiner_candidates:
        raise ProblemTooLargeError(f"brute force over {len(others)} Steiner candidates is too slow")
    best, best_cost = None, float("inf")
    for r in range(len(others) + 1):
        for extra in itertools.combinations(others, r):
            sub = graph.subgraph((*terminals, *extra))
            if not nx.is_connected(sub):
                continue
            mst = nx.minimum_spanning_tree(sub, weight=weight)
            c = mst.size(weight=weight)
            if c < best_cost - 1e-12:
                best, best_cost = mst, c
    return prune_tree(best, terminals)
