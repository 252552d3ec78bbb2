"""Shared phantom fixtures for the mrct_registration tests (small grids so the default run stays fast)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Two ITK threads keep the in-process registrations fast; ANTs results are then not bit-repeatable, which no
# test relies on (test_cli.py checks the one-thread repeatability in subprocesses). The ANTs seed is set
# in one place, mrct_registration.baselines.ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

from mrct_registration.phantom import PhantomConfig, generate_case, train_seeds  # noqa: E402

# Nothing under .hypothesis/ in the working directory: no example database, and hypothesis' other caches
# (e.g. the constants it collects from source files, written whatever the database) go to the temp folder.
settings.register_profile("mrct", database=None)
settings.load_profile("mrct")
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mrct-hypothesis")


@pytest.fixture(scope="session")
def small_case():
    """A 64x64x48 CT / 64x64x28 MR case from the training seed range, with probe."""
    return generate_case(train_seeds(1, start=3)[0], PhantomConfig.small())


@pytest.fixture(scope="session")
def rigid_mr_ct_case():
    """pMR related to pCT by a known rigid motion (<= 6 deg, <= 12 mm) and no random deformation or probe.

    Not purely rigid: ``pmr_breathing_mm=(0, 0)`` zeroes only the S-I component of the breath-hold bump, which
    still moves the liver by up to 3 mm (L-R) and 4 mm (A-P) around its centre.
    """
    config = PhantomConfig.small().with_(pmr_breathing_mm=(0.0, 0.0), pmr_smooth_mm=0.0, pmr_rigid_deg=6.0,
                                         pmr_rigid_mm=12.0, with_probe=False)
    return generate_case(train_seeds(1, start=11)[0], config)
