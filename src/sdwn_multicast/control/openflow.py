"""OpenFlow 1.3 multicast rules for a committed tree: one group of type ALL plus one flow entry per AP.

The dataclasses mirror the fields of OpenFlow 1.3 ``OFPT_GROUP_MOD`` (``OFPGT_ALL``: every bucket gets a
copy) and ``OFPT_FLOW_MOD`` (match in_port + IPv4 multicast destination, instruction: apply group), so a
southbound driver (e.g. os-ken's ``OFPGroupMod`` / ``OFPFlowMod``) can emit them one-to-one. Port numbers:
port p >= 1 of AP u faces its p-th neighbour in sorted order; ``OFPP_LOCAL`` is the AP's own stations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from ..topology import MultiDomainTopology, Node

OFPP_LOCAL = 0xFFFFFFFE
OFPGT_ALL = 0
ETH_TYPE_IPV4 = 0x0800


@dataclass(frozen=True)
class GroupMod:
    datapath_id: int
    group_id: int
    out_ports: tuple[int, ...]
    group_type: int = OFPGT_ALL


@dataclass(frozen=True)
class FlowMod:
    datapath_id: int
    in_port: int
    ipv4_dst: str
    group_id: int
    priority: int = 100
    eth_type: int = ETH_TYPE_IPV4


@dataclass(frozen=True)
class MulticastRules:
    group: int
    group_mods: tuple[GroupMod, ...]
    flow_mods: tuple[FlowMod, ...]


def multicast_address(group: int) -> str:
    """Administratively scoped IPv4 group address 239.1.x.y for group id x*256 + y."""
    if not 0 <= group < 65536:
        raise ValueError(f"group id {group} outside 0..65535")
    return f"239.1.{group >> 8}.{group & 255}"


def port_number(topology: MultiDomainTopology, u: Node, v: Node) -> int:
    """Port of AP ``u`` facing neighbour ``v``."""
    nbrs = sorted(topology.graph[u])
    return nbrs.index(v) + 1


def tree_rules(topology: MultiDomainTopology, edges: Iterable[tuple[Node, Node]], source: Node,
               members: Iterable[Node], group: int, domain: int | None = None) -> MulticastRules:
    """Rules that forward ``group`` traffic from ``source`` down the tree; only ``domain``'s APs if given."""
    tree = nx.Graph(list(edges))
    tree.add_node(source)
    members = set(members)
    parent = {source: None}
    parent.update({v: u for u, v in nx.bfs_edges(tree, source)})
    addr = multicast_address(group)
    gmods, fmods = [], []
    for u in sorted(tree.nodes):
        if domain is not None and topology.domain_of[u] != domain:
            continue
        children = [v for v in tree[u] if v != parent[u]]
        ports = [port_number(topology, u, v) for v in sorted(children)]
        if u in members and u != source:
            ports.append(OFPP_LOCAL)
        if not ports:
            continue
        in_port = OFPP_LOCAL if parent[u] is None else port_number(topology, u, parent[u])
        gmods.append(GroupMod(u, group, tuple(ports)))
        fmods.append(FlowMod(u, in_port, addr, group))
    return MulticastRules(group, tuple(gmods), tuple(fmods))


def forward(topology: MultiDomainTopology, rules: Iterable[MulticastRules], source: Node, group: int
            ) -> tuple[set[Node], int]:
    """Follow the installed rules for one packet sent by a station at ``source``.

    Returns the APs that deliver it to their stations and the number of AP receptions (equal to the
    number of APs reached exactly once when the rules form a tree).
    """
    groups, flows = {}, {}
    addr = multicast_address(group)
    for r in rules:
        for g in r.group_mods:
            groups[(g.datapath_id, g.group_id)] = g
        for f in r.flow_mods:
            flows[(f.datapath_id, f.in_port, f.ipv4_dst)] = f
    delivered, receptions = set(), 0
    frontier = [(source, OFPP_LOCAL)]
    while frontier:
        u, in_port = frontier.pop()
        receptions += 1
        if receptions > 10 * topology.graph.number_of_nodes():
            raise RuntimeError("forwarding loop in installed rules")
        f = flows.get((u, in_port, addr))
        if f is None:
            continue
        for port in groups[(u, f.group_id)].out_ports:
            if port == OFPP_LOCAL:
                delivered.add(u)
                continue
            v = sorted(topology.graph[u])[port - 1]
            frontier.append((v, port_number(topology, v, u)))
    return delivered, receptions
