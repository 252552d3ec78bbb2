"""The learned method in the evaluation harness: the committed paper30 checkpoint builds valid trees and
``eval`` reports it against KMB (bottleneck bandwidth ratio, invalid trees, decision time)."""

import pandas as pd
import pytest

from sdwn_multicast.cli import main
from sdwn_multicast.evaluation import (
    DEFAULT_MARL_CHECKPOINT,
    EvalConfig,
    MarlCheckpointError,
    MarlRouter,
    bottleneck_ratio,
    run_evaluation,
)
from sdwn_multicast.topology import load_topology


def test_the_committed_checkpoint_ships_as_safetensors_and_loads():
    assert (DEFAULT_MARL_CHECKPOINT / "policy.safetensors").is_file()
    assert (DEFAULT_MARL_CHECKPOINT / "config.json").is_file()
    router = MarlRouter()
    assert router.n_domains == 3 and router.train_config.topology == "paper30"


def test_eval_marl_and_kmb_writes_the_csv_and_prints_the_ratio(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--topologies", "paper30", "--methods", "marl,kmb", "--requests", "4", "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    last = text.strip().splitlines()[-1]
    assert last.startswith("marl vs kmb bottleneck bandwidth ratio (mean): ")
    assert float(last.rsplit(":", 1)[1]) > 0
    assert "marl invalid/failed trees: 0/4" in text
    df = pd.read_csv(out / "requests.csv")
    marl = df[df.method == "marl"]
    assert len(marl) == 4 and marl.valid.all()
    assert (marl.decision_time_ms > 0).all()
    assert len(bottleneck_ratio(df)) == 4


def test_a_checkpoint_with_another_domain_count_is_refused_clearly(capsys):
    router = MarlRouter()
    with pytest.raises(MarlCheckpointError, match="supports topologies with 3 domains"):
        router.check_topology(load_topology("geant", n_domains=4, seed=0))
    cfg = EvalConfig(topologies=("geant",), methods=("marl",), n_requests=1, n_domains=4)
    with pytest.raises(MarlCheckpointError, match="geant-k4 has 4"):
        run_evaluation(cfg, progress=False)
    assert main(["eval", "--topologies", "geant", "--domains", "4", "--methods", "marl", "--requests", "1",
                 "--no-progress"]) == 2
    assert "trained on paper30" in capsys.readouterr().err


def test_a_missing_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MarlCheckpointError, match="needs checkpoint.pt and config.json"):
        MarlRouter(tmp_path)


def test_the_committed_paper30_agents_build_wider_trees_than_delay_weighted_kmb():
    cfg = EvalConfig(topologies=("paper30",), methods=("marl", "kmb"), n_requests=10, seed=3,
                     steps_between_requests=(30, 360))
    df = run_evaluation(cfg, progress=False).rows
    assert df[df.method == "marl"].valid.all()
    assert bottleneck_ratio(df).mean() > 1.03


def test_each_topology_is_served_by_the_checkpoint_trained_on_it_else_by_paper30():
    from sdwn_multicast.evaluation import MARL_CHECKPOINTS, committed_checkpoint_for

    assert committed_checkpoint_for(load_topology("paper30")) == MARL_CHECKPOINTS / "paper30"
    assert committed_checkpoint_for(load_topology("geant", n_domains=3, seed=0)) == MARL_CHECKPOINTS / "geant"
    assert committed_checkpoint_for(load_topology("abilene", n_domains=3, seed=0)) == DEFAULT_MARL_CHECKPOINT
    for path in (MARL_CHECKPOINTS / "paper30", MARL_CHECKPOINTS / "geant"):
        assert (path / "policy.safetensors").stat().st_size < 1_000_000


def test_sessions_under_churn_and_failures_are_answered_by_the_agents_with_valid_trees():
    from sdwn_multicast.evaluation import run_marl_session_evaluation

    df = run_marl_session_evaluation(("paper30",), n_sessions=3, events_per_session=4, seed=1, progress=False)
    assert set(df.event) <= {"join", "leave", "link_failure"} and len(df) >= 6
    servable = df[df.kmb_served]
    assert servable.served.mean() >= 0.9
    ok = df[df.served]
    assert (ok.decision_time_ms > 0).all() and (ok.links_changed >= 0).all()
    assert (ok.bw_ratio_vs_kmb > 0).all()


def test_reentry_cost_agents_serve_every_event_kmb_can_on_geant():
    """The re-entry agents are not limited to plans that enter each domain once, so link failures that
    split a domain do not leave them without an answer."""
    from sdwn_multicast.evaluation import run_marl_session_evaluation

    df = run_marl_session_evaluation(("geant",), n_sessions=4, events_per_session=5, seed=2, progress=False,
                                     objective="cost")
    servable = df[df.kmb_served]
    assert len(servable) >= 10 and servable.served.all(), servable.error.tolist()
    assert (df[df.served].cost_ratio_vs_kmb > 0.5).all()
