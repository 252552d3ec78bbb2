"""Graph searches of the MA-CDMR environment over adjacency lists and dense matrices: all-pairs widest
and cheapest paths (per snapshot), multi-source Dijkstra and widest-shortest paths (per step)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np


def widest_bottleneck_all_pairs(bw: np.ndarray) -> np.ndarray:
    """All-pairs widest-path (max-min) bottleneck of a symmetric (n, n) bandwidth matrix, 0 = no link.

    Floyd-Warshall over the (max, min) semiring, vectorised per pivot: O(n^3) flops in n numpy steps.
    The diagonal is +inf (a node reaches itself without a bottleneck); unreachable pairs are 0.
    """
    w = bw.astype(float, copy=True)
    np.fill_diagonal(w, np.inf)
    for k in range(len(w)):
        np.maximum(w, np.minimum(w[:, k:k + 1], w[k:k + 1, :]), out=w)
    return w


def cheapest_all_pairs(cost: np.ndarray) -> np.ndarray:
    """All-pairs cheapest path cost of a symmetric (n, n) additive link-cost matrix (inf = no link).

    Floyd-Warshall over the (min, +) semiring, vectorised per pivot; the diagonal is 0.
    """
    w = cost.astype(float, copy=True)
    np.fill_diagonal(w, 0.0)
    for k in range(len(w)):
        np.minimum(w, w[:, k:k + 1] + w[k:k + 1, :], out=w)
    return w


def dijkstra(nbrs: list[list[tuple[int, float]]], sources: Sequence[int], blocked: Sequence[bool] | None = None
              ) -> tuple[list[float], list[int]]:
    """Multi-source Dijkstra over adjacency lists ``nbrs[i] = [(j, cost), ...]``: (distance per node, inf if
    unreachable; predecessor per node, -1 for sources and unreached). ``blocked`` nodes are never entered."""
    dist, pred = [math.inf] * len(nbrs), [-1] * len(nbrs)
    heap = []
    for i in sources:
        dist[i] = 0.0
        heap.append((0.0, i))
    heapq.heapify(heap)
    done = [False] * len(nbrs)
    while heap:
        c, i = heapq.heappop(heap)
        if done[i]:
            continue
        done[i] = True
        for j, w in nbrs[i]:
            if (blocked is None or not blocked[j]) and c + w < dist[j]:
                dist[j], pred[j] = c + w, i
                heapq.heappush(heap, (c + w, j))
    return dist, pred


def widest_shortest(nbrs: list[list[tuple[int, float]]], sources: Sequence[int], blocked: Sequence[bool] | None = None,
                    source_bw: Sequence[float] | None = None) -> tuple[list[float], list[float], list[int]]:
    """Multi-source widest-shortest paths over ``nbrs[i] = [(j, Mb/s), ...]``: per node the widest bottleneck
    (0 if unreachable), the fewest hops among the widest paths, and the predecessor (-1 for sources and
    unreached). Each source starts with its ``source_bw`` entry (default inf: no bottleneck yet), e.g. the
    bottleneck a tree already has there. Dijkstra ordered by (bottleneck descending, hops ascending);
    ``blocked`` nodes are never entered."""
    n = len(nbrs)
    bw, hops, pred = [0.0] * n, [math.inf] * n, [-1] * n
    heap = []
    for k, i in enumerate(sources):
        bw[i], hops[i] = (math.inf if source_bw is None else float(source_bw[k])), 0
        heap.append((-bw[i], 0, i))
    heapq.heapify(heap)
    done = [False] * n
    while heap:
        nb, h, i = heapq.heappop(heap)
        if done[i]:
            continue
        done[i] = True
        for j, w in nbrs[i]:
            if blocked is not None and blocked[j]:
                continue
            c = min(-nb, w)
            if c > bw[j] or (c == bw[j] and h + 1 < hops[j]):
                bw[j], hops[j], pred[j] = c, h + 1, i
                heapq.heappush(heap, (-c, h + 1, j))
    return bw, hops, pred
