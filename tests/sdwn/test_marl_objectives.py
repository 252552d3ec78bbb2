"""Delay- and loss-weighted MA-CDMR variants: ``MarlEnvConfig.objective``, the cost graft summaries, the
cheapest-path expert, and the ``marl-delay`` / ``marl-loss`` evaluation methods."""

import math

import networkx as nx
import numpy as np
import pytest

from sdwn_multicast.evaluation import (
    DEFAULT_MARL_CHECKPOINT,
    EvalConfig,
    build_tree,
    committed_checkpoint_for,
    default_marl_checkpoint,
    make_requests,
    run_evaluation,
    tree_metrics,
)
from sdwn_multicast.marl import CrossDomainMulticastEnv, MarlEnvConfig
from sdwn_multicast.marl.env import (
    ROOT,
    cheapest_all_pairs,
    cheapest_expert_action,
    expert_action_for,
    link_cost,
)
from sdwn_multicast.marl.train import TrainConfig, TrainConfigError
from sdwn_multicast.topology import paper_topology
from sdwn_multicast.trees import validate_tree


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError):
        MarlEnvConfig(objective="jitter")
    with pytest.raises(TrainConfigError):
        TrainConfig(objective="jitter")
    assert MarlEnvConfig().objective == "bandwidth" and TrainConfig().objective == "bandwidth"


@pytest.mark.parametrize("objective", ["delay", "loss"])
def test_observation_shapes_do_not_depend_on_the_objective(paper_snapshot, objective):
    a = CrossDomainMulticastEnv(paper_snapshot)
    b = CrossDomainMulticastEnv(paper_snapshot, MarlEnvConfig(objective=objective))
    for agent in a.possible_agents:
        assert a.observation_space(agent) == b.observation_space(agent)
    oa, _ = a.reset(seed=4)
    ob, _ = b.reset(seed=4)
    for agent in a.possible_agents:
        for k in oa[agent]:
            assert oa[agent][k].shape == ob[agent][k].shape
    assert a.state().shape == b.state().shape


def test_cheapest_all_pairs_matches_dijkstra():
    rng = np.random.default_rng(0)
    g = nx.gnp_random_graph(9, 0.35, seed=1)
    c = np.full((9, 9), np.inf)
    for u, v in g.edges:
        c[u, v] = c[v, u] = g.edges[u, v]["w"] = float(rng.uniform(0.1, 3))
    w = cheapest_all_pairs(c)
    for a in range(9):
        dist = nx.single_source_dijkstra_path_length(g, a, weight="w")
        for b in range(9):
            assert w[a, b] == pytest.approx(dist.get(b, math.inf))


def _expert_episode(env, options):
    obs, infos = env.reset(seed=0, options=options)
    total = 0.0
    while env.agents:
        actions = {a: expert_action_for(env, a) for a in env.agents}
        for a, act in actions.items():
            assert obs[a]["action_mask"][act] == 1
        obs, rewards, _, _, infos = env.step(actions)
        total += next(iter(rewards.values()))
    return infos[ROOT], total


@pytest.mark.parametrize("objective", ["delay", "loss"])
def test_cost_reward_and_expert_trees(objective):
    topo = paper_topology()
    cfg = MarlEnvConfig(objective=objective)
    mine, kmb = [], []
    for req, snap in make_requests(topo, 8, seed=11):
        env = CrossDomainMulticastEnv(snap, cfg)
        info, total = _expert_episode(env, {"source": req.source, "members": list(req.members)})
        assert info["tree"] is not None, info["failure"]
        validate_tree(env.graph, info["tree"], req.source, req.members)
        m = info["metrics"]
        length = cfg.length_coef * m["tree_length"] / len(req.members)
        expected = (-m["mean_link_delay_ms"] / cfg.delay_ref_ms if objective == "delay"
                    else -m["mean_link_loss"] / cfg.loss_ref) - length
        assert total == pytest.approx(expected - cfg.backtrack_penalty * info["backtracks"])
        weight = "delay_ms" if objective == "delay" else None
        ref = build_tree("kmb" if weight else "kmb-loss", topo, env.graph, req.source, req.members, "delay_ms")
        metric = "mean_link_delay_ms" if weight else "mean_link_loss"
        mine.append(m[metric])
        kmb.append(tree_metrics(env.graph, ref, req.source, req.members, "delay_ms")[metric])
    # cheapest-path grafting is close to KMB with the same weighting (not a strict bound per request)
    assert np.mean(mine) <= 1.15 * np.mean(kmb)


@pytest.mark.parametrize("objective", ["delay", "loss"])
def test_cost_graft_view_matches_dijkstra_and_masks_stay_valid(paper_snapshot, objective):
    env = CrossDomainMulticastEnv(paper_snapshot, MarlEnvConfig(objective=objective))
    g = paper_snapshot.to_graph()
    rng = np.random.default_rng(2)
    checked = 0
    for ep in range(6):
        obs, infos = env.reset(seed=ep)
        while env.agents:
            for agent in env.agents:
                assert obs[agent]["action_mask"].any()
                if agent != ROOT:
                    assert np.all((obs[agent]["nodes"] >= 0) & (obs[agent]["nodes"] <= 1))
            if env.phase == "intra":
                for d, walk in env.walk.items():
                    if not walk:
                        continue
                    dist, _ = env.graft_cost_view(d)
                    nodes = env.topology.domain_nodes(d)
                    seg = set(env.segment[d].nodes)
                    sub = g.subgraph(n for n in nodes if n not in walk).copy()
                    for u, v in sub.edges:
                        sub.edges[u, v]["c"] = float(link_cost(objective, g.edges[u, v]["delay_ms"],
                                                               g.edges[u, v]["loss"], env.config))
                    # a path may touch the segment only at its end: drop edges between segment nodes
                    sub.remove_edges_from([(u, v) for u, v in list(sub.edges) if u in seg and v in seg])
                    best = nx.multi_source_dijkstra_path_length(sub, seg, weight="c")
                    for i, n in enumerate(nodes):
                        if n in walk:
                            assert math.isinf(dist[i])
                        else:
                            assert dist[i] == pytest.approx(best.get(n, math.inf))
                    checked += 1
            actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
            obs, _, _, _, infos = env.step(actions)
        assert infos[ROOT]["tree"] is not None or infos[ROOT]["failure"]
    assert checked > 10


def test_cheapest_expert_on_root_picks_a_valid_crossing(paper_snapshot):
    env = CrossDomainMulticastEnv(paper_snapshot, MarlEnvConfig(objective="delay"))
    env.reset(seed=1)
    if env.phase == "inter":
        a = cheapest_expert_action(env, ROOT)
        assert env._mask[ROOT][a] == 1
        j = int(np.flatnonzero(env._mask[ROOT][:-1])[0])
        assert all(0.0 <= x <= 1.0 for x in env.crossing_costs(j))


def test_committed_checkpoints_per_objective():
    topo = paper_topology()
    assert committed_checkpoint_for(topo) == DEFAULT_MARL_CHECKPOINT
    for objective in ("delay", "loss"):
        path = committed_checkpoint_for(topo, objective)
        assert path == default_marl_checkpoint(objective) and (path / "config.json").is_file()


def test_eval_marl_delay_and_loss_methods_build_valid_trees():
    cfg = EvalConfig(topologies=("paper30",), methods=("marl-delay", "marl-loss", "kmb", "kmb-loss"), n_requests=3,
                     seed=7)
    df = run_evaluation(cfg, progress=False).rows
    for method in ("marl-delay", "marl-loss"):
        s = df[df.method == method]
        assert len(s) == 3 and s.valid.all(), s.error.tolist()


def test_cost_offset_shifts_link_costs_and_is_validated():
    cfg = MarlEnvConfig(objective="delay", cost_offset=0.1, cost_floor=0.02)
    c = link_cost("delay", np.array([0.5, 2.0, 5.0]), np.zeros(3), cfg)
    assert c == pytest.approx([0.02, 0.1, 0.4])
    assert link_cost("delay", np.array([2.0]), np.zeros(1), MarlEnvConfig(objective="delay")) == pytest.approx([0.2])
    with pytest.raises(ValueError):
        MarlEnvConfig(objective="delay", cost_offset=-1.0)
    with pytest.raises(TrainConfigError):
        TrainConfig(cost_offset=0.1)  # the bandwidth objective has no link cost
    tc = TrainConfig(objective="loss", cost_offset=0.1)
    assert tc.env_config() == MarlEnvConfig(objective="loss", cost_offset=0.1)
    assert TrainConfig().env_config() == MarlEnvConfig()
