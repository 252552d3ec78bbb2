"""The ablation probe in the intra-procedural CT and its metal artifacts, simulated in the sinogram.

Per axial slice that the needle crosses: attenuation mu = mu_water (1 + HU/1000) with the needle's partial
volume added, forward projection (``skimage.transform.radon``), beam hardening of the metal path (a
concave, sub-linear line integral), photon starvation (Poisson counts at N0 exp(-p), at least one
photon) and filtered back-projection (``iradon``, ramp filter). The with-needle counts are drawn by
binomial thinning of the without-needle counts, so both sinograms share their noise on every ray that
misses the needle; the artifact image FBP(with needle) - FBP(without needle) is added to the clean slice
(whose quantum noise is simulated in the image domain, like every other slice). The clean iCT is thus the
same pipeline with the needle taken out, and slices the needle does not touch are identical in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.transform import iradon, radon

from ..errors import GeometryError
from ..image import Grid
from .ct import HU_MAX, HU_MIN

MU_WATER_PER_MM = 0.0192  # linear attenuation of water near 70 keV


@dataclass(frozen=True)
class Needle:
    """A straight cylinder from ``entry_mm`` (outside the skin) to ``tip_mm`` (in the target), in iCT space."""

    entry_mm: tuple[float, float, float]
    tip_mm: tuple[float, float, float]
    radius_mm: float = 1.2
    mu_per_mm: float = 0.5  # stainless steel: iron is about 25x water at 70 keV

    def distance_mm(self, points_mm: np.ndarray) -> np.ndarray:
        a, b = np.asarray(self.entry_mm), np.asarray(self.tip_mm)
        ab = b - a
        t = np.clip(((points_mm - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        return np.linalg.norm(points_mm - (a + t[..., None] * ab), axis=-1)


@dataclass(frozen=True)
class ScannerModel:
    photons_per_ray: float = 2.0e4
    beam_hardening: float = 0.6  # curvature of the metal line integral, p_eff = log(1 + b p) / b
    n_views: int = 180


def needle_fraction(needle: Needle, grid: Grid, slice_index: int, supersample: int = 4) -> np.ndarray:
    """Fraction (ny, nx) of each voxel of axial slice ``slice_index`` inside the needle (supersampled)."""
    s = supersample
    offsets = (np.arange(s) + 0.5) / s - 0.5
    j, i = np.meshgrid(np.arange(grid.shape[1]), np.arange(grid.shape[2]), indexing="ij")
    inside = np.zeros(grid.shape[1:], dtype=np.float64)
    for dk in offsets[:: max(1, s // 2)]:
        for dj in offsets:
            for di in offsets:
                idx = np.stack([i + di, j + dj, np.full_like(i, slice_index, dtype=float) + dk], axis=-1)
                inside += needle.distance_mm(grid.index_to_physical(idx)) <= needle.radius_mm
    return inside / (len(offsets[:: max(1, s // 2)]) * s * s)


def crossed_slices(needle: Needle, grid: Grid) -> list[int]:
    """Axial slice indices whose voxels the needle touches."""
    a, b = grid.physical_to_index(np.asarray([needle.entry_mm, needle.tip_mm]))
    margin = needle.radius_mm / grid.spacing_mm[2] + 0.5
    lo, hi = min(a[2], b[2]) - margin, max(a[2], b[2]) + margin
    return [k for k in range(grid.shape[0]) if lo <= k <= hi]


def metal_artifact_slice(hu_slice: np.ndarray, fraction: np.ndarray, pixel_mm: float, rng: np.random.Generator,
                         needle: Needle, scanner: ScannerModel) -> np.ndarray:
    """HU difference (ny, nx) that the needle makes in one slice: the needle itself, streaks, starvation noise."""
    if hu_slice.shape[0] != hu_slice.shape[1]:
        raise GeometryError(f"the CT slice must be square for the parallel-beam simulation, got {hu_slice.shape}")
    n = hu_slice.shape[0]
    theta = np.linspace(0.0, 180.0, scanner.n_views, endpoint=False)
    mu_tissue = np.clip(MU_WATER_PER_MM * (1.0 + hu_slice / 1000.0), 0.0, None) * pixel_mm  # per pixel
    p_tissue = radon(mu_tissue, theta=theta, circle=False)
    p_metal = radon(fraction * needle.mu_per_mm * pixel_mm, theta=theta, circle=False)
    b = scanner.beam_hardening
    metal_eff = np.log1p(b * p_metal) / b  # what a polychromatic beam "sees" of the metal: sub-linear in p
    n0 = scanner.photons_per_ray
    counts_without = rng.poisson(n0 * np.exp(-p_tissue))
    # binomial thinning: each photon that crosses the tissue survives the metal with probability exp(-metal_eff),
    # so the with-needle counts are Poisson(n0 exp(-p_tissue - metal_eff)) and identical on rays that miss it
    counts_with = rng.binomial(counts_without, np.exp(-metal_eff))
    p_with = -np.log(np.maximum(counts_with, 1) / n0)  # photon starvation: at least one photon is recorded
    p_without = -np.log(np.maximum(counts_without, 1) / n0)
    mu_with = iradon(p_with, theta=theta, output_size=n, circle=False, filter_name="ramp")
    mu_without = iradon(p_without, theta=theta, output_size=n, circle=False, filter_name="ramp")
    return ((mu_with - mu_without) / pixel_mm / MU_WATER_PER_MM * 1000.0).astype(np.float32)


def insert_probe(clean_hu: np.ndarray, grid: Grid, needle: Needle, rng: np.random.Generator,
                 scanner: ScannerModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(iCT with probe and streaks in HU, probe mask) from the clean iCT; only crossed slices are simulated."""
    scanner = scanner or ScannerModel()
    if not np.isclose(grid.spacing_mm[0], grid.spacing_mm[1]):
        raise GeometryError(f"in-plane spacing must be isotropic for the slice simulation, got {grid.spacing_mm[:2]}")
    out = clean_hu.copy()
    mask = np.zeros(grid.shape, dtype=np.uint8)
    for k in crossed_slices(needle, grid):
        fraction = needle_fraction(needle, grid, k)
        if not fraction.any():
            continue
        mask[k] = fraction > 0
        out[k] = clean_hu[k] + metal_artifact_slice(clean_hu[k], fraction, grid.spacing_mm[0], rng, needle, scanner)
    return np.clip(out, HU_MIN, HU_MAX).astype(np.float32), mask
