"""Evaluation harness and command line: same requests for every method, outputs written, errors clear."""

import math

import networkx as nx
import pandas as pd
import pytest

from sdwn_multicast.cli import main
from sdwn_multicast.evaluation import (
    EvalConfig,
    make_requests,
    mean_ci95,
    run_evaluation,
    tree_metrics,
    write_outputs,
)
from sdwn_multicast.topology import load_topology


def test_requests_are_seeded_and_reproducible():
    topo = load_topology("paper30")
    a = [r for r, _ in make_requests(topo, 5, seed=3)]
    b = [r for r, _ in make_requests(topo, 5, seed=3)]
    assert a == b
    assert all(3 <= len(r.members) <= 12 and r.source not in r.members for r in a)


def test_tree_metrics_on_a_hand_built_path():
    g = nx.Graph()
    g.add_edge(0, 1, free_bw_mbps=10.0, delay_ms=2.0, loss=0.1, delay=2.0)
    g.add_edge(1, 2, free_bw_mbps=5.0, delay_ms=3.0, loss=0.0, delay=3.0)
    m = tree_metrics(g, nx.Graph(g.edges), 0, (1, 2), "delay_ms")
    assert m["bottleneck_bw_mbps"] == pytest.approx((10 + 5) / 2)
    assert m["max_e2e_delay_ms"] == pytest.approx(5.0)
    assert m["delivery_prob"] == pytest.approx((0.9 + 0.9) / 2)
    assert m["tree_length"] == 2 and m["cost"] == pytest.approx(5.0)


def test_mean_ci95_of_constant_values_has_zero_width():
    assert mean_ci95(pd.Series([2.0, 2.0, 2.0])) == (2.0, 0.0)
    mu, h = mean_ci95(pd.Series([1.0, 2.0, 3.0]))
    assert mu == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)


def test_every_method_sees_the_same_requests_and_ilp_is_the_reference(tmp_path):
    cfg = EvalConfig(topologies=("paper9",), methods=("spt", "kmb", "ilp", "composed-kmb"), n_requests=4,
                     group_size=(2, 4), steps_between_requests=(1, 5))
    res = run_evaluation(cfg, progress=False)
    df = res.rows
    assert len(df) == 16 and df.valid.all()
    for _, s in df.groupby("request_id"):
        assert s.source.nunique() == 1 and s.members.nunique() == 1
    assert (df[df.method == "ilp"].cost_ratio == 1.0).all()
    assert (df.cost_ratio >= 1.0 - 1e-9).all()
    paths = write_outputs(res, tmp_path)
    assert paths["csv"].exists() and "## paper9" in paths["summary"].read_text()
    assert paths["cost_ratio"].stat().st_size > 1000


def test_cli_eval_prints_the_kmb_summary_line(tmp_path, capsys):
    rc = main(["eval", "--topologies", "paper9", "--methods", "kmb", "ilp", "--requests", "3", "--out",
               str(tmp_path), "--no-progress"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("kmb cost ratio to optimum (mean): ")
    assert float(last.rsplit(" ", 1)[1]) >= 1.0


def test_cli_reports_unknown_topology_and_method_without_a_traceback(capsys):
    assert main(["topology", "atlantis"]) == 2
    assert "unknown topology 'atlantis'" in capsys.readouterr().err
    assert main(["tree", "--method", "magic", "--source", "1", "--members", "5,6"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(["tree", "--method", "kmb", "--source", "1", "--members", "5,99"]) == 2
    assert "99" in capsys.readouterr().err


def test_cli_topology_and_tree_commands(capsys):
    assert main(["topology", "paper30"]) == 0
    out = capsys.readouterr().out
    assert "30 nodes, 58 links, 3 domains, 10 inter-domain links" in out
    assert main(["tree", "--method", "composed-kmb", "--source", "1", "--members", "14,25"]) == 0
    assert "composed-kmb tree on paper30" in capsys.readouterr().out


def test_cli_dataset_and_simulate(tmp_path, capsys):
    assert main(["dataset", "--topology", "paper9", "--snapshots", "5", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "snapshots.npz").exists() and (tmp_path / "d" / "meta.json").exists()
    assert main(["simulate", "--topology", "paper9", "--steps", "3", "--every", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 4


def test_repair_evaluation_validates_every_repaired_tree(tmp_path, capsys):
    assert main(["repair", "--topologies", "paper30", "--requests", "4", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    df = pd.read_csv(tmp_path / "repair.csv")
    assert set(df.event) <= {"join", "leave", "link_failure"} and len(df) >= 8
    assert (df.repair_ratio_to_opt >= 1.0 - 1e-9).all() and (df.rebuild_ratio_to_opt >= 1.0 - 1e-9).all()
    assert "| paper30 | join |" in (tmp_path / "repair.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["tree", "--source", "1", "--members", "5", "--step", "-1"], "--step: must be at least 0, got -1"),
    (["eval", "--requests", "0"], "--requests: must be at least 1, got 0"),
    (["eval", "--requests", "-1"], "--requests: must be at least 1, got -1"),
    (["dataset", "--snapshots", "0", "--out", "unused"], "--snapshots: must be at least 1, got 0"),
    (["topology", "geant", "--domains", "0"], "--domains: must be at least 1, got 0"),
    (["simulate", "--steps", "x"], "--steps: expected an integer, got 'x'"),
])
def test_cli_rejects_out_of_range_numbers_with_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["topology", "paper30", "--domains", "4"], "paper30 has fixed domains"),
    (["tree", "--topology", "paper9", "--domains", "2", "--source", "1", "--members", "5"],
     "paper9 has fixed domains"),
    (["control", "--source", "99"], "APs [99] are not nodes of paper30"),
    (["control", "--members", "5,99"], "APs [99] are not nodes of paper30"),
    (["control", "--drop", "1.5"], "fault injection: invalid fault config"),
    (["tree", "--source", "1", "--members", "1"], "at least one member other than the source"),
])
def test_cli_bad_input_is_a_clear_error_with_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdwn-mcast: error: ") and message in err


def test_cli_topology_accepts_domains_for_partitioned_networks(capsys):
    assert main(["topology", "abilene", "--domains", "2"]) == 0
    assert "2 domains" in capsys.readouterr().out
