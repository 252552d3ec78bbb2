"""Tabular Q-learning multicast tree (the group's pre-DRL baseline)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import networkx as nx
import numpy as np

from ..topology import Node
from ..trees import check_request, path_to_tree, prune_tree


def q_learning_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms",
                    episodes_per_member: int = 40, alpha: float = 0.5, gamma: float = 1.0, epsilon: float = 0.2,
                    dead_end_penalty: float = 20.0, seed: int = 0) -> nx.Graph:
    """Members (nearest to the source first) each learn a walk to the current tree with tabular Q-learning.

    State = current node, action = neighbour not yet visited in the episode (loops are impossible),
    reward = -(link weight / mean link weight), episode ends on reaching any tree node (reward 0 then)
    or in a dead end (``-dead_end_penalty``). One Q-table is shared by all members, so later members
    reuse what earlier ones learnt. After training, the greedy walk is grafted; if the greedy walk fails
    to reach the tree (budget too small), the cheapest path is used instead and counted in
    ``tree.graph["fallbacks"]``. Seeded; no optimality guarantee.
    """
    members = check_request(graph, source, members)
    rng = np.random.default_rng(seed)
    comp = graph.subgraph(nx.node_connected_component(graph, source))
    scale = float(np.mean([d[weight] for _, _, d in comp.edges(data=True)])) or 1.0
    max_steps = comp.number_of_nodes()
    q: dict[tuple[Node, Node], float] = defaultdict(float)
    tree = nx.Graph()
    tree.add_node(source)
    fallbacks = 0
    dist0 = nx.single_source_dijkstra_path_length(comp, source, weight=weight)
    for m in sorted(members, key=lambda n: (dist0[n], str(n))):
        if m in tree:
            continue
        targets = set(tree.nodes)
        for _ in range(episodes_per_member):
            node, visited = m, {m}
            for _ in range(max_steps):
                acts = [w for w in comp[node] if w not in visited]
                if not acts:
                    break
                if rng.random() < epsilon:
                    a = acts[int(rng.integers(len(acts)))]
                else:
                    a = max(acts, key=lambda w: q[(node, w)])
                r = -comp.edges[node, a][weight] / scale
                if a in targets:
                    future = 0.0
                else:
                    nxt = [w for w in comp[a] if w not in visited and w != a]
                    future = max((q[(a, w)] for w in nxt), default=-dead_end_penalty)
                q[(node, a)] += alpha * (r + gamma * future - q[(node, a)])
                node = a
                visited.add(a)
                if a in targets:
                    break
        walk, node, visited = [m], m, {m}
        while node not in targets and len(walk) <= max_steps:
            acts = [w for w in comp[node] if w not in visited]
            if not acts:
                break
            node = max(acts, key=lambda w: q[(node, w)])
            visited.add(node)
            walk.append(node)
        if node in targets:
            # the walk meets the tree first at its last node; nodes before it are new
            nx.add_path(tree, walk)
        else:
            fallbacks += 1
            nx.add_path(tree, path_to_tree(comp, tree, m, weight))
    tree = prune_tree(tree, (source, *members))
    tree.graph["fallbacks"] = fallbacks
    return tree
