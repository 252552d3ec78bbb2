"""Bandwidth-aware pieces of the MA-CDMR agents: the all-pairs widest-path matrix, the per-node graft
summary the domain agents observe, and the widest-path expert they are behaviour-cloned from."""

import itertools

import networkx as nx
import numpy as np
import pytest

from sdwn_multicast.evaluation import build_tree, make_requests, tree_metrics
from sdwn_multicast.marl import CrossDomainMulticastEnv, domain_agent
from sdwn_multicast.marl.env import ROOT, widest_bottleneck_all_pairs, widest_expert_action
from sdwn_multicast.topology import paper_topology
from sdwn_multicast.trees import validate_tree


def _path_bottleneck(g, path):
    return min((g.edges[a, b]["bw"] for a, b in zip(path, path[1:])), default=np.inf)


@pytest.mark.parametrize("seed", range(5))
def test_all_pairs_widest_bottleneck_matches_brute_force_over_simple_paths(seed):
    rng = np.random.default_rng(seed)
    g = nx.gnp_random_graph(8, 0.35, seed=seed)
    bw = np.zeros((8, 8))
    for u, v in g.edges:
        bw[u, v] = bw[v, u] = g.edges[u, v]["bw"] = float(rng.uniform(1, 30))
    w = widest_bottleneck_all_pairs(bw)
    for a, b in itertools.combinations(range(8), 2):
        paths = list(nx.all_simple_paths(g, a, b))
        expected = max((_path_bottleneck(g, p) for p in paths), default=0.0)
        assert w[a, b] == pytest.approx(expected) and w[b, a] == pytest.approx(expected)
    assert np.isinf(np.diag(w)).all()


def _brute_force_graft(env, d):
    """max over segment nodes s and paths node -> s that avoid the walk and touch the segment only at s of
    min(path bottleneck, bottleneck of s from the entry); hop counts likewise."""
    nodes = env.topology.domain_nodes(d)
    g = nx.Graph()
    g.add_nodes_from(nodes)
    for u, v in env.topology.intra_domain_links(d):
        if env.graph.has_edge(u, v):
            g.add_edge(u, v, bw=env.graph.edges[u, v]["free_bw_mbps"])
    seg, walk = set(env.segment[d]), set(env.walk[d])
    seg_bw = {n: env._seg_bw[d][env._local[d][n]] for n in seg}
    out_bw, out_hops = {}, {}
    for x in nodes:
        if x in seg:
            out_bw[x], out_hops[x] = seg_bw[x], 0
            continue
        if x in walk:
            out_bw[x], out_hops[x] = 0.0, np.inf
            continue
        best, hops = 0.0, np.inf
        for s in seg:
            for p in nx.all_simple_paths(g, x, s):
                if any(n in walk or n in seg for n in p[:-1]):
                    continue
                best = max(best, min(_path_bottleneck(g, p), seg_bw[s]))
                hops = min(hops, len(p) - 1)
        out_bw[x], out_hops[x] = best, hops
    return out_bw, out_hops


def test_graft_view_is_the_widest_bottleneck_through_the_segment_avoiding_the_walk():
    env = CrossDomainMulticastEnv.from_topology("paper30", n_snapshots=2, seed=3)
    rng = np.random.default_rng(0)
    checked = 0
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        while env.agents:
            for d in range(env.topology.n_domains):
                if env.phase == "intra" and env.walk.get(d) and rng.random() < 0.5:
                    b, hops = env.graft_view(d)
                    want_bw, want_hops = _brute_force_graft(env, d)
                    for n, i in env._local[d].items():
                        assert b[i] == pytest.approx(want_bw[n]), (n, env.walk[d])
                        assert hops[i] == want_hops[n]
                    checked += 1
            actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
            obs, *_ = env.step(actions)
    assert checked > 10


def _expert_episode(env, options):
    obs, infos = env.reset(seed=0, options=options)
    while env.agents:
        actions = {a: widest_expert_action(env, a) for a in env.agents}
        for a, act in actions.items():
            assert obs[a]["action_mask"][act] == 1
        obs, _, _, _, infos = env.step(actions)
    return infos[ROOT]


def test_widest_expert_builds_valid_trees_wider_than_delay_weighted_kmb_on_paper30():
    topo = paper_topology()
    ratios = []
    for req, snap in make_requests(topo, 12, seed=5):
        env = CrossDomainMulticastEnv(snap)
        info = _expert_episode(env, {"source": req.source, "members": list(req.members)})
        assert info["failure"] is None
        validate_tree(env.graph, info["tree"], req.source, req.members)
        kmb = build_tree("kmb", topo, env.graph, req.source, req.members, "delay_ms")
        k = tree_metrics(env.graph, kmb, req.source, req.members, "delay_ms")
        ratios.append(info["metrics"]["bottleneck_bw_mbps"] / k["bottleneck_bw_mbps"])
    assert np.mean(ratios) > 1.05


def test_domain_observations_carry_the_graft_summary_in_range():
    env = CrossDomainMulticastEnv.from_topology("geant", n_snapshots=2, seed=0, n_domains=3)
    obs, _ = env.reset(seed=2)
    rng = np.random.default_rng(2)
    while env.agents:
        for d in range(env.topology.n_domains):
            nodes = obs[domain_agent(d)]["nodes"]
            assert nodes.min() >= 0 and nodes.max() <= 1
            mask = obs[domain_agent(d)]["action_mask"][:-1]
            reach = nodes[:, list(env.observation_space(domain_agent(d))["nodes"].shape)[1] - 1]
            assert (reach[mask == 1] > 0).all(), "every allowed next hop still reaches the segment"
        actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
        obs, *_ = env.step(actions)
