"""Genetic algorithm over per-member candidate paths (the GA baseline of the paper's group)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import networkx as nx

from ..topology import Node
from ..trees import check_request, tree_cost, tree_from_edges


def genetic_tree(graph: nx.Graph, source: Node, members: Iterable[Node], weight: str = "delay_ms",
                 k_paths: int = 4, population: int = 16, generations: int = 25, mutation_rate: float | None = None,
                 seed: int = 0) -> nx.Graph:
    """GA multicast tree: a chromosome picks one of the ``k_paths`` shortest simple paths (Yen) per member.

    A chromosome decodes to the union of its paths, turned into a tree by an MST of that union and
    pruning; fitness is the tree weight. Tournament selection (size 3), uniform crossover, per-gene
    mutation (default 1 / members), two elites; seeded, small budget (``population x generations``
    decodes). No approximation guarantee; never worse than the all-shortest-paths chromosome, which is
    always in the initial population.
    """
    members = check_request(graph, source, members)
    rng = random.Random(seed)
    comp = graph.subgraph(nx.node_connected_component(graph, source))
    cands = [list(itertools.islice(nx.shortest_simple_paths(comp, source, m, weight=weight), k_paths))
             for m in members]
    rate = mutation_rate if mutation_rate is not None else 1.0 / max(len(members), 1)
    cache: dict[tuple[int, ...], tuple[float, nx.Graph]] = {}

    def decode(ch: tuple[int, ...]) -> tuple[float, nx.Graph]:
        if ch not in cache:
            edges = {tuple(sorted((a, b), key=str)) for gi, pi in enumerate(ch)
                     for a, b in zip(cands[gi][pi], cands[gi][pi][1:])}
            t = tree_from_edges(comp, edges, (source, *members), weight)
            cache[ch] = (tree_cost(comp, t, weight), t)
        return cache[ch]

    pop = [tuple(0 for _ in members)]
    pop += [tuple(rng.randrange(len(c)) for c in cands) for _ in range(population - 1)]
    for _ in range(generations):
        ranked = sorted(pop, key=lambda c: decode(c)[0])
        nxt = ranked[:2]
        while len(nxt) < population:
            pa = min(rng.sample(pop, min(3, len(pop))), key=lambda c: decode(c)[0])
            pb = min(rng.sample(pop, min(3, len(pop))), key=lambda c: decode(c)[0])
            child = [a if rng.random() < 0.5 else b for a, b in zip(pa, pb)]
            child = [rng.randrange(len(cands[i])) if rng.random() < rate else g for i, g in enumerate(child)]
            nxt.append(tuple(child))
        pop = nxt
    return decode(min(pop, key=lambda c: decode(c)[0]))[1]
