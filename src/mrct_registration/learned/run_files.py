"""The files every trainer leaves behind: best weights (config and figures in the safetensors metadata),
a JSON of the config and figures, the per-step CSV log, and optionally the loss-curve PNG."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_run_files(
    out_dir: Path,
    *,
    weights_name: str,
    config_name: str,
    state: dict[str, torch.Tensor],
    config: dict,
    figures: dict,
    rows: list[dict],
    log_name: str = "train_log.csv",
    curve_name: str | None = None,
    plot: Callable[[list[dict], Path], None] | None = None,
) -> tuple[Path, Path, Path, Path | None]:
    """Write the run's files into ``out_dir``; returns (weights, config JSON, log, curve or None)."""
    weights_path = out_dir / weights_name
    save_file(state, str(weights_path), metadata={"config": json.dumps(config), "figures": json.dumps(figures)})
    config_path = out_dir / config_name
    config_path.write_text(json.dumps({"config": config, "figures": figures}, indent=2) + "\n")
    log_path = out_dir / log_name
    with log_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    curve_path = None
    if curve_name is not None and plot is not None:
        curve_path = out_dir / curve_name
        plot(rows, curve_path)
    return weights_path, config_path, log_path, curve_path
