"""Training comparisons of issue 8, from the same seeds: offline pre-training + online fine-tuning vs
online-only training, and the centralised critic (MAPPO) vs independent per-agent critics (IPPO).

Protocol (per seed s, ``CompareConfig``):

* **online-only**: PPO from a fresh policy against the live simulator (``source="online"``, simulator seed
  s, no behaviour cloning, no recorded data).
* **offline + online**: pre-training on recorded snapshots only (``CompareConfig.offline``: behaviour
  cloning from the widest-path expert on snapshots recorded from simulator seed s + 1000, then offline
  MAPPO on them), then the same online run as online-only, started from the pre-trained weights. Only the
  online phase counts as online episodes: the offline phase never touches the live network.
* **IPPO**: the online-only run with ``critic="local"``. The actors start from the same weights as MAPPO's
  (``torch.manual_seed(s)`` before the actors are built), so only the critic differs.

Convergence: the moving mean (``window`` episodes) of the online team return. R0 is the mean return of
the first window of the reference run (online-only, or MAPPO) and R* the mean return of its last
``final_fraction`` of episodes; a run has converged at the first episode whose moving mean reaches
R0 + ``fraction`` (R* - R0) (95 % of the reference's improvement). Every run is measured against the same
reference threshold of its seed, so "episodes to converge" compare like with like. The final policies are
also played greedily on held-out requests (another simulator seed) against delay-weighted KMB.

Runs whose folder already holds a finished run with the same configuration are reused, so an
interrupted comparison resumes. ``sdwn-mcast compare`` runs both tables and writes ``compare.csv`` (one row per run), ``compare.md`` and
two PNGs (``offline_vs_online.png``, ``mappo_vs_ippo.png``).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .train import PRESETS, TrainConfig, train


@dataclass(frozen=True)
class CompareConfig:
    topology: str = "paper30"
    n_domains: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    online_episodes: int = 3000
    offline: TrainConfig = field(default_factory=lambda: PRESETS["paper30"])
    window: int = 100
    fraction: float = 0.95
    final_fraction: float = 0.2
    eval_requests: int = 30
    eval_seed: int = 77


def moving_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive values (length len(x) - window + 1)."""
    return np.convolve(np.asarray(x, dtype=float), np.ones(window) / window, mode="valid")


def episodes_to_reach(returns: np.ndarray, threshold: float, window: int) -> int | None:
    """Online episodes played when the moving mean of the return first reaches ``threshold``, or None."""
    mm = moving_mean(returns, window)
    hit = np.flatnonzero(mm >= threshold)
    return int(hit[0]) + window if len(hit) else None


def _finished(run_dir: Path, tcfg: TrainConfig) -> bool:
    cfg_path = run_dir / "config.json"
    return (run_dir / "checkpoint.pt").is_file() and cfg_path.is_file() and \
        json.loads(cfg_path.read_text()) == asdict(tcfg)


def _returns(run_dir: Path) -> np.ndarray:
    with (run_dir / "train_log.csv").open(newline="") as fh:
        return np.array([float(r["return"]) for r in csv.DictReader(fh)])


def _greedy_ratio(run_dir: Path, cfg: CompareConfig) -> tuple[float, int]:
    """Mean marl / KMB bottleneck bandwidth on held-out requests, and the number of invalid trees."""
    from ..evaluation import EvalConfig, bottleneck_ratio, invalid_rate, run_evaluation

    ev = EvalConfig(topologies=(cfg.topology,), methods=("marl", "kmb"), n_requests=cfg.eval_requests,
                    n_domains=cfg.n_domains or 3, seed=cfg.eval_seed, steps_between_requests=(30, 360),
                    marl_checkpoint=str(run_dir))
    df = run_evaluation(ev, progress=False).rows
    return float(bottleneck_ratio(df).mean()), invalid_rate(df, "marl")[0]


def run_comparison(cfg: CompareConfig, work_dir: str | Path, progress: bool = True) -> list[dict]:
    """Train every run of both tables (see module docstring); one summary row per run."""
    work = Path(work_dir)
    online = replace(cfg.offline, topology=cfg.topology, n_domains=cfg.n_domains, source="online",
                     episodes=cfg.online_episodes, bc_episodes=0, dataset_dir=None, init_from=None)
    rows = []
    for seed in cfg.seeds:
        runs = {
            "online-only (MAPPO)": replace(online, seed=seed),
            "offline pre-training": replace(cfg.offline, topology=cfg.topology, n_domains=cfg.n_domains,
                                            source="offline", seed=seed + 1000),
            "offline + online (MAPPO)": None,  # needs the pre-training's folder, filled below
            "online-only (IPPO)": replace(online, seed=seed, critic="local"),
        }
        dirs = {}
        for name, tcfg in runs.items():
            d = work / f"s{seed}" / name.split(" (")[0].replace(" + ", "+").replace(" ", "-") / \
                ("ippo" if "IPPO" in name else "mappo")
            if tcfg is None:
                tcfg = replace(online, seed=seed, init_from=str(dirs["offline pre-training"]))
            if not _finished(d, tcfg):  # a finished run with the same config is reused (resumable)
                train(tcfg, d, progress=progress)
            dirs[name] = d
        ref = _returns(dirs["online-only (MAPPO)"])
        w = cfg.window
        r0 = float(ref[:w].mean())
        r_star = float(ref[-max(1, int(len(ref) * cfg.final_fraction)):].mean())
        threshold = r0 + cfg.fraction * (r_star - r0)
        for name, d in dirs.items():
            if name == "offline pre-training":
                continue
            ret = _returns(d)
            ratio, invalid = _greedy_ratio(d, cfg)
            rows.append({"seed": seed, "run": name, "online_episodes": len(ret), "r0": r0, "r_star": r_star,
                         "threshold": threshold, "episodes_to_threshold": episodes_to_reach(ret, threshold, w),
                         "first_window_return": float(ret[:w].mean()),
                         "final_return": float(ret[-max(1, int(len(ret) * cfg.final_fraction)):].mean()),
                         "greedy_bw_ratio_vs_kmb": ratio, "greedy_invalid": invalid, "run_dir": str(d)})
    return rows


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "not reached"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def summary_markdown(rows: list[dict], cfg: CompareConfig, machine: str) -> str:
    lines = [f"# MA-CDMR training comparisons ({cfg.topology}, seeds {', '.join(map(str, cfg.seeds))})", "",
             f"Machine: {machine}. {cfg.online_episodes} online episodes per run; threshold = R0 + "
             f"{cfg.fraction:.2f} (R* - R0) of the seed's online-only MAPPO run (moving mean over {cfg.window} "
             f"episodes); greedy ratio = mean marl / KMB (delay-weighted) bottleneck bandwidth on "
             f"{cfg.eval_requests} held-out requests (simulator seed {cfg.eval_seed}).", ""]
    tables = [("Offline + online vs online-only", "online-only (MAPPO)", "offline + online (MAPPO)"),
              ("Centralised critic (MAPPO) vs independent PPO (IPPO), both online-only",
               "online-only (MAPPO)", "online-only (IPPO)")]
    for title, a, b in tables:
        lines += [f"## {title}", "",
                  f"| seed | threshold | {a}: episodes to threshold | {b}: episodes to threshold | ratio | "
                  f"{a}: final return | {b}: final return | {a}: greedy bw ratio | {b}: greedy bw ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        ratios = []
        for seed in cfg.seeds:
            ra = next(r for r in rows if r["seed"] == seed and r["run"] == a)
            rb = next(r for r in rows if r["seed"] == seed and r["run"] == b)
            ea, eb = ra["episodes_to_threshold"], rb["episodes_to_threshold"]
            ratio = ea / eb if ea is not None and eb else None
            if ratio is not None:
                ratios.append(ratio)
            lines.append(f"| {seed} | {ra['threshold']:.3f} | {_fmt(ea)} | {_fmt(eb)} | {_fmt(ratio)} | "
                         f"{ra['final_return']:.3f} | {rb['final_return']:.3f} | "
                         f"{ra['greedy_bw_ratio_vs_kmb']:.3f} | {rb['greedy_bw_ratio_vs_kmb']:.3f} |")
        mean_ratio = f"{np.mean(ratios):.2f}" if ratios else "n/a"
        lines += ["", f"Mean ratio of episodes to threshold ({a} / {b}): {mean_ratio}.", ""]
    return "\n".join(lines)


def plot_comparison(rows: list[dict], cfg: CompareConfig, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for fname, pair, title in (
            ("offline_vs_online.png", ("online-only (MAPPO)", "offline + online (MAPPO)"),
             "offline pre-training + online fine-tuning vs online-only"),
            ("mappo_vs_ippo.png", ("online-only (MAPPO)", "online-only (IPPO)"),
             "centralised critic (MAPPO) vs independent PPO")):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for k, name in enumerate(pair):
            for i, seed in enumerate(cfg.seeds):
                r = next(r for r in rows if r["seed"] == seed and r["run"] == name)
                mm = moving_mean(_returns(Path(r["run_dir"])), cfg.window)
                x = np.arange(cfg.window, cfg.window + len(mm))
                ax.plot(x, mm, color=f"C{k}", alpha=0.85, lw=1.2, label=name if i == 0 else None)
                if k == 0:
                    ax.axhline(r["threshold"], color="k", lw=0.6, ls=":", label="threshold" if i == 0 else None)
        ax.set_xlabel("online episode")
        ax.set_ylabel(f"team return (moving mean, {cfg.window})")
        ax.set_title(f"{cfg.topology}: {title}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_comparison(rows: list[dict], cfg: CompareConfig, out_dir: str | Path) -> dict[str, Path]:
    from ..evaluation import cpu_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "compare.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "run_dir"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md = out / "compare.md"
    md.write_text(summary_markdown(rows, cfg, cpu_model()))
    pngs = plot_comparison(rows, cfg, out)
    return {"csv": csv_path, "summary": md, **{p.stem: p for p in pngs}}
