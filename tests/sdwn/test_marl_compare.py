"""Training comparisons (offline+online vs online-only, MAPPO vs IPPO): a tiny end-to-end run writes the
tables and plots, and the convergence measure counts online episodes the documented way."""

from dataclasses import replace

import numpy as np

from sdwn_multicast.marl.compare import CompareConfig, episodes_to_reach, run_comparison, write_comparison
from sdwn_multicast.marl.train import PRESETS


def test_episodes_to_reach_counts_the_episodes_of_the_first_window_at_the_threshold():
    returns = np.array([-1.0, -1.0, -0.5, -0.2, -0.1, -0.1])
    assert episodes_to_reach(returns, -0.16, window=2) == 5   # mean(-0.2, -0.1) >= -0.16 after 5 episodes
    assert episodes_to_reach(returns, -0.05, window=2) is None
    assert episodes_to_reach(returns, -2.0, window=3) == 3    # already there: one window is the minimum


def test_tiny_comparison_writes_both_tables_and_plots(tmp_path):
    offline = replace(PRESETS["tiny"], episodes=4, bc_episodes=4, bc_epochs=2)
    cfg = CompareConfig(topology="paper9", seeds=(0,), online_episodes=8, offline=offline, window=2,
                        eval_requests=2)
    rows = run_comparison(cfg, tmp_path / "work", progress=False)
    assert {r["run"] for r in rows} == {"online-only (MAPPO)", "offline + online (MAPPO)", "online-only (IPPO)"}
    assert all(r["online_episodes"] == 8 and r["greedy_invalid"] == 0 for r in rows)
    out = write_comparison(rows, cfg, tmp_path / "out")
    text = out["summary"].read_text()
    assert "## Offline + online vs online-only" in text and "## Centralised critic (MAPPO)" in text
    for name in ("offline_vs_online", "mappo_vs_ippo"):
        assert out[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
