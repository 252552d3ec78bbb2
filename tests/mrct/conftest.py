"""Shared phantom fixtures for the mrct_registration tests (small grids so the default run stays fast)."""

from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
os.environ.setdefault("ANTS_RANDOM_SEED", "20190731")

import pytest  # noqa: E402

from mrct_registration.phantom import PhantomConfig, generate_case, train_seeds  # noqa: E402


@pytest.fixture(scope="session")
def small_case():
    """A 64x64x48 CT / 64x64x28 MR case from the training seed range, with probe."""
    return generate_case(train_seeds(1, start=3)[0], PhantomConfig.small())


@pytest.fixture(scope="session")
def rigid_mr_ct_case():
    """pMR related to pCT by a known rigid motion only (no breathing, no deformation, no probe)."""
    config = PhantomConfig.small().with_(pmr_breathing_mm=(0.0, 0.0), pmr_smooth_mm=0.0, pmr_rigid_deg=6.0,
                                         pmr_rigid_mm=12.0, with_probe=False)
    return generate_case(train_seeds(1, start=11)[0], config)
