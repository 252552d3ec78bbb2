"""Steiner-tree heuristics from networkx: KMB (Kou, Markowsky, Berman 1981) and Mehlhorn (1988)."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
from networkx.algorithms.approximation import steiner_tree

from ..topology import Node
from ..trees import check_request, prune_tree


def _steiner(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str, method: str) -> nx.Graph:
    members = check_request(graph, source, members)
    terminals = [source, *members]
    if len(terminals) == 1:
        t = nx.Graph()
        t.add_node(source)
        return t
    comp = graph.subgraph(nx.node_connected_component(graph, source))
    t = nx.Graph(steiner_tree(comp, terminals, weight=weight, method=method).edges)
    return prune_tree(t, terminals)


def kmb_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms") -> nx.Graph:
    """KMB Steiner tree (``steiner_tree(method="kou")``): MST of the terminals' metric closure, expanded.

    Guarantee: cost <= 2 (1 - 1/l) x optimum, l = number of leaves of the optimal tree.
    """
    return _steiner(graph, source, members, weight, "kou")


def mehlhorn_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms"
                  ) -> nx.Graph:
    """Mehlhorn's faster KMB variant (``steiner_tree(method="mehlhorn")``): same 2 (1 - 1/l) bound."""
    return _steiner(graph, source, members, weight, "mehlhorn")
