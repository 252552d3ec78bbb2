"""Specifications of the inpainting network's self-supervised training (on pCT slices with synthetic holes)
and of its evaluation against the classical baselines on held-out phantoms (issue 9)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mrct_registration.cli import main
from mrct_registration.errors import SeedRangeError
from mrct_registration.learned.eval_inpainting import (
    METHOD_ORDER,
    evaluate_inpainting,
    inpainting_table_markdown,
    score_fill,
    ssim_window,
    summarise_inpainting,
)
from mrct_registration.learned.train_inpainting import (
    COMMITTED_WEIGHTS,
    LOG_NAME,
    TRAIN_PRESETS,
    InpainterWeightsError,
    InpaintTrainConfig,
    TrainConfigError,
    load_inpainter,
    train_inpainting,
)
from mrct_registration.phantom import PhantomConfig, held_out_seeds, train_seeds


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset, trained once for the module (seconds on 2 CPU cores)."""
    return train_inpainting(TRAIN_PRESETS["tiny"], tmp_path_factory.mktemp("inpainting_tiny"), progress=False)


def test_tiny_preset_writes_weights_config_log_and_curve(tiny_run):
    for path in (tiny_run.weights_path, tiny_run.config_path, tiny_run.log_path, tiny_run.curve_path):
        assert path.is_file() and path.stat().st_size > 0
    assert tiny_run.weights_path.stat().st_size < 2 * 1024**2
    assert tiny_run.curve_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with tiny_run.log_path.open() as handle:
        rows = list(csv.DictReader(handle))
    config = TRAIN_PRESETS["tiny"]
    assert [int(r["step"]) for r in rows] == list(range(config.steps + 1))
    validated = [int(r["step"]) for r in rows if r["val_hole_l1_hu"]]
    assert validated == list(range(0, config.steps + 1, config.validate_every))


def test_training_lowers_the_validation_hole_error(tiny_run):
    assert math.isfinite(tiny_run.best_val_hole_l1_hu)
    assert tiny_run.best_val_hole_l1_hu < 0.8 * tiny_run.initial_val_hole_l1_hu
    assert tiny_run.best_step > 0


def test_saved_weights_reload_to_a_network_with_identical_outputs(tiny_run):
    loaded = load_inpainter(tiny_run.weights_path.parent)  # the folder is enough
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32) * 0.1
    valid = (torch.rand(2, 1, 32, 32) > 0.2).float()
    with torch.no_grad():
        assert torch.equal(loaded(x, valid), tiny_run.network(x, valid))


def test_committed_weights_are_small_and_come_from_the_ci_preset():
    assert COMMITTED_WEIGHTS.stat().st_size < 2 * 1024**2
    net = load_inpainter(COMMITTED_WEIGHTS)
    preset = TRAIN_PRESETS["ci"]
    assert (net.depth, net.encoder[0].conv.out_channels) == (preset.depth, preset.base_channels)
    config_json = COMMITTED_WEIGHTS.with_suffix(".json").read_text()
    assert InpaintTrainConfig.from_dict(json.loads(config_json)["config"]) == preset


def test_training_is_repeatable_for_a_seed(tmp_path):
    config = replace(TRAIN_PRESETS["tiny"], n_train_phantoms=1, steps=3, validate_every=1)
    first = train_inpainting(config, tmp_path / "a", progress=False)
    second = train_inpainting(config, tmp_path / "b", progress=False)
    a, b = load_file(str(first.weights_path)), load_file(str(second.weights_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / LOG_NAME).read_text().count("\n") == config.steps + 2  # header, step 0, steps


@pytest.mark.parametrize("changes", [
    {"phantom_size": "huge"},
    {"crop_px": 30},  # not a multiple of 2**depth = 4
    {"crop_px": 64},  # larger than the tiny phantom's 48-pixel slice
    {"steps": 0},
    {"lr": 0.0},
    {"n_train_phantoms": 10_001},
])
def test_bad_training_configs_are_refused(changes):
    with pytest.raises(TrainConfigError):
        replace(TRAIN_PRESETS["tiny"], **changes)


def test_config_from_dict_refuses_unknown_fields():
    with pytest.raises(TrainConfigError, match="unknown config field"):
        InpaintTrainConfig.from_dict({"phantom_size": "tiny", "learning_rate": 1.0})


def test_load_inpainter_refuses_files_it_did_not_write(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_inpainter(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(InpainterWeightsError):
        load_inpainter(foreign)


def test_a_perfect_fill_scores_zero_mae_and_ssim_one():
    rng = np.random.default_rng(0)
    clean = rng.normal(40.0, 30.0, size=(32, 32)).astype(np.float32)
    hole = np.zeros((32, 32), dtype=bool)
    hole[0, 0:2] = True  # in a corner: the SSIM window still reaches 7x7
    rows, cols = ssim_window(hole, margin_px=2)
    assert rows.stop - rows.start >= 7 and cols.stop - cols.start >= 7
    assert score_fill(clean, clean, hole) == (0.0, 1.0)
    mae, ssim = score_fill(np.where(hole, clean + 100.0, clean), clean, hole)
    assert mae == pytest.approx(100.0) and ssim < 1.0


def test_evaluation_scores_every_method_on_a_held_out_phantom(tiny_run):
    scores = evaluate_inpainting(tiny_run.network, held_out_seeds(1), PhantomConfig.tiny())
    assert {s.method for s in scores} == set(METHOD_ORDER)
    assert all(s.seed == held_out_seeds(1)[0] and s.hole_px > 0 for s in scores)
    summary = {s.method: s for s in summarise_inpainting(scores)}
    assert all(math.isfinite(s.mae_hu_mean) and -1.0 <= s.ssim_mean <= 1.0 for s in summary.values())
    assert summary["network"].mae_hu_mean < summary["streaked"].mae_hu_mean
    table = inpainting_table_markdown(scores)
    assert all(f"| {m} |" in table for m in METHOD_ORDER) and "data_range 400 HU" in table


def test_evaluation_refuses_training_seeds(tiny_run):
    with pytest.raises(SeedRangeError):
        evaluate_inpainting(tiny_run.network, train_seeds(1), PhantomConfig.tiny())


def test_cli_train_refuses_an_unknown_preset(tmp_path, capsys):
    assert main(["train", "inpainting", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset" in capsys.readouterr().err
