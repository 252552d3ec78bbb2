"""Link-state helpers shared by the root and the domain controllers (no controller imports here)."""

from __future__ import annotations

import networkx as nx

from ..simulator import WEIGHTS, LinkStateSnapshot, link_weights
from ..topology import MultiDomainTopology
from .messages import Link


def domain_label(d: int) -> str:
    """Paper numbering: domains are D1, D2, ... ."""
    return f"D{d + 1}"


def check_weight(weight: str) -> str:
    """Return ``weight`` if it names one of the simulator's link weightings, else raise ``ValueError``."""
    if weight not in WEIGHTS:
        raise ValueError(f"unknown weight {weight!r}: expected one of {', '.join(WEIGHTS)}")
    return weight


def link_tuples(topology: MultiDomainTopology, snap: LinkStateSnapshot, indices) -> tuple[Link, ...]:
    """The wire form ``(u, v, free_bw_mbps, delay_ms, loss, up)`` of the links with the given indices."""
    edges = topology.edges
    return tuple((edges[i][0], edges[i][1], float(snap.free_bw_mbps[i]), float(snap.delay_ms[i]),
                  float(snap.loss[i]), bool(snap.up[i])) for i in indices)


def graph_from_links(links) -> nx.Graph:
    """The weighted graph of reported up links (same attributes as ``LinkStateSnapshot.to_graph``).

    The weightings come from :func:`~sdwn_multicast.simulator.link_weights`, their single definition.
    """
    g = nx.Graph()
    up = [lk for lk in links if lk[5]]
    if not up:
        return g
    free, delay, loss = ([lk[k] for lk in up] for k in (2, 3, 4))
    weights = link_weights(free, delay, loss, [True] * len(up))
    for i, (u, v, f, d, lo, _up) in enumerate(up):
        attrs = {"free_bw_mbps": float(f), "delay_ms": float(d), "loss": float(lo)}
        attrs.update({w: float(a[i]) for w, a in weights.items()})
        g.add_edge(u, v, **attrs)
    return g
