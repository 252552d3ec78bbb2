"""Shortest-path tree: the union of least-weight source->member paths from one Dijkstra run."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from ..topology import Node
from ..trees import check_request, prune_tree


def shortest_path_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms"
                       ) -> nx.Graph:
    """Union of Dijkstra shortest paths from ``source`` (Dijkstra 1959).

    All paths come from one predecessor map, so their union is a tree. Minimises every member's path
    weight individually, not the tree weight.
    """
    members = check_request(graph, source, members)
    _, paths = nx.single_source_dijkstra(graph, source, weight=weight)
    tree = nx.Graph()
    tree.add_node(source)
    for m in members:
        nx.add_path(tree, paths[m])
    return prune_tree(tree, (source, *members))
