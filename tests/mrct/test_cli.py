"""Command-line errors (exit code 2 with a message, never a traceback) and one-thread repeatability of ANTs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mrct_registration.cli import main
from mrct_registration.errors import ImageFormatError
from mrct_registration.io import read_image, write_image
from mrct_registration.transforms import DisplacementField, warp_image

BRAIN = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _fail(argv: list[str], capsys) -> str:
    """Run the CLI, require exit code 2, return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_main_without_a_command_prints_help_and_returns_2(capsys):
    assert "usage: mrct-reg" in _fail([], capsys)


@pytest.mark.parametrize("cases", ["0", "-3", "2000"])
def test_eval_rejects_case_counts_outside_the_held_out_range(cases, capsys, tmp_path):
    err = _fail(["eval", "--method", "identity", "--cases", cases, "--size", "tiny", "--out", str(tmp_path)], capsys)
    assert "--cases must be between 1 and 1000" in err and not (tmp_path / "per_case.csv").exists()


def test_eval_rejects_a_chained_method_on_a_task_without_an_intermediate_image(capsys, tmp_path):
    err = _fail(["eval", "--method", "ants-two-stage", "--task", "pct-ict", "--cases", "1", "--size", "tiny",
                 "--out", str(tmp_path / "x")], capsys)
    assert "intermediate image" in err and not (tmp_path / "x").exists()  # rejected before any work


def test_eval_and_register_reject_a_thread_count_below_one(capsys):
    assert "--threads must be >= 1" in _fail(["eval", "--method", "identity", "--threads", "0"], capsys)


def test_register_checks_the_output_suffix_before_reading_or_registering(capsys, tmp_path):
    missing = str(tmp_path / "missing.nii.gz")  # would fail with "no image at" if read first
    err = _fail(["register", "--fixed", missing, "--moving", missing, "--out", str(tmp_path / "f.xyz")], capsys)
    assert "unknown image format '.xyz'" in err
    err = _fail(["register", "--fixed", missing, "--moving", missing, "--out", str(tmp_path / "field")], capsys)
    assert "unknown image format ''" in err  # a vector field cannot be written as a DICOM series
    err = _fail(["register", "--fixed", missing, "--moving", missing, "--out", str(tmp_path / "f.nii.gz"),
                 "--warped", str(tmp_path / "w.png")], capsys)
    assert "unknown image format '.png'" in err


def test_corrupt_image_files_give_an_image_format_error_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzipped nifti")
    with pytest.raises(ImageFormatError, match="corrupt.nii.gz"):
        read_image(bad)
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(BRAIN.read_bytes()[:200])  # half a header
    with pytest.raises(ImageFormatError, match="truncated.nii"):
        read_image(truncated)
    err = _fail(["register", "--fixed", str(bad), "--moving", str(BRAIN), "--out", str(tmp_path / "f.nii.gz")], capsys)
    assert "cannot read" in err and str(bad) in err


def test_one_itk_thread_makes_ants_syn_mi_exactly_repeatable(tmp_path):
    """The default of `register`/`eval`: with one thread, two processes give bit-identical fields."""
    fixed = read_image(BRAIN)
    fixed = fixed.with_array(fixed.array.astype(np.float32))
    moving = warp_image(fixed, DisplacementField.from_affine(fixed.grid, np.eye(3), [-4.0, 3.0, -2.0]))
    write_image(fixed, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    env = {k: v for k, v in os.environ.items() if k not in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ANTS_RANDOM_SEED")}
    runs = [subprocess.Popen([sys.executable, "-m", "mrct_registration.cli", "register", "--fixed", str(tmp_path / "fixed.nii.gz"),
                              "--moving", str(tmp_path / "moving.nii.gz"), "--method", "ants-syn-mi",
                              "--out", str(tmp_path / f"field{i}.nii")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]  # concurrently: 2 cores
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"field{i}.nii"))) for i in range(2))
    assert np.abs(a).max() > 1.0  # it did register something
    assert np.array_equal(a, b)
