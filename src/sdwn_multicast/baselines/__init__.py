"""Baseline multicast-tree algorithms, each ``f(graph, source, members, weight) -> nx.Graph``.

:data:`METHODS` names them for the evaluation harness and the CLI. A method whose name carries a
weighting suffix (``kmb-bw``, ``kmb-loss``, ``kmb-hops``) always builds with that weighting, whatever
cost weight the evaluation uses; this is how the paper's group ran KMB with 1/bandwidth, loss and hops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import networkx as nx

from .genetic import genetic_tree
from .ilp import ProblemTooLargeError, SolverError, brute_force_steiner_tree, exact_steiner_tree
from .qlearning import q_learning_tree
from .spt import shortest_path_tree
from .steiner import kmb_tree, mehlhorn_tree
from .takahashi_matsuyama import sctf_tree, takahashi_matsuyama_tree

__all__ = [
    "METHODS", "Method", "ProblemTooLargeError", "SolverError", "UnknownMethodError", "brute_force_steiner_tree",
    "exact_steiner_tree", "genetic_tree", "get_method", "kmb_tree", "mehlhorn_tree", "q_learning_tree",
    "sctf_tree", "shortest_path_tree", "takahashi_matsuyama_tree",
]


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Method:
    """A named tree algorithm; ``weight`` fixes its link weighting (None: use the evaluation's cost weight)."""

    name: str
    algorithm: Callable[..., nx.Graph]
    weight: str | None = None

    def build(self, graph: nx.Graph, source, members, cost_weight: str) -> nx.Graph:
        return self.algorithm(graph, source, members, self.weight or cost_weight)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("spt", shortest_path_tree),
    Method("kmb", kmb_tree),
    Method("mehlhorn", mehlhorn_tree),
    Method("tm", takahashi_matsuyama_tree),
    Method("sctf", sctf_tree),
    Method("ga", genetic_tree),
    Method("qlearning", q_learning_tree),
    Method("ilp", exact_steiner_tree),
    Method("kmb-bw", kmb_tree, "inv_bw"),
    Method("kmb-delay", kmb_tree, "delay_ms"),
    Method("kmb-loss", kmb_tree, "loss_cost"),
    Method("kmb-hops", kmb_tree, "hops"),
    Method("ga-small", partial(genetic_tree, population=8, generations=10)),
    Method("qlearning-small", partial(q_learning_tree, episodes_per_member=15)),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None
