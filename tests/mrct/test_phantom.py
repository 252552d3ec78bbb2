"""The phantom: determinism, exact ground truth, and the imaging physics the benchmark depends on."""

from __future__ import annotations

import numpy as np
import pytest

from mrct_registration.errors import MrctError, SeedRangeError
from mrct_registration.phantom import (
    HELD_OUT_SEEDS,
    LIVER_LABELS,
    TRAIN_SEEDS,
    VALIDATION_SEEDS,
    PhantomConfig,
    Tissue,
    generate_case,
    held_out_seeds,
    train_seeds,
)
from mrct_registration.phantom.probe import crossed_slices
from mrct_registration.transforms import compose, jacobian_determinant, sample_image, warp_image


def test_same_seed_and_config_give_bit_identical_cases():
    a = generate_case(5, PhantomConfig.tiny())
    b = generate_case(5, PhantomConfig.tiny())
    for name in ("pmr", "pct", "ict", "ict_clean", "pmr_labels", "pct_labels", "ict_labels", "probe_mask"):
        assert np.array_equal(getattr(a, name).array, getattr(b, name).array), name
    for name in ("pmr_to_pct", "pct_to_ict", "pmr_to_ict"):
        assert np.array_equal(getattr(a, name).displacement_mm, getattr(b, name).displacement_mm), name
    assert np.array_equal(a.ict_landmarks.points_mm, b.ict_landmarks.points_mm)


def test_different_seeds_give_different_anatomy():
    a = generate_case(5, PhantomConfig.tiny())
    b = generate_case(6, PhantomConfig.tiny())
    assert not np.array_equal(a.pct_labels.array, b.pct_labels.array)


def test_train_validation_and_held_out_seed_ranges_are_disjoint_and_held_out_has_20_cases():
    train, val, test = set(TRAIN_SEEDS), set(VALIDATION_SEEDS), set(HELD_OUT_SEEDS)
    assert not (train & test) and not (train & val) and not (val & test)
    assert len(held_out_seeds(20)) == 20 and set(held_out_seeds(20)) <= test
    with pytest.raises(ValueError):
        held_out_seeds(0)


@pytest.mark.parametrize(("n", "start"), [(0, 0), (-1, 0), (1, -1), (2, len(TRAIN_SEEDS) - 1), (len(TRAIN_SEEDS) + 1, 0)])
def test_train_seeds_outside_the_training_range_are_rejected(n, start):
    with pytest.raises(SeedRangeError, match="training range"):
        train_seeds(n, start=start)


def test_train_and_held_out_seed_requests_never_overlap_and_bad_counts_raise_an_mrct_error():
    every_train = set(train_seeds(len(TRAIN_SEEDS)))
    assert every_train == set(TRAIN_SEEDS) and not every_train & set(held_out_seeds(len(HELD_OUT_SEEDS)))
    assert train_seeds(1, start=len(TRAIN_SEEDS) - 1) == [TRAIN_SEEDS[-1]]
    for n in (0, len(HELD_OUT_SEEDS) + 1):
        with pytest.raises(MrctError, match="held-out range"):
            held_out_seeds(n)


def test_case_has_every_image_label_map_and_geometry_as_configured(small_case):
    c = small_case
    assert c.pct.grid.shape == (48, 64, 64) and c.pmr.grid.shape == (28, 64, 64)
    assert c.pmr.grid.spacing_mm[2] > c.pmr.grid.spacing_mm[0]  # anisotropic MR
    assert not c.pmr.grid.matches(c.pct.grid) and not c.ict.grid.matches(c.pct.grid)  # different fields of view
    for image in ("pmr", "pct", "ict"):
        labels = getattr(c, f"{image}_labels").array
        for tissue in (Tissue.LIVER, Tissue.TUMOUR, Tissue.VESSEL, Tissue.SPLEEN, Tissue.KIDNEY, Tissue.BONE):
            assert (labels == tissue).any(), (image, tissue.name)
    assert c.pmr_to_ict.grid.matches(c.ict.grid) and c.pmr_to_pct.grid.matches(c.pct.grid)


@pytest.mark.parametrize("image", ["pmr", "pct", "ict"])
def test_tumour_landmarks_sit_at_the_centroid_of_their_tumour_in_every_image(small_case, image):
    labels = getattr(small_case, f"{image}_labels")
    landmarks = getattr(small_case, f"{image}_landmarks").of_kind("tumour_centroid")
    voxel = max(labels.grid.spacing_mm)
    assert np.all(sample_image(labels, landmarks.points_mm, order=0) == Tissue.TUMOUR)
    # the tumours never touch each other, so the centroid of the tumour voxels nearest to a landmark is that tumour's
    tumour_points = labels.grid.physical_points()[labels.array == Tissue.TUMOUR]
    for p in landmarks.points_mm:
        near = tumour_points[np.linalg.norm(tumour_points - p, axis=1) < 20.0]
        assert np.linalg.norm(near.mean(axis=0) - p) < voxel


@pytest.mark.parametrize("image", ["pmr", "pct", "ict"])
def test_bifurcation_landmarks_lie_on_labelled_vessels(small_case, image):
    labels = getattr(small_case, f"{image}_labels")
    landmarks = getattr(small_case, f"{image}_landmarks").of_kind("vessel_bifurcation")
    assert len(landmarks) >= 1
    vessel_points = labels.grid.physical_points()[labels.array == Tissue.VESSEL]
    half_diagonal = 0.5 * np.linalg.norm(labels.grid.spacing_mm)
    for p in landmarks.points_mm:
        assert np.min(np.linalg.norm(vessel_points - p, axis=1)) <= half_diagonal


def test_ground_truth_fields_map_fixed_landmarks_onto_moving_landmarks(small_case):
    c = small_case
    for field, fixed, moving in ((c.pmr_to_pct, c.pct_landmarks, c.pmr_landmarks),
                                 (c.pct_to_ict, c.ict_landmarks, c.pct_landmarks),
                                 (c.pmr_to_ict, c.ict_landmarks, c.pmr_landmarks)):
        error = np.linalg.norm(field.map_points(fixed.points_mm) - moving.points_mm, axis=1)
        assert error.max() < 0.3, error  # only trilinear interpolation of a smooth field between voxel centres


def test_ground_truth_warps_pmr_labels_onto_ict_labels(small_case):
    c = small_case
    from mrct_registration.transforms import warp_labels

    warped = warp_labels(c.pmr_labels, c.pmr_to_ict).array
    liver_ict, liver_warped = np.isin(c.ict_labels.array, LIVER_LABELS), np.isin(warped, LIVER_LABELS)
    dice = 2 * (liver_ict & liver_warped).sum() / (liver_ict.sum() + liver_warped.sum())
    assert dice > 0.95  # not 1: both label maps are sampled at voxel centres of different grids


def test_composing_the_two_ground_truth_fields_equals_the_exact_chain_within_0_2_mm(small_case):
    c = small_case
    composed = compose(c.pmr_to_pct, c.pct_to_ict)
    liver = np.isin(c.ict_labels.array, LIVER_LABELS)
    error = np.linalg.norm(composed.displacement_mm - c.pmr_to_ict.displacement_mm, axis=-1)[liver]
    assert error.max() < 0.2


def test_one_resampling_of_the_composed_field_equals_two_sequential_warps_within_0_2_mm(small_case):
    """Warping the pMR's physical-coordinate images pMR -> pCT -> iCT (two resamplings) tells where each iCT
    voxel's content came from; the composed field must say the same."""
    c = small_case
    coords = c.pmr.grid.physical_points()
    liver = np.isin(c.ict_labels.array, LIVER_LABELS)
    composed = compose(c.pmr_to_pct, c.pct_to_ict)
    for axis in range(3):
        coordinate = c.pmr.with_array(coords[..., axis].astype(np.float64))
        twice = warp_image(warp_image(coordinate, c.pmr_to_pct), c.pct_to_ict).array
        once = warp_image(coordinate, composed).array
        assert np.abs(twice - once)[liver].max() < 0.2


def test_ground_truth_fields_are_diffeomorphic(small_case):
    for name in ("pmr_to_pct", "pct_to_ict", "pmr_to_ict"):
        assert jacobian_determinant(getattr(small_case, name)).min() > 0.5, name


def test_tumour_is_only_5_to_15_hu_darker_than_liver_on_ct(small_case):
    for appearance in (small_case.pct_appearance, small_case.ict_appearance):
        assert -15.0 <= appearance.tumour_contrast_hu <= -5.0
    ct, labels = small_case.pct.array, small_case.pct_labels.array
    measured = ct[labels == Tissue.TUMOUR].mean() - ct[labels == Tissue.LIVER].mean()
    assert -25.0 < measured < 0.0  # blur mixes the small tumours with liver and vessels


def test_mr_intensity_is_not_a_monotonic_function_of_ct(small_case):
    """Bone is the brightest tissue on CT but darker than fat on MR; fat is darker than liver on CT but brighter
    on T1-weighted MR: no monotonic intensity mapping exists, so NCC/MSE cannot work across modalities."""
    ct, ct_lab = small_case.pct.array, small_case.pct_labels.array
    mr, mr_lab = small_case.pmr.array, small_case.pmr_labels.array
    ct_mean = {t: ct[ct_lab == t].mean() for t in (Tissue.FAT, Tissue.LIVER, Tissue.BONE)}
    mr_mean = {t: mr[mr_lab == t].mean() for t in (Tissue.FAT, Tissue.LIVER, Tissue.BONE)}
    assert ct_mean[Tissue.BONE] > ct_mean[Tissue.LIVER] > ct_mean[Tissue.FAT]
    assert mr_mean[Tissue.FAT] > mr_mean[Tissue.BONE]
    assert mr_mean[Tissue.FAT] > mr_mean[Tissue.LIVER]


def test_probe_and_streaks_change_only_the_slices_the_needle_crosses(small_case):
    c = small_case
    assert c.needle is not None and c.probe_mask.array.any()
    changed = np.flatnonzero(np.any(c.ict.array != c.ict_clean.array, axis=(1, 2)))
    assert set(changed) <= set(crossed_slices(c.needle, c.ict.grid))
    k = int(np.flatnonzero(c.probe_mask.array.any(axis=(1, 2)))[0])
    diff = c.ict.array[k] - c.ict_clean.array[k]
    assert diff[c.probe_mask.array[k] > 0].max() > 500.0  # the metal itself is bright
    assert np.abs(diff[c.probe_mask.array[k] == 0]).mean() > 1.0  # streaks spread beyond the needle


def test_probe_can_be_switched_off_giving_ict_equal_to_clean_ict():
    c = generate_case(5, PhantomConfig.tiny().with_(with_probe=False))
    assert c.needle is None and np.array_equal(c.ict.array, c.ict_clean.array)


@pytest.mark.slow
def test_ci_scale_case_has_the_documented_geometry_and_consistent_ground_truth():
    c = generate_case(held_out_seeds(1)[0], PhantomConfig.ci())
    assert c.pct.grid.shape == (80, 96, 96) and c.ict.grid.shape == (66, 96, 96) and c.pmr.grid.shape == (40, 96, 96)
    liver = np.isin(c.ict_labels.array, LIVER_LABELS)
    error = np.linalg.norm(compose(c.pmr_to_pct, c.pct_to_ict).displacement_mm - c.pmr_to_ict.displacement_mm, axis=-1)
    assert error[liver].max() < 0.2
