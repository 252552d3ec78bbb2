"""Metrics, the evaluation harness and the command line."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mrct_registration.baselines.base import RegistrationResult
from mrct_registration.cli import main
from mrct_registration.errors import GeometryError, MrctError, UnknownMethodError, UnknownTaskError
from mrct_registration.evaluation import TASKS, EvalConfig, paired_comparison, score_case
from mrct_registration.image import Grid
from mrct_registration.io import read_image
from mrct_registration.metrics import dice, folding_percent, hausdorff95_mm
from mrct_registration.phantom import PhantomConfig
from mrct_registration.transforms import DisplacementField


def test_dice_and_hd95_of_a_shifted_cube():
    grid = Grid((20, 20, 20), (1.0, 1.0, 2.0))
    a = np.zeros(grid.shape, bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=2)  # 2 voxels along x = 2 mm
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.8)
    assert hausdorff95_mm(a, b, grid) == pytest.approx(2.0)
    assert hausdorff95_mm(a, np.roll(a, 1, axis=0), grid) == pytest.approx(2.0)  # 1 voxel along z = 2 mm
    with pytest.raises(GeometryError):
        dice(a, a[:-1])


def test_folding_percent_counts_voxels_with_non_positive_jacobian():
    grid = Grid((8, 8, 8), (1.0, 1.0, 1.0))
    assert folding_percent(DisplacementField.identity(grid)) == 0.0
    mirror = DisplacementField.from_affine(grid, np.diag([-1.0, 1.0, 1.0]), [0.0, 0.0, 0.0])
    assert folding_percent(mirror) == 100.0


def test_the_ground_truth_field_scores_as_a_perfect_registration(small_case):
    score, landmarks = score_case(small_case, RegistrationResult("truth", small_case.pmr_to_ict), TASKS["pmr-ict"])
    assert score.epe_liver_mm == 0.0 and score.folding_percent == 0.0
    assert score.liver_dice > 0.95 and score.tre_tumour_mm < 0.3 and score.tre_bifurcation_mm < 0.3
    assert {row["kind"] for row in landmarks} == {"tumour_centroid", "vessel_bifurcation"}


def test_paired_wilcoxon_detects_a_consistently_better_method():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.8, 0.9, 12)
    rows = [{"method": "ants-syn-mi", "seed": s, "liver_dice": d, "tre_tumour_mm": 3.0} for s, d in enumerate(base)]
    rows += [{"method": "better", "seed": s, "liver_dice": d + 0.05, "tre_tumour_mm": 2.0} for s, d in enumerate(base)]
    table = paired_comparison(pd.DataFrame(rows), "ants-syn-mi")
    p_values = [float(line.split("|")[-2]) for line in table.splitlines() if line.startswith("| better")]
    assert len(p_values) == 2 and all(p < 0.01 for p in p_values)


def test_eval_command_writes_csv_summary_figures_and_ends_with_the_ants_line(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--quick", "--method", "identity,ants-syn-mi", "--cases", "1", "--size", "tiny",
                 "--out", str(out)])
    assert code == 0
    per_case = pd.read_csv(out / "per_case.csv")
    assert set(per_case["method"]) == {"identity", "ants-syn-mi"}
    assert {"liver_dice", "tumour_dice", "liver_hd95_mm", "tre_tumour_mm", "tre_bifurcation_mm", "epe_liver_mm",
            "folding_percent", "total_s", "time_optimise_s"} <= set(per_case.columns)
    assert (out / "landmarks.csv").exists() and "Wilcoxon" in (out / "summary.md").read_text()
    assert (out / "figures" / "boxplots.png").exists() and list((out / "figures").glob("case*_ants-syn-mi.png"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ants-syn-mi liver dice \(mean\): \d\.\d{3}", last)


def test_eval_resume_keeps_finished_rows(tmp_path):
    args = ["eval", "--method", "identity", "--cases", "2", "--size", "tiny", "--out", str(tmp_path), "--figure-cases", "0"]
    assert main(args) == 0
    first = pd.read_csv(tmp_path / "per_case.csv")
    assert main([*args, "--resume"]) == 0
    assert pd.read_csv(tmp_path / "per_case.csv").equals(first)


def test_eval_rejects_unknown_methods_and_tasks_with_a_message(capsys):
    assert main(["eval", "--method", "flirt"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["eval", "--task", "mr-us"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_eval_config_checks_task_names_and_chained_methods_before_any_case_is_generated(monkeypatch, tmp_path):
    import mrct_registration.evaluation as evaluation

    def no_generation(*args, **kwargs):
        raise AssertionError("a case was generated before the configuration was checked")

    monkeypatch.setattr(evaluation, "generate_case", no_generation)
    common = {"seeds": (100000,), "phantom": PhantomConfig.tiny(), "out_dir": tmp_path}
    with pytest.raises(UnknownTaskError, match="unknown task 'mr-us'; choose from pmr-ict") as info:
        EvalConfig(methods=("identity",), task="mr-us", **common)
    assert isinstance(info.value, MrctError)
    with pytest.raises(MrctError, match="ants-two-stage .*intermediate image.*task pct-ict has none"):
        EvalConfig(methods=("identity", "ants-two-stage"), task="pct-ict", **common)
    with pytest.raises(UnknownMethodError):
        EvalConfig(methods=("flirt",), **common)
    with pytest.raises(MrctError, match="no seeds"):
        EvalConfig(methods=("identity",), **{**common, "seeds": ()})
    assert EvalConfig(methods=("ants-two-stage",), task="pmr-ict", **common).task == "pmr-ict"


def test_phantom_and_register_commands_round_trip_through_files(tmp_path, capsys):
    assert main(["phantom", "--seed", "7", "--size", "tiny", "--out", str(tmp_path / "case"), "--figure"]) == 0
    for name in ("overview.png", "pmr.nii.gz", "ict.nii.gz", "ict_clean.nii.gz", "ict_labels.nii.gz", "field_pmr_to_ict.nii.gz",
                 "landmarks.csv", "case.json"):
        assert (tmp_path / "case" / name).exists(), name
    assert main(["register", "--fixed", str(tmp_path / "case" / "ict.nii.gz"), "--moving", str(tmp_path / "case" / "pmr.nii.gz"),
                 "--method", "sitk-rigid-mi", "--out", str(tmp_path / "field.nii.gz"),
                 "--warped", str(tmp_path / "warped.nii.gz")]) == 0
    warped = read_image(tmp_path / "warped.nii.gz")
    assert warped.grid.matches(read_image(tmp_path / "case" / "ict.nii.gz").grid)
    assert main(["register", "--fixed", str(tmp_path / "missing.nii.gz"), "--moving", str(tmp_path / "warped.nii.gz"),
                 "--out", str(tmp_path / "f.nii.gz")]) == 2
    assert "no image at" in capsys.readouterr().err


def test_chained_method_reports_pre_and_intra_procedural_time_separately(tmp_path):
    assert main(["eval", "--method", "ants-two-stage", "--cases", "1", "--size", "tiny", "--out", str(tmp_path),
                 "--figure-cases", "0"]) == 0
    row = pd.read_csv(tmp_path / "per_case.csv").iloc[0]
    assert row["time_pre_optimise_s"] > 0 and row["time_intra_optimise_s"] > 0
    assert row["intra_procedural_s"] == pytest.approx(row["total_s"] - row["time_pre_optimise_s"]
                                                      - row["time_pre_prepare_s"] - row["time_pre_to_field_s"])
    assert main(["eval", "--method", "ants-two-stage", "--task", "pct-ict", "--cases", "1", "--size", "tiny",
                 "--out", str(tmp_path / "x")]) == 2
