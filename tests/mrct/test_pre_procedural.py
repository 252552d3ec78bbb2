"""Specifications of the pre-procedural pMR -> pCT registration ``mind-svf`` (learned/pre_procedural.py): the
MIND-SSC descriptor, the diffeomorphic refinement and its place in the learned pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from mrct_registration.baselines import get_method
from mrct_registration.baselines.base import RegistrationResult
from mrct_registration.evaluation import TASKS, score_case
from mrct_registration.image import Grid, Image
from mrct_registration.learned import pipeline
from mrct_registration.learned.pre_procedural import MindSvfRegistration, MindSvfSettings, mind_ssc
from mrct_registration.metrics import endpoint_error_mm, folding_percent
from mrct_registration.transforms import DisplacementField, invert, warp_image


def _blobs(shape: tuple[int, int, int], seed: int, sigma: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma).astype(np.float32)


def test_mind_is_unchanged_by_an_affine_intensity_map_including_a_contrast_inversion():
    image = torch.from_numpy(_blobs((16, 18, 20), 0))[None, None]
    reference = mind_ssc(image)
    assert reference.shape == (1, 12, 16, 18, 20)
    assert float(reference.min()) > 0.0 and float(reference.amax(dim=1).min()) == pytest.approx(1.0)
    for scale, offset in ((3.0, 100.0), (-0.5, 7.0)):
        assert torch.allclose(mind_ssc(scale * image + offset), reference, atol=1e-4)
    # it does see structure: an unrelated image has a different descriptor
    other = mind_ssc(torch.from_numpy(_blobs((16, 18, 20), 1))[None, None])
    assert float((other - reference).abs().mean()) > 0.05


class _Fixed:
    """A stand-in initialisation that returns a given field."""

    name = "given"

    def __init__(self, field: DisplacementField) -> None:
        self.field = field

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        return RegistrationResult(self.name, self.field, {"optimise": 0.0})


def test_without_optimisation_steps_the_result_is_the_initialisation():
    grid = Grid((20, 24, 24), (4.0, 4.0, 4.0), (-46.0, -46.0, -38.0))
    image = Image(_blobs(grid.shape, 2), grid)
    angle = np.deg2rad(4.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    initial = DisplacementField.from_affine(grid, rotation, np.array([3.0, -2.0, 1.0]))
    result = MindSvfRegistration(_Fixed(initial), MindSvfSettings(steps=(0, 0))).register(image, image)
    assert np.allclose(result.field.displacement_mm, initial.displacement_mm, atol=1e-3)
    assert set(result.stage_seconds) == {"rigid", "resample", "mind", "optimise", "to_field"}


def test_refinement_recovers_a_known_smooth_deformation_across_a_non_monotonic_intensity_map():
    grid = Grid((32, 32, 32), (4.0, 4.0, 4.0), (-62.0, -62.0, -62.0))
    fixed = Image(_blobs(grid.shape, 3), grid)
    x = grid.physical_points()
    bump = np.exp(-np.sum(x**2, axis=-1) / (2 * 35.0**2))[..., None]
    truth = DisplacementField((bump * np.array([5.0, -4.0, 3.0])).astype(np.float32), grid)  # fixed -> moving
    # the moving image: the fixed one pushed by the inverse motion, then remapped non-monotonically (|I| and a
    # flipped sign), as MR relates to CT; so moving(x + u(x)) = remap(fixed(x))
    shown = warp_image(fixed, invert(truth))
    moving = shown.with_array(np.abs(shown.array - 0.02) * -3.0 + 1.0)
    result = MindSvfRegistration(None, MindSvfSettings(steps=(60, 30), control_factor=4)).register(fixed, moving)
    inside = np.linalg.norm(x, axis=-1) < 40.0
    before = endpoint_error_mm(DisplacementField.identity(grid), truth, inside)
    after = endpoint_error_mm(result.field, truth, inside)
    assert before > 3.5
    assert after < 0.5 * before
    assert folding_percent(result.field) == 0.0


def test_small_phantom_pmr_to_pct_beats_its_rigid_initialisation_without_folding(small_case):
    task = TASKS["pmr-pct"]
    fixed, moving = task.images(small_case)
    rigid = get_method("ants-rigid")
    initial = rigid.register(fixed, moving)
    refined = MindSvfRegistration(_Fixed(initial.field)).register(fixed, moving)  # the default settings
    before, _ = score_case(small_case, initial, task)
    after, _ = score_case(small_case, refined, task)
    assert after.epe_liver_mm < before.epe_liver_mm - 1.0
    assert after.tre_tumour_mm < before.tre_tumour_mm
    assert after.liver_dice > before.liver_dice
    assert after.folding_percent == 0.0


def test_mind_svf_is_registered_and_is_the_pipelines_pre_procedural_stage():
    method = get_method("mind-svf")
    assert isinstance(method, MindSvfRegistration) and method.name == "mind-svf"
    assert pipeline.PRE_PROCEDURAL_METHOD == "mind-svf"


@pytest.mark.parametrize("bad", [dict(level_factors=(2, 1), steps=(10,)), dict(control_factor=0),
                                 dict(steps=(-1, 5))])
def test_settings_reject_inconsistent_values(bad):
    with pytest.raises(ValueError):
        MindSvfSettings(**bad)
