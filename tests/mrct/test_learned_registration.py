"""Specifications of the trained registration network, the intra-procedural CT-CT stage, the learned pMR -> iCT
pipeline (one resampling) and its commands: ``train registration``, ``run`` and ``eval --method learned``."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from mrct_registration.baselines import get_method
from mrct_registration.baselines.identity import IdentityRegistration
from mrct_registration.cli import main
from mrct_registration.evaluation import TASKS, score_case
from mrct_registration.image import Grid
from mrct_registration.io import read_image
from mrct_registration.learned.ctct_registration import ct_to_tensor, working_grid
from mrct_registration.learned.pipeline import PIPELINE_STAGES, LearnedPipeline, learned_ctct
from mrct_registration.learned.train_registration import (
    COMMITTED_WEIGHTS,
    LOG_NAME,
    TRAIN_PRESETS,
    RegistrationTrainConfig,
    RegistrationTrainConfigError,
    RegistrationWeightsError,
    load_registration_net,
    train_registration,
)
from mrct_registration.phantom import PhantomConfig, generate_case, train_seeds
from mrct_registration.phantom.export import save_case
from mrct_registration.transforms import compose, warp_image


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset, trained once for the module (about 15 s on 2 CPU cores)."""
    return train_registration(TRAIN_PRESETS["tiny"], tmp_path_factory.mktemp("registration_tiny"), progress=False)


@pytest.fixture(scope="module")
def tiny_case():
    return generate_case(train_seeds(1, start=5)[0], PhantomConfig.tiny())


def test_tiny_preset_writes_small_weights_config_log_and_curve(tiny_run):
    for path in (tiny_run.weights_path, tiny_run.config_path, tiny_run.log_path, tiny_run.curve_path):
        assert path.is_file() and path.stat().st_size > 0
    assert tiny_run.weights_path.stat().st_size < 1024**2
    assert tiny_run.curve_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tiny_run.weights_path.parent / LOG_NAME).open() as handle:
        rows = list(csv.DictReader(handle))
    config = TRAIN_PRESETS["tiny"]
    assert [int(r["step"]) for r in rows] == list(range(config.steps + 1))
    assert [int(r["step"]) for r in rows if r["val_tre_mm"]] == list(range(0, config.steps + 1, config.validate_every))


def test_unsupervised_training_lowers_the_validation_landmark_error(tiny_run):
    # no landmark enters the loss (local NCC + diffusion only); validation landmarks only pick the kept state
    assert math.isfinite(tiny_run.best_val_tre_mm)
    assert tiny_run.best_val_tre_mm < 0.9 * tiny_run.initial_val_tre_mm
    assert tiny_run.best_step > 0


def test_saved_weights_reload_to_a_network_with_identical_outputs(tiny_run):
    net, config = load_registration_net(tiny_run.weights_path.parent)
    assert config == TRAIN_PRESETS["tiny"]
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, 1, 1, *config.working_shape)
    with torch.no_grad():
        a, b = net(moving, fixed), tiny_run.network(moving, fixed)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


def test_weights_without_a_training_config_are_rejected(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(RegistrationWeightsError, match="no training config"):
        load_registration_net(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="mrct-reg train registration"):
        load_registration_net(tmp_path / "missing")


def test_training_config_rejects_shapes_the_unet_cannot_halve():
    with pytest.raises(RegistrationTrainConfigError, match="divisible by 8"):
        RegistrationTrainConfig(working_shape=(40, 48, 50))
    with pytest.raises(RegistrationTrainConfigError, match="n_train_phantoms"):
        RegistrationTrainConfig(n_train_phantoms=0)


def test_committed_weights_are_under_a_megabyte_and_come_from_the_ci_preset():
    assert COMMITTED_WEIGHTS.stat().st_size < 1024**2
    _, config = load_registration_net(COMMITTED_WEIGHTS)
    assert config == TRAIN_PRESETS["ci"]
    recorded = json.loads(COMMITTED_WEIGHTS.with_suffix(".json").read_text())
    assert RegistrationTrainConfig.from_dict(recorded["config"]) == TRAIN_PRESETS["ci"]
    assert recorded["figures"]["best_val_tre_mm"] < recorded["figures"]["initial_val_tre_mm"]


def test_working_grid_covers_the_same_physical_box_at_its_own_shape():
    grid = Grid((66, 96, 96), (3.125, 3.125, 3.0), (-148.4, -148.4, -85.5))
    coarse = working_grid(grid, (40, 48, 48))
    assert coarse.shape == (40, 48, 48)
    for g in (grid, coarse):  # outer voxel edges: first centre - half a voxel, last centre + half a voxel
        lo = np.asarray(g.origin_mm) - np.asarray(g.spacing_mm) / 2
        hi = lo + np.asarray(g.spacing_mm) * np.asarray(g.size_xyz)
        assert np.allclose(lo, np.asarray(grid.origin_mm) - np.asarray(grid.spacing_mm) / 2)
        assert np.allclose(hi, lo + np.asarray(grid.spacing_mm) * np.asarray(grid.size_xyz))


def test_network_inputs_are_windowed_to_unit_range_and_air_outside_the_image(tiny_case):
    grid = working_grid(tiny_case.ict.grid, (16, 24, 24))
    t = ct_to_tensor(tiny_case.pct, grid, (-250.0, 350.0))
    assert t.shape == (1, 1, 16, 24, 24) and float(t.min()) == 0.0 and float(t.max()) <= 1.0
    assert float(t[0, 0, :, 0, 0].max()) == 0.0  # the corner is air, below the window


@pytest.fixture(scope="module")
def committed_ctct():
    return learned_ctct(refine_steps=10)


def test_committed_network_registers_pct_to_ict_better_than_identity_without_folding(committed_ctct, small_case):
    task = TASKS["pct-ict"]
    learned, _ = score_case(small_case, committed_ctct.register(small_case.ict, small_case.pct), task)
    identity, _ = score_case(small_case, IdentityRegistration().register(small_case.ict, small_case.pct), task)
    assert learned.tre_tumour_mm < identity.tre_tumour_mm and learned.epe_liver_mm < 0.7 * identity.epe_liver_mm
    assert learned.liver_dice > identity.liver_dice and learned.folding_percent == 0.0
    assert list(learned.stage_seconds) == ["inpaint", "resample", "network", "refine", "to_field"]


def test_ctct_stage_inpaints_only_the_metal_hole(committed_ctct, small_case):
    result = committed_ctct.run(small_case.ict, small_case.pct)
    assert result.hole is not None and result.hole.any()
    changed = result.inpainted.array != small_case.ict.array
    assert changed.any() and not (changed & ~result.hole).any()
    assert float(result.inpainted.array[result.hole].max()) < 1200.0  # no metal left in the hole


def test_pipeline_composes_the_two_fields_and_resamples_the_pmr_once(committed_ctct, small_case):
    pipeline = LearnedPipeline(IdentityRegistration(), committed_ctct)
    seen = []
    result = pipeline.run(small_case.ict, small_case.pct, small_case.pmr, on_stage=seen.append)
    assert seen == list(PIPELINE_STAGES)
    expected = compose(result.pmr_to_pct, result.pct_to_ict)
    assert np.array_equal(result.pmr_to_ict.displacement_mm, expected.displacement_mm)
    assert np.array_equal(result.pmr_on_ict.array, warp_image(small_case.pmr, expected).array)
    assert {"intra_inpaint", "intra_network", "intra_refine", "intra_compose", "intra_warp"} <= set(result.stage_seconds)
    assert result.intra_procedural_seconds == pytest.approx(
        sum(v for k, v in result.stage_seconds.items() if not k.startswith("pre_")))
    registration = pipeline.register_via(small_case.ict, small_case.pct, small_case.pmr)
    assert registration.method == "learned" and registration.field.grid.matches(small_case.ict.grid)


def test_learned_methods_are_in_the_registry_and_the_pipeline_is_chained():
    from mrct_registration.baselines import METHOD_NAMES, ChainRegistration

    assert {"learned", "learned-ctct", "learned-ctct-net", "learned-ctct-noinpaint"} <= set(METHOD_NAMES)
    assert isinstance(get_method("learned"), ChainRegistration)
    assert get_method("learned-ctct-noinpaint").inpaint is None and get_method("learned-ctct-net").refine_steps == 0


def test_landmark_rows_record_the_distance_to_the_probe(small_case):
    result = IdentityRegistration().register(small_case.ict, small_case.pct)
    _, rows = score_case(small_case, result, TASKS["pct-ict"])
    distances = np.array([r["probe_distance_mm"] for r in rows])
    assert np.isfinite(distances).all() and distances.min() < 10.0  # the needle ends in the first tumour
    _, rows = score_case(small_case, IdentityRegistration().register(small_case.pct, small_case.pmr), TASKS["pmr-pct"])
    assert all(math.isnan(r["probe_distance_mm"]) for r in rows)


def test_run_command_writes_warped_pmr_fields_report_and_timings(tmp_path, capsys):
    case = generate_case(train_seeds(1, start=6)[0], PhantomConfig.tiny())
    folder = save_case(case, tmp_path / "case")
    out = tmp_path / "run"
    assert main(["run", "--pmr", str(folder / "pmr.nii.gz"), "--pct", str(folder / "pct.nii.gz"),
                 "--ict", str(folder / "ict.nii.gz"), "--pmr-labels", str(folder / "pmr_labels.nii.gz"),
                 "--refine-steps", "2", str(out)]) == 0
    ict_grid = read_image(folder / "ict.nii.gz").grid
    assert read_image(out / "pmr_on_ict.nii.gz").grid.matches(ict_grid)
    for name in ("pmr_to_pct", "pct_to_ict", "pmr_to_ict"):
        assert (out / f"field_{name}.nii.gz").stat().st_size > 0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timings = json.loads((out / "timings.json").read_text())
    assert timings["intra_procedural_s"] < timings["total_s"]
    assert any(k.startswith("pre_") for k in timings["stage_seconds"]) and "intra_warp" in timings["stage_seconds"]
    assert "intra-procedural (inpaint + register + compose + warp)" in capsys.readouterr().out
    # the paper's route for stage (b): the committed Cycle-GAN's synthetic CT, then SyN-CC to the pCT
    assert main(["run", "--pmr", str(folder / "pmr.nii.gz"), "--pct", str(folder / "pct.nii.gz"),
                 "--ict", str(folder / "ict.nii.gz"), "--refine-steps", "2", "--synthesis", "mi", str(out)]) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert "pre_synthesise" in timings["stage_seconds"], timings["stage_seconds"]


def test_run_and_train_reject_bad_arguments_with_a_message(tmp_path, capsys):
    assert main(["train", "registration", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["run", "--pmr", str(tmp_path / "a.nii.gz"), "--pct", str(tmp_path / "b.nii.gz"),
                 "--ict", str(tmp_path / "c.nii.gz"), str(tmp_path / "out")]) == 2
    assert "no image at" in capsys.readouterr().err
    assert main(["run", "--pmr", str(tmp_path / "a.nii.gz"), "--pct", str(tmp_path / "b.nii.gz"),
                 "--ict", str(tmp_path / "c.nii.gz"), "--synthesis", "cyclegan", str(tmp_path / "out")]) == 2
    assert "--synthesis cyclegan: no such weights" in capsys.readouterr().err
    assert main(["run", "--pmr", str(tmp_path / "a.nii.gz"), "--pct", str(tmp_path / "b.nii.gz"),
                 "--ict", str(tmp_path / "c.nii.gz"), "--device", "tpu", str(tmp_path / "out")]) == 2
    assert "--device: " in capsys.readouterr().err


@pytest.mark.slow
def test_eval_quick_learned_ends_with_the_learned_line(tmp_path, capsys):
    assert main(["eval", "--quick", "--method", "learned", "--cases", "1", "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"learned liver dice \(mean\): \d\.\d{3}", last)
    row = pd.read_csv(tmp_path / "per_case.csv").iloc[0]
    assert row["intra_procedural_s"] < row["total_s"] and row["time_intra_warp_s"] > 0
