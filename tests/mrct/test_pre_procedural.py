"""Specifications of the pre-procedural pMR -> pCT registration ``mind-svf`` (learned/pre_procedural.py): the
MIND-SSC descriptor, the diffeomorphic refinement, its place in the learned pipeline, and the final joint
refinement of a composed field (tried, not a pipeline stage)."""

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
from mrct_registration.learned.pre_procedural import (
    JointRefineSettings,
    MindSvfRegistration,
    MindSvfSettings,
    hole_exclusion,
    joint_refinement,
    mind_ssc,
)
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
                                 dict(steps=(-1, 5)), dict(blur_mm=-0.5)])
def test_settings_reject_inconsistent_values(bad):
    with pytest.raises(ValueError):
        MindSvfSettings(**bad)


def _synthetic_pair(size: int = 32, seed: int = 3):
    """Fixed image, a moving image related to it by a known smooth motion and a non-monotonic intensity map, and
    the true fixed -> moving field."""
    grid = Grid((size,) * 3, (4.0, 4.0, 4.0), (-2.0 * (size - 1),) * 3)
    fixed = Image(_blobs(grid.shape, seed), grid)
    x = grid.physical_points()
    bump = np.exp(-np.sum(x**2, axis=-1) / (2 * 35.0**2))[..., None]
    truth = DisplacementField((bump * np.array([5.0, -4.0, 3.0])).astype(np.float32), grid)
    shown = warp_image(fixed, invert(truth))
    moving = shown.with_array(np.abs(shown.array - 0.02) * -3.0 + 1.0)
    return fixed, moving, truth


_JOINT = JointRefineSettings(MindSvfSettings(level_factors=(1,), steps=(30,), smoothness=0.5, lr=0.2), 4.0)


def test_joint_refinement_with_zero_steps_returns_the_input_field():
    fixed, moving, truth = _synthetic_pair(20)
    initial = DisplacementField(0.5 * truth.displacement_mm, truth.grid)
    hole = np.zeros(fixed.grid.shape, dtype=bool)
    hole[8:12, 8:12, :] = True
    settings = JointRefineSettings(MindSvfSettings(level_factors=(1,), steps=(0,)), 4.0)
    field, seconds = joint_refinement(fixed, moving, initial, hole, settings)
    assert np.allclose(field.displacement_mm, initial.displacement_mm, atol=1e-3)
    assert set(seconds) == {"resample", "mind", "optimise", "to_field"}


def test_joint_refinement_lowers_the_error_of_a_partly_right_field_on_a_synthetic_pair():
    fixed, moving, truth = _synthetic_pair()
    x = fixed.grid.physical_points()
    inside = np.linalg.norm(x, axis=-1) < 40.0
    initial = DisplacementField(0.4 * truth.displacement_mm, truth.grid)  # a chain that got 40 % of the motion
    hole = np.zeros(fixed.grid.shape, dtype=bool)
    hole[14:18, 14:18, :] = True  # a probe along x through the centre
    field, _ = joint_refinement(fixed, moving, initial, hole, _JOINT)
    before = endpoint_error_mm(initial, truth, inside)
    after = endpoint_error_mm(field, truth, inside)
    assert after < 0.7 * before
    assert folding_percent(field) == 0.0


def test_joint_refinement_ignores_the_fixed_image_inside_the_hole_and_its_margin():
    fixed, moving, truth = _synthetic_pair(24)
    initial = DisplacementField(0.5 * truth.displacement_mm, truth.grid)
    hole = np.zeros(fixed.grid.shape, dtype=bool)
    hole[10:14, 10:14, :] = True
    # streaks: whatever the fixed image holds inside the hole and its margin must not matter
    exclude = hole_exclusion(hole, fixed.grid, _JOINT.hole_margin_mm)
    assert exclude is not None and exclude.sum() > hole.sum()
    streaked = fixed.with_array(np.where(exclude, 2.0 * _blobs(fixed.grid.shape, 9, 0.7), fixed.array))
    clean, _ = joint_refinement(fixed, moving, initial, hole, _JOINT)
    noisy, _ = joint_refinement(streaked, moving, initial, hole, _JOINT)
    assert np.abs(clean.displacement_mm - initial.displacement_mm).max() > 0.1  # it did move
    assert np.allclose(noisy.displacement_mm, clean.displacement_mm, atol=1e-2)
    # a hole over everything leaves nothing to compare: the field stays as it was
    everything, _ = joint_refinement(fixed, moving, initial, np.ones(fixed.grid.shape, dtype=bool), _JOINT)
    assert np.allclose(everything.displacement_mm, initial.displacement_mm, atol=1e-3)
