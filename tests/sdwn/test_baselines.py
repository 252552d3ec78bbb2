"""Every baseline returns a valid tree; the ILP is exact; heuristics respect their guarantees."""

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdwn_multicast.baselines import (
    METHODS,
    UnknownMethodError,
    brute_force_steiner_tree,
    exact_steiner_tree,
    get_method,
    kmb_tree,
    takahashi_matsuyama_tree,
)
from sdwn_multicast.simulator import WEIGHTS
from sdwn_multicast.trees import (
    DisconnectedRequestError,
    MulticastError,
    UnknownNodeError,
    tree_cost,
    validate_tree,
)

FAST_METHODS = sorted(m for m in METHODS if m not in ("ilp", "ga", "qlearning"))


@st.composite
def requests(draw, nodes):
    source = draw(st.sampled_from(nodes))
    members = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=10, unique=True))
    return source, [m for m in members if m != source] or [next(n for n in nodes if n != source)]


@st.composite
def weighted_graphs(draw, max_nodes=9):
    n = draw(st.integers(3, max_nodes))
    seed = draw(st.integers(0, 10_000))
    g = nx.connected_watts_strogatz_graph(n, 2 if n < 5 else 4, 0.4, seed=seed)
    ws = draw(st.lists(st.floats(0.1, 10.0), min_size=g.number_of_edges(), max_size=g.number_of_edges()))
    for (u, v), w in zip(g.edges, ws):
        g.edges[u, v]["w"] = w
    return g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_fast_baseline_returns_a_valid_tree_on_random_requests(paper_graph, data):
    source, members = data.draw(requests(sorted(paper_graph.nodes)))
    weight = data.draw(st.sampled_from(WEIGHTS))
    for name in FAST_METHODS:
        tree = METHODS[name].build(paper_graph, source, members, weight)
        validate_tree(paper_graph, tree, source, members)
        leaves = [n for n in tree if tree.degree(n) == 1]
        assert set(leaves) <= {source, *members}, f"{name} left a non-member leaf"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ga_qlearning_and_ilp_return_valid_trees_no_cheaper_than_the_ilp(paper_graph, data):
    source, members = data.draw(requests(sorted(paper_graph.nodes)))
    opt = exact_steiner_tree(paper_graph, source, members, "delay_ms")
    validate_tree(paper_graph, opt, source, members)
    best = tree_cost(paper_graph, opt, "delay_ms")
    for name in ("ga-small", "qlearning-small", "kmb", "tm", "spt"):
        tree = METHODS[name].build(paper_graph, source, members, "delay_ms")
        validate_tree(paper_graph, tree, source, members)
        assert tree_cost(paper_graph, tree, "delay_ms") >= best - 1e-6


@settings(max_examples=30, deadline=None)
@given(g=weighted_graphs(), data=st.data())
def test_ilp_equals_brute_force_on_small_graphs(g, data):
    source, members = data.draw(requests(sorted(g.nodes)))
    opt = exact_steiner_tree(g, source, members, "w")
    ref = brute_force_steiner_tree(g, source, members, "w")
    validate_tree(g, opt, source, members)
    assert tree_cost(g, opt, "w") == pytest.approx(tree_cost(g, ref, "w"), rel=1e-6, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(g=weighted_graphs(), data=st.data())
def test_kmb_and_takahashi_matsuyama_stay_within_twice_the_optimum(g, data):
    source, members = data.draw(requests(sorted(g.nodes)))
    opt = tree_cost(g, brute_force_steiner_tree(g, source, members, "w"), "w")
    t = len({source, *members})
    for algo in (kmb_tree, takahashi_matsuyama_tree):
        assert tree_cost(g, algo(g, source, members, "w"), "w") <= 2 * (1 - 1 / t) * opt + 1e-9


def test_a_single_member_tree_is_the_shortest_path():
    g = nx.cycle_graph(6)
    nx.set_edge_attributes(g, 1.0, "w")
    g.edges[0, 1]["w"] = 6.0  # going round (5 links of weight 1) is cheaper
    for name in ("kmb", "mehlhorn", "tm", "sctf", "spt", "ilp", "ga", "qlearning"):
        tree = METHODS[name].build(g, 0, [1], "w")
        assert sorted(tree.nodes) == [0, 1, 2, 3, 4, 5] and tree_cost(g, tree, "w") == 5.0


def test_members_outside_the_graph_are_rejected():
    g = nx.path_graph(4)
    nx.set_edge_attributes(g, 1.0, "w")
    with pytest.raises(UnknownNodeError, match="99"):
        kmb_tree(g, 0, [99], "w")


def test_disconnected_requests_are_rejected_by_every_method():
    g = nx.Graph([(0, 1), (2, 3)])
    nx.set_edge_attributes(g, 1.0, "w")
    for name in ("kmb", "mehlhorn", "tm", "sctf", "spt", "ilp", "ga", "qlearning"):
        with pytest.raises(DisconnectedRequestError, match="unreachable"):
            METHODS[name].build(g, 0, [3], "w")


def test_empty_member_list_is_a_bad_request():
    with pytest.raises(MulticastError):
        kmb_tree(nx.path_graph(3), 0, [], "weight")


def test_unknown_method_name_lists_the_choices():
    with pytest.raises(UnknownMethodError, match="choose from"):
        get_method("dijkstra-magic")


def test_exact_solver_prints_nothing_on_stdout(capfd):
    g = nx.cycle_graph(6)
    nx.set_edge_attributes(g, 1.0, "delay_ms")
    tree = exact_steiner_tree(g, 0, [3])
    assert tree.number_of_edges() == 3
    assert capfd.readouterr().out == ""  # no HiGHS banner (printed at C level when the solver is created)
