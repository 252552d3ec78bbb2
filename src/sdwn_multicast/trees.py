"""Multicast trees: request checks, validation, pruning, cross-domain composition and incremental repair.

A multicast tree is an undirected ``nx.Graph`` whose edges are links of the network graph; it must be
connected and acyclic and contain the source and every member. Trees are built on the weighted graph
``LinkStateSnapshot.to_graph()`` (failed links absent), with an additive weight named in
:data:`~sdwn_multicast.simulator.WEIGHTS`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx

from .topology import MultiDomainTopology, Node


class MulticastError(ValueError):
    """Base class for bad multicast requests and tree failures."""


class UnknownNodeError(MulticastError):
    """The source or a member is not a node of the graph."""


class DisconnectedRequestError(MulticastError):
    """No tree can span the request: some member is unreachable from the source."""


class InvalidTreeError(MulticastError):
    """A tree failed validation; the message says which rule it broke."""


class DecompositionError(MulticastError):
    """The inter/intra-domain decomposition cannot serve the request (e.g. a domain split by failures)."""


TreeAlgorithm = Callable[..., nx.Graph]


def check_request(graph: nx.Graph, source: Node, members: Iterable[Node]) -> tuple[Node, ...]:
    """Validate a request against ``graph``; return the members (deduplicated, source removed).

    Raises :class:`UnknownNodeError` for nodes not in the graph, :class:`MulticastError` when no member
    other than the source remains, and :class:`DisconnectedRequestError` when a member cannot be reached
    from the source.
    """
    members = tuple(dict.fromkeys(members))
    unknown = [n for n in (source, *members) if n not in graph]
    if unknown:
        raise UnknownNodeError(f"nodes not in the graph: {unknown}")
    members = tuple(m for m in members if m != source)
    if not members:
        raise MulticastError("a multicast request needs at least one member other than the source")
    reach = nx.node_connected_component(graph, source)
    cut = [m for m in members if m not in reach]
    if cut:
        raise DisconnectedRequestError(f"members {cut} are unreachable from source {source!r}")
    return members


def tree_cost(graph: nx.Graph, tree: nx.Graph, weight: str) -> float:
    return float(sum(graph.edges[u, v][weight] for u, v in tree.edges))


def validate_tree(graph: nx.Graph, tree: nx.Graph, source: Node, members: Iterable[Node]) -> None:
    """Raise :class:`InvalidTreeError` unless ``tree`` is a tree of ``graph`` links spanning source + members."""
    members = tuple(members)
    if tree.number_of_nodes() == 0:
        raise InvalidTreeError("tree is empty")
    strangers = [n for n in tree if n not in graph]
    if strangers:
        raise InvalidTreeError(f"tree has nodes that are not in the graph: {strangers[:5]}")
    missing = [n for n in (source, *members) if n not in tree]
    if missing:
        raise InvalidTreeError(f"tree does not span {missing}")
    foreign = [(u, v) for u, v in tree.edges if not graph.has_edge(u, v)]
    if foreign:
        raise InvalidTreeError(f"tree uses links that do not exist (or are down): {foreign[:5]}")
    if not nx.is_connected(tree):
        raise InvalidTreeError("tree is not connected")
    if tree.number_of_edges() != tree.number_of_nodes() - 1:
        raise InvalidTreeError(
            f"tree has a cycle ({tree.number_of_edges()} links on {tree.number_of_nodes()} nodes)")


def prune_tree(tree: nx.Graph, terminals: Iterable[Node]) -> nx.Graph:
    """Repeatedly remove non-terminal leaves (a copy is returned)."""
    keep = set(terminals)
    t = nx.Graph(tree)
    leaves = [n for n in t if t.degree(n) <= 1 and n not in keep]
    while leaves:
        n = leaves.pop()
        if n not in t:
            continue
        nbrs = list(t[n])
        t.remove_node(n)
        leaves += [w for w in nbrs if t.degree(w) <= 1 and w not in keep]
    return t


def tree_from_edges(graph: nx.Graph, edges: Iterable[tuple[Node, Node]], terminals: Iterable[Node],
                    weight: str) -> nx.Graph:
    """Minimum spanning tree of the subgraph formed by ``edges``, pruned to ``terminals``.

    Turns a union of paths (which may contain cycles) into a tree; used by the genetic algorithm and by
    repair.
    """
    sub = nx.Graph()
    terminals = list(terminals)
    sub.add_nodes_from(terminals)
    for u, v in edges:
        sub.add_edge(u, v, **{weight: graph.edges[u, v][weight]})
    mst = nx.minimum_spanning_tree(sub, weight=weight)
    return prune_tree(mst, terminals)


def path_to_tree(graph: nx.Graph, tree: nx.Graph, node: Node, weight: str) -> list[Node]:
    """Cheapest path from the tree to ``node``, touching the tree only at its first node."""
    if node in tree:
        return [node]
    dist, paths = nx.multi_source_dijkstra(graph, set(tree.nodes), target=node, weight=weight)
    return paths


# ---------------------------------------------------------------------------------------------------------
# Cross-domain composition: inter-domain tree over domains + one intra-domain tree per domain.
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CrossDomainPlan:
    """The inter-domain part of a cross-domain tree (what the root controller decides).

    ``domain_parent`` maps each non-root domain of the tree to its parent domain; ``crossings`` maps each
    non-root domain to the inter-domain link (parent-side boundary node, child-side boundary node) used
    to enter it; ``entry`` gives each domain's entry node (the source for the source's domain) and
    ``terminals`` the nodes each intra-domain tree must span (entry, local members, exit boundary nodes).
    """

    source_domain: int
    domain_parent: dict
    crossings: dict
    entry: dict
    terminals: dict


def _candidate_domain_trees(qg: nx.Graph, root: int, need: set, limit: int) -> list[nx.Graph]:
    """Trees of the quotient graph that contain the needed domains, cheapest (quotient weight) first.

    The KMB tree of the quotient graph is always first; with few domains, every spanning tree of every
    connected domain subset containing ``need`` follows (at most ``limit`` trees in all).
    """
    if len(need) == 1:
        t = nx.Graph()
        t.add_node(root)
        return [t]
    kmb = nx.algorithms.approximation.steiner_tree(qg, sorted(need), weight="weight", method="kou")
    out = [nx.Graph(kmb)]
    optional = [d for d in qg.nodes if d not in need]
    if len(qg) > 6:
        return out
    seen = {frozenset(map(frozenset, kmb.edges))}
    for r in range(len(optional) + 1):
        for extra in itertools.combinations(optional, r):
            sub = qg.subgraph([*need, *extra])
            if not nx.is_connected(sub):
                continue
            for t in nx.SpanningTreeIterator(sub, weight="weight"):
                key = frozenset(map(frozenset, t.edges))
                if key not in seen:
                    seen.add(key)
                    out.append(nx.Graph(t))
                if len(out) >= limit:
                    return out
    return out


def plan_inter_domain(topology: MultiDomainTopology, graph: nx.Graph, source: Node, members: Iterable[Node],
                      weight: str, search_budget: int = 256) -> CrossDomainPlan:
    """Choose the domain tree and the boundary crossings (the root controller's / inter-domain agent's job).

    Candidates are trees over the quotient graph (one node per domain, edge weight = cheapest usable
    inter-domain link) containing the source's and members' domains — the quotient KMB tree first, then,
    with at most 6 domains, the spanning trees of every domain subset — times one usable inter-domain link
    per domain-tree edge. Up to ``search_budget`` (domain tree, crossings) combinations are scored by the
    composed cost they imply: crossing weights plus the KMB cost of every domain's terminal set (entry,
    local members, exits); the cheapest is kept. If even the quotient KMB tree has more crossing
    combinations than the budget, a greedy walk from the source's domain enters each child over the link
    minimising d_parent(entry, b_parent) + w(b_parent, b_child) + mean d_child(b_child, local members).

    Each domain is entered exactly once — the assumption under which "inter tree + intra trees" is a
    valid tree. It is not optimal in general; the evaluation reports the gap to the flat optimum.
    """
    members = check_request(graph, source, members)
    dom = topology.domain_of
    need = {dom[source]} | {dom[m] for m in members}
    qg = nx.Graph()
    qg.add_nodes_from(range(topology.n_domains))
    links_between: dict[frozenset, list] = {}
    for u, v in topology.inter_domain_links:
        if not graph.has_edge(u, v):
            continue
        a, b = dom[u], dom[v]
        links_between.setdefault(frozenset((a, b)), []).append((u, v))
        w = graph.edges[u, v][weight]
        if not qg.has_edge(a, b) or qg.edges[a, b]["weight"] > w:
            qg.add_edge(a, b, weight=w)
    root = dom[source]
    reach = nx.node_connected_component(qg, root)
    if not need <= reach:
        raise DecompositionError(f"domains {sorted(need - reach)} unreachable over inter-domain links")
    qg = qg.subgraph(reach)
    intra = {d: graph.subgraph(topology.domain_nodes(d)) for d in reach}
    local = {d: [m for m in members if dom[m] == d] for d in reach}

    def crossings_of(dtree):
        edges = list(nx.bfs_edges(dtree, root))
        cands = [[(u, v) if dom[u] == pd else (v, u) for u, v in links_between[frozenset((pd, cd))]]
                 for pd, cd in edges]
        return edges, cands

    def layout(edges, choice) -> tuple[dict, dict]:
        entry = {root: source}
        exits: dict[int, list] = {d: [] for d in {root, *(cd for _, cd in edges)}}
        for (pd, cd), (bp, bc) in zip(edges, choice):
            entry[cd] = bc
            exits[pd].append(bp)
        terms = {d: tuple(dict.fromkeys([entry[d], *local[d], *sorted(exits[d], key=str)])) for d in exits}
        return entry, terms

    from .baselines.steiner import kmb_tree

    cache: dict = {}

    def intra_cost(d, terms) -> float:
        key = (d, frozenset(terms))
        if key not in cache:
            try:
                cache[key] = 0.0 if len(terms) == 1 else tree_cost(
                    intra[d], kmb_tree(intra[d], terms[0], terms[1:], weight), weight)
            except MulticastError:
                cache[key] = math.inf
        return cache[key]

    best, best_cost, budget = None, math.inf, search_budget
    for dtree in _candidate_domain_trees(qg, root, need, limit=64):
        edges, cands = crossings_of(dtree)
        n_combos = math.prod(len(c) for c in cands)
        if n_combos > budget:
            continue
        budget -= n_combos
        for choice in itertools.product(*cands):
            _, terms = layout(edges, choice)
            c = sum(graph.edges[e][weight] for e in choice)
            for d, t in terms.items():
                c += intra_cost(d, t)
                if c >= best_cost:
                    break
            if c < best_cost:
                best, best_cost = (edges, list(choice)), c
    if best is None:
        dtree = _candidate_domain_trees(qg, root, need, limit=1)[0]
        edges, cands = crossings_of(dtree)
        chosen, entry = [], {root: source}
        for (pd, cd), cand in zip(edges, cands):
            d_par = nx.single_source_dijkstra_path_length(intra[pd], entry[pd], weight=weight)
            scored = []
            for bp, bc in cand:
                d_child = nx.single_source_dijkstra_path_length(intra[cd], bc, weight=weight)
                if bp not in d_par or any(m not in d_child for m in local[cd]):
                    continue
                tail = sum(d_child[m] for m in local[cd]) / len(local[cd]) if local[cd] else 0.0
                scored.append((d_par[bp] + graph.edges[bp, bc][weight] + tail, (bp, bc)))
            if not scored:
                raise DecompositionError(f"no usable crossing from domain {pd} into domain {cd} "
                                         "(a domain may be split by link failures)")
            pick = min(scored, key=lambda x: x[0])[1]
            chosen.append(pick)
            entry[cd] = pick[1]
        best = (edges, chosen)
    edges, chosen = best
    entry, terminals = layout(edges, chosen)
    return CrossDomainPlan(source_domain=root, domain_parent={cd: pd for pd, cd in edges},
                           crossings={cd: e for (_, cd), e in zip(edges, chosen)}, entry=entry,
                           terminals=terminals)


def compose_cross_domain_tree(topology: MultiDomainTopology, graph: nx.Graph, source: Node,
                              members: Iterable[Node], weight: str, intra_algorithm: TreeAlgorithm
                              ) -> nx.Graph:
    """Inter-domain plan (:func:`plan_inter_domain`) + ``intra_algorithm`` inside every domain, composed.

    Intra-domain trees live on disjoint node sets and the crossings join them along a tree of domains,
    so the union is a tree whenever each piece is. ``intra_algorithm(graph, source, members, weight)`` is
    any baseline (KMB, exact ILP, ...).
    """
    members = check_request(graph, source, members)
    plan = plan_inter_domain(topology, graph, source, members, weight)
    tree = nx.Graph()
    for d, terms in plan.terminals.items():
        sub = graph.subgraph(topology.domain_nodes(d))
        if len(terms) == 1:
            tree.add_node(terms[0])
            continue
        try:
            part = intra_algorithm(sub, terms[0], list(terms[1:]), weight)
        except DisconnectedRequestError as exc:
            raise DecompositionError(f"domain {d} cannot connect {terms}: {exc}") from exc
        tree.add_edges_from(part.edges)
    tree.add_edges_from(plan.crossings.values())
    tree.add_node(source)
    return prune_tree(tree, (source, *members))


# ---------------------------------------------------------------------------------------------------------
# Incremental repair.
# ---------------------------------------------------------------------------------------------------------

def graft_member(graph: nx.Graph, tree: nx.Graph, member: Node, weight: str) -> nx.Graph:
    """Join: attach ``member`` by the cheapest path to the existing tree (Takahashi-Matsuyama step)."""
    if member not in graph:
        raise UnknownNodeError(f"member {member!r} not in the graph")
    out = nx.Graph(tree)
    if member in out:
        return out
    try:
        path = path_to_tree(graph, out, member, weight)
    except nx.NetworkXNoPath as exc:
        raise DisconnectedRequestError(f"member {member!r} is unreachable from the tree") from exc
    nx.add_path(out, path)
    return out


def prune_member(tree: nx.Graph, source: Node, remaining_members: Iterable[Node], member: Node) -> nx.Graph:
    """Leave: drop ``member`` as a terminal and prune branches that served only it."""
    remaining = [m for m in remaining_members if m != member]
    out = prune_tree(tree, (source, *remaining))
    if member in out and member not in remaining and out.degree(member) == 0 and member != source:
        out.remove_node(member)
    return out


def repair_link_failure(graph_after: nx.Graph, tree: nx.Graph, source: Node, members: Iterable[Node],
                        weight: str) -> nx.Graph:
    """Failure: keep the part of the tree still attached to the source, re-graft every cut-off member.

    Tree links that no longer exist in ``graph_after`` are removed; the source's component is kept
    (pruned), and members outside it are grafted back one by one, nearest first.
    """
    members = check_request(graph_after, source, members)
    t = nx.Graph(tree)
    t.remove_edges_from([(u, v) for u, v in tree.edges if not graph_after.has_edge(u, v)])
    keep = nx.node_connected_component(t, source) if source in t else {source}
    out = prune_tree(t.subgraph(keep), (source, *[m for m in members if m in keep]))
    out.add_node(source)
    pending = [m for m in members if m not in out]
    while pending:
        dist = nx.multi_source_dijkstra_path_length(graph_after, set(out.nodes), weight=weight)
        nxt = min(pending, key=lambda m: dist.get(m, float("inf")))
        out = graft_member(graph_after, out, nxt, weight)
        pending.remove(nxt)
    return out
