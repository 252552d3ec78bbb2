"""Cost-minimising MA-CDMR variant (``MarlEnvConfig.objective = "cost"``): the reward is minus the tree cost the
exact ILP minimises (sum of link delays), the expert is Takahashi-Matsuyama cheapest-path grafting
(``cost_offset`` 0), and the ``marl-cost`` evaluation method serves the committed ``paper30-cost`` checkpoint."""

import json

import numpy as np
import pytest

from sdwn_multicast.evaluation import (
    MARL_METHODS,
    EvalConfig,
    committed_checkpoint_for,
    default_marl_checkpoint,
    make_requests,
    run_evaluation,
)
from sdwn_multicast.marl import CrossDomainMulticastEnv, MarlEnvConfig
from sdwn_multicast.marl.env import OBJECTIVES, link_cost
from sdwn_multicast.marl.train import PRESETS, TrainConfig, TrainConfigError
from sdwn_multicast.topology import paper_topology
from sdwn_multicast.trees import tree_cost, validate_tree

from .test_marl_objectives import _expert_episode


def test_cost_objective_config():
    assert "cost" in OBJECTIVES and MARL_METHODS["marl-cost"] == "cost"
    preset = PRESETS["paper30-cost"]
    assert preset.objective == "cost" and preset.cost_offset == 0.0
    assert preset.env_config() == MarlEnvConfig(objective="cost", reentry=True)
    with pytest.raises(TrainConfigError):
        TrainConfig(objective="cost", cost_offset=0.1)
    # the link cost is the ILP's weight (delay_ms), scaled, with no offset
    cfg = MarlEnvConfig(objective="cost")
    d = np.array([0.5, 2.0, 7.5])
    assert link_cost("cost", d, np.zeros(3), cfg) == pytest.approx(d / cfg.delay_ref_ms)


def test_cost_reward_is_minus_tree_cost_and_expert_trees_are_valid():
    topo = paper_topology()
    cfg = MarlEnvConfig(objective="cost")
    for req, snap in make_requests(topo, 8, seed=11):
        env = CrossDomainMulticastEnv(snap, cfg)
        info, total = _expert_episode(env, {"source": req.source, "members": list(req.members)})
        assert info["tree"] is not None, info["failure"]
        validate_tree(env.graph, info["tree"], req.source, req.members)
        cost = tree_cost(env.graph, info["tree"], "delay_ms")
        assert info["metrics"]["cost"] == pytest.approx(cost)
        expected = -cost / (cfg.delay_ref_ms * len(req.members))
        assert total == pytest.approx(expected - cfg.backtrack_penalty * info["backtracks"])


def test_cost_expert_random_snapshot_episodes_stay_valid(paper_snapshot):
    env = CrossDomainMulticastEnv(paper_snapshot, MarlEnvConfig(objective="cost"))
    for ep in range(6):
        obs, _ = env.reset(seed=ep)
        info, _ = _expert_episode(env, {"source": env.source, "members": list(env.members)})
        assert info["tree"] is not None, info["failure"]
        validate_tree(env.graph, info["tree"], env.source, env.members)


def test_committed_cost_checkpoint():
    path = committed_checkpoint_for(paper_topology(), "cost")
    assert path == default_marl_checkpoint("cost") and path.name == "paper30-cost"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["objective"] == "cost" and cfg["cost_offset"] == 0.0
    assert (path / "policy.safetensors").is_file()


def test_eval_marl_cost_method_builds_valid_trees():
    cfg = EvalConfig(topologies=("paper30",), methods=("marl-cost", "kmb", "ilp"), n_requests=3, seed=7)
    df = run_evaluation(cfg, progress=False).rows
    s = df[df.method == "marl-cost"]
    assert len(s) == 3 and s.valid.all(), s.error.tolist()
    assert (s.cost_ratio >= 1 - 1e-9).all()
