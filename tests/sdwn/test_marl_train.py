"""Multi-agent PPO training: tiny runs finish, write their artefacts, and the checkpoint reloads into a
policy that builds valid trees deterministically. No assertion on learning progress (too noisy for a few
episodes) except behaviour cloning, whose loss on a fixed expert dataset must fall."""

import csv
import json
from dataclasses import replace

import networkx as nx
import pytest
import torch

from sdwn_multicast.cli import main
from sdwn_multicast.dataset import generate_dataset
from sdwn_multicast.marl.train import (
    PRESETS,
    TrainConfig,
    TrainConfigError,
    load_policy,
    make_env,
    run_episode,
    train,
)
from sdwn_multicast.trees import validate_tree

TINY = replace(PRESETS["tiny"], episodes=8, episodes_per_update=4)


def _log_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("critic", ["central", "local"])
def test_tiny_run_writes_checkpoint_csv_and_plot_and_every_tree_is_valid(tmp_path, critic):
    result = train(replace(TINY, critic=critic), tmp_path, progress=False)
    for key in ("checkpoint", "csv", "png", "config"):
        assert result[key].is_file() and result[key].stat().st_size > 0
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result["config"].read_text())["critic"] == critic
    rows = _log_rows(result["csv"])
    assert [int(r["episode"]) for r in rows] == list(range(TINY.episodes))
    assert all(r["valid"] == "True" for r in rows)
    assert all(float(r["cost"]) > 0 and float(r["bottleneck_bw_mbps"]) > 0 for r in rows)
    assert result["valid_rate"] == 1.0


def test_reloaded_policy_builds_the_same_valid_tree_every_time(tmp_path):
    train(TINY, tmp_path, progress=False)
    policy, cfg = load_policy(tmp_path)
    assert cfg == TINY
    env, _ = make_env(cfg)
    for seed in (0, 1, 2):
        trees = []
        for _ in range(2):
            traj, _, info = run_episode(env, policy, seed=seed, greedy=True)
            assert info["failure"] is None
            validate_tree(env.graph, info["tree"], env.source, env.members)
            trees.append(info["tree"])
            assert not any(traj.values())  # greedy play records no transitions
        assert nx.utils.edges_equal(sorted(trees[0].edges), sorted(trees[1].edges))


def test_online_source_and_behaviour_cloning_on_paper30(tmp_path):
    cfg = replace(TINY, topology="paper30", source="online", episodes=4, bc_episodes=6, bc_epochs=25)
    result = train(cfg, tmp_path, progress=False)
    losses = result["bc_losses"]
    assert len(losses) == 25
    assert losses[-1] < 0.8 * losses[0]
    assert all(r["valid"] == "True" for r in _log_rows(result["csv"]))


def test_offline_training_replays_a_recorded_dataset(tmp_path):
    data = generate_dataset("paper9", 3, tmp_path / "ds", seed=1, every_n_steps=10)
    result = train(replace(TINY, dataset_dir=str(data), episodes=4), tmp_path / "run", progress=False)
    assert result["valid_rate"] == 1.0


@pytest.mark.parametrize("bad, match", [
    ({"critic": "global"}, "critic must be one of"),
    ({"source": "replay"}, "source must be one of"),
    ({"episodes": 0}, "episodes must be at least 1"),
    ({"gamma": 1.5}, "gamma"),
    ({"bc_episodes": -1}, "bc_episodes"),
    ({"source": "online", "dataset_dir": "x"}, "only used with source='offline'"),
])
def test_bad_config_is_rejected_with_a_clear_message(bad, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**bad)


def test_cli_train_tiny_preset(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--critic", "local", "--episodes", "4", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "valid-tree rate 1.00" in out
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "convergence.png").is_file()
    assert main(["train", "--source", "online", "--dataset", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "only used with source='offline'" in capsys.readouterr().err


def test_loading_a_folder_without_a_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs checkpoint.pt and config.json"):
        load_policy(tmp_path)


def test_the_local_critic_ablation_checkpoints_one_critic_per_agent(tmp_path):
    train(replace(TINY, critic="local", episodes=1, episodes_per_update=1), tmp_path, progress=False)
    policy, _ = load_policy(tmp_path)
    assert len(policy.domain_critics) == len(policy.domain_actors) == 3
    assert not hasattr(policy, "central_critic")


def test_online_fine_tuning_starts_from_a_pre_trained_run(tmp_path, capsys):
    train(TINY, tmp_path / "pre", progress=False)
    pre, _ = load_policy(tmp_path / "pre")
    cfg = replace(TINY, source="online", episodes=1, episodes_per_update=1, lr=1e-12, init_from=str(tmp_path / "pre"))
    train(cfg, tmp_path / "fine", progress=False)
    fine, _ = load_policy(tmp_path / "fine")
    a, b = pre.state_dict(), fine.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if "actor" in k)  # lr ~0: weights kept
    assert main(["train", "--init-from", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "needs checkpoint.pt and config.json" in capsys.readouterr().err


def test_cli_train_overrides_the_preset_topology_and_domain_count(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--topology", "geant", "--domains", "4", "--episodes", "2",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    policy, cfg = load_policy(tmp_path)
    assert (cfg.topology, cfg.n_domains) == ("geant", 4) and len(policy.domain_actors) == 4
    assert main(["train", "--preset", "tiny", "--topology", "no-such-net", "--out", str(tmp_path / "x")]) == 2
    assert "no-such-net" in capsys.readouterr().err
