"""OpenFlow 1.3 multicast rules derived from a tree deliver to exactly the members, once each."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdwn_multicast.baselines import kmb_tree
from sdwn_multicast.control.openflow import OFPGT_ALL, OFPP_LOCAL, forward, multicast_address, tree_rules
from sdwn_multicast.topology import paper_topology

PAPER = paper_topology()
NODES = sorted(PAPER.graph.nodes)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(NODES), members=st.lists(st.sampled_from(NODES), min_size=1, max_size=12, unique=True))
def test_per_domain_rules_together_deliver_to_every_member_exactly_once(paper_graph, source, members):
    members = [m for m in members if m != source] or [30 if source != 30 else 1]
    tree = kmb_tree(paper_graph, source, members, "delay_ms")
    rules = [tree_rules(PAPER, tree.edges, source, members, group=5, domain=d) for d in range(3)]
    delivered, receptions = forward(PAPER, rules, source, group=5)
    assert delivered == set(members)
    assert receptions == tree.number_of_nodes(), "each AP of the tree receives the packet once"
    for r in rules:
        assert all(g.group_type == OFPGT_ALL and g.out_ports for g in r.group_mods)
        assert all(PAPER.domain_of[g.datapath_id] == PAPER.domain_of[r.group_mods[0].datapath_id]
                   for g in r.group_mods)


def test_source_rule_matches_local_traffic_and_leaves_deliver_locally():
    rules = tree_rules(PAPER, [(1, 5), (5, 7)], 1, [5, 7], group=258)
    by_dp = {f.datapath_id: f for f in rules.flow_mods}
    assert by_dp[1].in_port == OFPP_LOCAL and by_dp[1].ipv4_dst == "239.1.1.2"
    groups = {g.datapath_id: g.out_ports for g in rules.group_mods}
    assert OFPP_LOCAL in groups[5] and groups[7] == (OFPP_LOCAL,)


def test_group_ids_outside_the_address_plan_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        multicast_address(70000)
