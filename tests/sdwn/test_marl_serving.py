"""The trained agents inside the controllers: the root agent plans crossings, each domain agent grafts
its segment, and the composed tree is valid — in-process and through real controller processes."""

import time

import networkx as nx
import pytest

from sdwn_multicast.control.links import link_tuples
from sdwn_multicast.evaluation import make_requests
from sdwn_multicast.marl.serving import DomainAgent, RootAgent, snapshot_from_links
from sdwn_multicast.topology import paper_topology
from sdwn_multicast.trees import prune_tree, validate_tree


def test_snapshot_from_reported_links_reproduces_the_link_state_agents_read():
    topo = paper_topology()
    (_, snap), = make_requests(topo, 1, seed=2)
    rebuilt = snapshot_from_links(topo, link_tuples(topo, snap, range(len(topo.edges))))
    assert (rebuilt.up == snap.up).all()
    assert (rebuilt.free_bw_mbps == snap.free_bw_mbps).all() and (rebuilt.delay_ms == snap.delay_ms).all()


def test_root_plan_and_domain_segments_compose_into_a_valid_tree(tmp_path):
    """The "each domain entered once" contract (CrossDomainPlan, one segment per domain): the committed
    bandwidth weights served with re-entry switched off."""
    import json
    import shutil

    from sdwn_multicast.evaluation import committed_checkpoint_for

    topo = paper_topology()
    ckpt = tmp_path / "once"
    shutil.copytree(committed_checkpoint_for(topo), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "reentry": False}))
    root = RootAgent(topo, ckpt)
    domains = [DomainAgent(topo, d, ckpt) for d in range(topo.n_domains)]
    for req, snap in make_requests(topo, 6, seed=9):
        plan = root.plan(snap, req.source, req.members)
        tree = nx.Graph()
        tree.add_node(req.source)
        for d, terms in plan.terminals.items():
            assert terms[0] == plan.entry[d]
            tree.add_edges_from(domains[d].segment(snap, terms).edges)
        tree.add_edges_from(plan.crossings.values())
        tree = prune_tree(tree, (req.source, *req.members))
        validate_tree(snap.to_graph(), tree, req.source, req.members)


def _marl_tree(plane, group: int, members, source: int) -> nx.Graph:
    """Join ``members`` to ``group``, wait for the root to see them, and have the agents build its tree."""
    client = plane.client(f"t-marl-{group}")
    for m in members:
        client.join(group=group, member=m, ttl_s=60)
    deadline = time.monotonic() + 10
    while set(client.group_view(group).members) != set(members) and time.monotonic() < deadline:
        time.sleep(0.05)  # joins reach the root with the next domain report
    commit = client.request_tree(group=group, source=source, timeout_s=15, policy="marl")
    return nx.Graph(list(commit.edges))


@pytest.mark.timeout(120)
def test_controller_processes_serve_trees_decided_by_their_agents():
    from sdwn_multicast.control import ControlPlane

    with ControlPlane("paper30", sync_period_s=0.3, marl=True) as plane:
        members = (5, 14, 19, 25, 29)
        tree = _marl_tree(plane, 3, members, source=2)
        validate_tree(plane.topology.graph, tree, 2, members)
        dom = plane.topology.domain_of
        assert sum(dom[u] != dom[v] for u, v in tree.edges) >= 2  # members in all three domains


def test_reentry_agents_split_across_controllers_build_the_evaluated_tree():
    """Re-entry checkpoint: root plan + one components request per domain, composed by the root, give
    exactly the tree the single-process evaluation builds, including plans that enter a domain twice."""
    from sdwn_multicast.evaluation import MarlRouter, committed_checkpoint_for
    from sdwn_multicast.marl.reentry import reduce_union
    from sdwn_multicast.topology import load_topology

    topo = load_topology("abilene", n_domains=3, seed=0)  # held out: domains of 3-4 APs, re-entry pays
    ckpt = committed_checkpoint_for(topo, "cost")
    root = RootAgent(topo, ckpt)
    domains = [DomainAgent(topo, d, ckpt) for d in range(topo.n_domains)]
    router = MarlRouter(ckpt, objective="cost")
    reentered = 0
    for req, snap in make_requests(topo, 8, seed=1000):
        plan = root.plan(snap, req.source, req.members)
        entered = [topo.domain_of[v] for _, v in plan.crossings] + [topo.domain_of[req.source]]
        reentered += len(entered) > len(set(entered))
        union = nx.Graph(list(plan.crossings))
        for d, (entries, terms) in plan.segments.items():
            if terms:
                union.add_edges_from(domains[d].segment(snap, terms, entries).edges)
        graph = snap.to_graph()
        assert plan.objective == "cost"
        tree = reduce_union(graph, union, (req.source, *req.members), plan.objective)
        validate_tree(graph, tree, req.source, req.members)
        expected = router.build(snap, req.source, req.members)
        assert sorted(map(sorted, tree.edges)) == sorted(map(sorted, expected.edges))
    assert reentered > 0


@pytest.mark.timeout(120)
def test_controller_processes_serve_the_reentry_cost_agents():
    from sdwn_multicast.control import ControlPlane
    from sdwn_multicast.evaluation import committed_checkpoint_for

    ckpt = committed_checkpoint_for(paper_topology(), "cost")
    with ControlPlane("paper30", sync_period_s=0.3, marl=True, marl_checkpoint=str(ckpt)) as plane:
        members = (5, 14, 19, 25, 29)
        validate_tree(plane.topology.graph, _marl_tree(plane, 4, members, source=2), 2, members)
