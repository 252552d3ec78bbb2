"""Topology invariants: the paper's networks exactly as published, real and synthetic graphs partitioned."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdwn_multicast.topology import (
    PAPER_INTER_DOMAIN_LINKS,
    TopologyError,
    UnknownTopologyError,
    load_topology,
    paper_topology,
    paper_topology_9ap,
    partition_domains,
)


def _crossing(p1, p2, q1, q2) -> bool:
    def orient(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (orient(p1, p2, q1) * orient(p1, p2, q2) < 0) and (orient(q1, q2, p1) * orient(q1, q2, p2) < 0)


def test_paper_topology_has_30_aps_58_links_and_10_inter_domain_links():
    t = paper_topology()
    assert t.graph.number_of_nodes() == 30
    assert t.graph.number_of_edges() == 58
    assert set(t.inter_domain_links) == {tuple(sorted(e)) for e in PAPER_INTER_DOMAIN_LINKS}
    assert [len(t.intra_domain_links(d)) for d in range(3)] == [15, 18, 15]
    assert [t.domain_nodes(d) for d in range(3)] == [tuple(range(1, 11)), tuple(range(11, 21)),
                                                      tuple(range(21, 31))]


def test_paper_topology_boundary_sets_match_the_paper():
    t = paper_topology()
    assert t.boundary_nodes(0) == {7, 8, 10}
    assert t.boundary_nodes(1) == {11, 12, 16, 17, 18, 19, 20}
    assert t.boundary_nodes(2) == {21, 22, 23, 24}
    assert not t.domain_graph().has_edge(0, 2)  # D1 and D3 are not directly linked


def test_paper_topology_is_deterministic_connected_and_planar_per_domain():
    a, b = paper_topology(), paper_topology()
    assert a.edges == b.edges
    for d in range(3):
        links = a.intra_domain_links(d)
        assert nx.is_connected(a.graph.edge_subgraph(links))
        pos = a.positions_m
        for i, (u, v) in enumerate(links):
            for x, y in links[i + 1:]:
                if {u, v} & {x, y}:
                    continue
                assert not _crossing(pos[u], pos[v], pos[x], pos[y]), ((u, v), (x, y))
    lengths = [a.graph.edges[e]["distance_m"] for e in a.edges]
    assert min(lengths) >= 20.0 and max(lengths) <= 60.0


def test_nine_ap_case_has_three_domains_of_three_and_fifteen_links():
    t = paper_topology_9ap()
    assert t.graph.number_of_nodes() == 9 and t.graph.number_of_edges() == 15
    assert [len(t.domain_nodes(d)) for d in range(3)] == [3, 3, 3]


@pytest.mark.parametrize("name,nodes", [("geant", 37), ("abilene", 11), ("germany50", 50)])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_real_networks_split_into_k_connected_domains(name, nodes, k):
    t = load_topology(name, n_domains=k)
    assert t.graph.number_of_nodes() == nodes
    assert t.n_domains == k
    for d in range(k):
        assert nx.is_connected(t.graph.subgraph(t.domain_nodes(d)))
        assert t.boundary_nodes(d), "every domain of a connected graph has a boundary"
    assert nx.is_connected(t.domain_graph())


@pytest.mark.parametrize("name,k", [("waxman300", 8), ("sbm300", 8), ("waxman60", 3), ("sbm120", 5)])
def test_synthetic_graphs_up_to_300_nodes_and_8_domains(name, k):
    t = load_topology(name, n_domains=k, seed=3)
    assert t.n_domains == k
    assert nx.is_connected(t.graph)
    sizes = [len(t.domain_nodes(d)) for d in range(k)]
    assert sum(sizes) == t.graph.number_of_nodes() and min(sizes) >= 1
    for d in range(k):
        assert nx.is_connected(t.graph.subgraph(t.domain_nodes(d)))


def test_boundary_nodes_are_exactly_endpoints_of_inter_domain_links():
    t = load_topology("germany50", n_domains=4)
    ends = {n for e in t.inter_domain_links for n in e}
    assert set().union(*(t.boundary_nodes(d) for d in range(4))) == ends


def test_unknown_topology_name_raises_a_specific_error():
    with pytest.raises(UnknownTopologyError, match="unknown topology 'atlantis'"):
        load_topology("atlantis")


def test_partition_rejects_more_domains_than_nodes():
    with pytest.raises(TopologyError):
        partition_domains(nx.path_graph(3), 4)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), extra=st.integers(0, 40), k=st.integers(1, 8), seed=st.integers(0, 1000))
def test_partition_of_any_connected_graph_gives_k_nonempty_connected_domains(n, extra, k, seed):
    g = nx.random_labeled_tree(n, seed=seed) if hasattr(nx, "random_labeled_tree") else nx.random_tree(n, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(extra):
        u, v = rng.integers(n, size=2)
        if u != v:
            g.add_edge(int(u), int(v))
    k = min(k, n)
    part = partition_domains(g, k, seed=seed)
    assert set(part) == set(g.nodes) and set(part.values()) == set(range(k))
    for d in range(k):
        assert nx.is_connected(g.subgraph([v for v in g if part[v] == d]))


@pytest.mark.parametrize("name", ["paper30", "paper9"])
def test_fixed_paper_topologies_refuse_a_domain_count(name):
    with pytest.raises(TopologyError, match="fixed domains"):
        load_topology(name, n_domains=3)
    assert load_topology(name).n_domains == 3


@pytest.mark.parametrize("k", [0, -2])
def test_domain_counts_below_one_are_refused_not_defaulted(k):
    with pytest.raises(TopologyError, match="at least 1"):
        load_topology("abilene", n_domains=k)
