"""Takahashi-Matsuyama (1980) and SCTF: grow the tree by cheapest paths from the tree to a member."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from ..topology import Node
from ..trees import check_request, graft_member, prune_tree


def takahashi_matsuyama_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms"
                             ) -> nx.Graph:
    """Takahashi-Matsuyama: repeatedly add the member nearest to the current tree by its cheapest path.

    Guarantee: cost <= 2 (1 - 1/|T|) x optimum (Takahashi & Matsuyama 1980).
    """
    members = check_request(graph, source, members)
    pending = list(members)
    tree = nx.Graph()
    tree.add_node(source)
    while pending:
        dist = nx.multi_source_dijkstra_path_length(graph, set(tree.nodes), weight=weight)
        nxt = min(pending, key=lambda m: (dist[m], str(m)))
        tree = graft_member(graph, tree, nxt, weight)
        pending.remove(nxt)
    return prune_tree(tree, (source, *members))


def sctf_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms") -> nx.Graph:
    """SCTF (the group's "shortest-cost tree first" baseline): members in join order, each attached by its
    cheapest path to the tree built so far, so links already in the tree are reused at no cost.
    """
    members = check_request(graph, source, members)
    tree = nx.Graph()
    tree.add_node(source)
    for m in members:
        tree = graft_member(graph, tree, m, weight)
    return prune_tree(tree, (source, *members))
