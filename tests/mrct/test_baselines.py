"""Classical baselines behind one interface; every backend's output converted to our field convention."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrct_registration.baselines import METHOD_NAMES, Registration, get_method
from mrct_registration.baselines.sitk_rigid import SitkRigidRegistration
from mrct_registration.errors import GeometryError, RegistrationFailedError, UnknownMethodError
from mrct_registration.image import Grid, Image
from mrct_registration.io import read_image
from mrct_registration.metrics import endpoint_error_mm
from mrct_registration.phantom import LIVER_LABELS, Tissue
from mrct_registration.phantom.motion import RigidMotion, rotation_matrix
from mrct_registration.transforms import DisplacementField, warp_image

SHIFT_MM = np.array([6.0, -4.0, 3.0])


def _shifted_pair(fixed: Image) -> Image:
    """moving(x) = fixed(x - shift): the content moved by +shift, so the true registration field is +shift."""
    return warp_image(fixed, DisplacementField.from_affine(fixed.grid, np.eye(3), -SHIFT_MM))


def test_registry_knows_every_baseline_and_rejects_unknown_names():
    for name in ("identity", "sitk-rigid-mi", "ants-rigid", "ants-syn-mi", "ants-syncc", "elastix-bspline-mi"):
        assert name in METHOD_NAMES
    assert isinstance(get_method("identity"), Registration)
    with pytest.raises(UnknownMethodError, match="choose from"):
        get_method("flirt")


def test_identity_gives_a_zero_field_on_the_fixed_grid(small_case):
    result = get_method("identity").register(small_case.ict, small_case.pmr)
    assert result.field.grid.matches(small_case.ict.grid) and not result.field.displacement_mm.any()
    assert result.total_seconds >= 0.0 and "to_field" in result.stage_seconds


def test_images_too_small_for_3d_registration_are_rejected():
    flat = Image(np.zeros((1, 8, 8), np.float32), Grid((1, 8, 8), (1.0, 1.0, 1.0)))
    with pytest.raises(GeometryError, match="too small"):
        get_method("sitk-rigid-mi").register(flat, flat)


def test_mi_rigid_recovers_a_known_shift_and_rotation_on_a_real_bundled_image(tmp_path):
    """nibabel's anatomical.nii (a real 2 mm brain MR) against a rigidly moved copy whose intensities are
    remapped non-monotonically (a different 'contrast')."""
    fixed = read_image(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii")
    fixed = fixed.with_array(fixed.array.astype(np.float32))
    motion = RigidMotion(rotation_matrix(np.deg2rad([4.0, -3.0, 6.0])), fixed.grid.center_mm(), np.array([4.0, -3.0, 2.0]))
    v = fixed.array / fixed.array.max()
    other_contrast = fixed.with_array(np.sin(np.pi * v) * 1000.0)  # mid grey -> bright, dark and bright -> dark
    moving = warp_image(other_contrast, DisplacementField.from_point_map(fixed.grid, motion.inverse), fill_value=0.0)
    truth = DisplacementField.from_point_map(fixed.grid, motion)
    result = SitkRigidRegistration("mattes", sampling=0.5).register(fixed, moving)
    brain = fixed.array > 0.2 * fixed.array.max()
    assert endpoint_error_mm(result.field, truth, brain) < 1.0  # voxels are 2 mm
    assert endpoint_error_mm(get_method("identity").register(fixed, moving).field, truth, brain) > 4.0


def test_mi_rigid_recovers_a_phantom_mr_ct_rigid_motion_where_ncc_and_mse_fail(rigid_mr_ct_case):
    c = rigid_mr_ct_case
    liver = np.isin(c.pct_labels.array, LIVER_LABELS)
    error = {metric: endpoint_error_mm(SitkRigidRegistration(metric).register(c.pct, c.pmr).field, c.pmr_to_pct, liver)
             for metric in ("mattes", "ncc", "mse")}
    start = endpoint_error_mm(DisplacementField.identity(c.pct.grid), c.pmr_to_pct, liver)
    assert error["mattes"] < 2.5  # CT voxels are 4.7 mm in-plane at this size
    assert error["ncc"] > 5.0 and error["mse"] > 5.0, error
    assert start > 5.0


def _bundled_brain() -> Image:
    image = read_image(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii")
    return image.with_array(image.array.astype(np.float32))


@pytest.mark.parametrize("method", ["ants-syn-mi", "ants-syncc", "elastix-bspline-mi"])
def test_backend_output_is_converted_to_our_convention_on_a_known_shift_of_a_real_image(method):
    fixed = _bundled_brain()
    result = get_method(method).register(fixed, _shifted_pair(fixed))
    assert result.field.grid.matches(fixed.grid)
    brain = fixed.array > 0.2 * fixed.array.max()
    mean_shift = result.field.displacement_mm[brain].mean(axis=0)
    assert np.all(np.abs(mean_shift - SHIFT_MM) < 1.0), mean_shift  # a sign or axis mix-up would be >= 6 mm off


def test_elastix_field_on_a_grid_other_than_the_fixed_one_is_rejected(monkeypatch):
    import itk

    from mrct_registration.baselines.elastix import ElastixBsplineRegistration, itk_grid, to_itk

    fixed = _bundled_brain()
    assert itk_grid(to_itk(fixed)).matches(fixed.grid, atol_mm=1e-6)
    original = itk.transformix_deformation_field

    def shifted_origin(*args, **kwargs):  # same array shape, origin 5 mm off
        field = original(*args, **kwargs)
        field.SetOrigin([float(v) + 5.0 for v in field.GetOrigin()])
        return field

    monkeypatch.setattr(itk, "transformix_deformation_field", shifted_origin)
    quick = ElastixBsplineRegistration(iterations=2, resolutions=1, samples=256)
    with pytest.raises(RegistrationFailedError, match="expected shape .* on the fixed grid"):
        quick.register(fixed, fixed)


def test_ants_rigid_output_is_converted_to_our_convention_on_a_known_shift_of_a_phantom_ct(small_case):
    """(ANTs' rigid defaults shrink by 6 first, too coarse for the 33x41x25 brain, so the phantom CT is used.)"""
    fixed = small_case.pct
    result = get_method("ants-rigid").register(fixed, _shifted_pair(fixed))
    body = small_case.pct_labels.array != Tissue.BACKGROUND
    mean_shift = result.field.displacement_mm[body].mean(axis=0)
    assert np.all(np.abs(mean_shift - SHIFT_MM) < 1.5), mean_shift


class _Oracle:
    """Returns a known field: stands in for the two stage registrations so the chaining itself is what is tested."""

    def __init__(self, name, field):
        self.name, self.field = name, field

    def register(self, fixed, moving):
        from mrct_registration.baselines.base import RegistrationResult

        return RegistrationResult(self.name, self.field, {"optimise": 1.0})


def test_two_stage_chain_composes_pre_and_intra_procedural_fields_into_one(small_case):
    from mrct_registration.baselines.chain import ChainRegistration, TwoStageRegistration

    c = small_case
    chain = TwoStageRegistration("oracle-chain", _Oracle("pre", c.pmr_to_pct), _Oracle("intra", c.pct_to_ict))
    assert isinstance(chain, ChainRegistration)
    result = chain.register_via(c.ict, c.pct, c.pmr)
    liver = np.isin(c.ict_labels.array, LIVER_LABELS)
    assert result.field.grid.matches(c.ict.grid)
    assert np.linalg.norm(result.field.displacement_mm - c.pmr_to_ict.displacement_mm, axis=-1)[liver].max() < 0.2
    assert {"pre_optimise", "intra_optimise", "intra_compose"} <= set(result.stage_seconds)


def test_our_warp_with_the_converted_ants_field_reproduces_ants_own_warped_image(tmp_path):
    """Affine + SyN composed into one field and resampled by us equals antsApplyTransforms' own output."""
    import ants

    from mrct_registration.baselines.ants import ants_transforms_to_field, to_ants
    from mrct_registration.phantom import PhantomConfig, generate_case

    case = generate_case(17, PhantomConfig.tiny())
    out = ants.registration(to_ants(case.ict), to_ants(case.pmr), type_of_transform="SyN", outprefix=str(tmp_path / "r_"))
    field = ants_transforms_to_field(case.ict, out["fwdtransforms"], tmp_path)
    theirs = out["warpedmovout"].numpy().transpose(2, 1, 0)
    ours = warp_image(case.pmr, field, fill_value=0.0).array
    body = case.ict_labels.array != Tissue.BACKGROUND
    assert np.abs(ours - theirs)[body].max() < 1e-3 * case.pmr.array.max()
