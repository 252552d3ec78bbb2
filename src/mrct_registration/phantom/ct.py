"""CT appearance: Hounsfield units per tissue with per-case jitter, smooth texture, blur and quantum noise.

The tumour is only 5-15 HU darker than the liver (the low conspicuity on intra-procedural CT that
motivates MR guidance, Wei et al. 2019, Sec. 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..image import Grid
from .anatomy import Tissue

# (mean HU, +- jitter) per tissue; vessels are given relative to the liver (contrast enhancement)
_BASE_HU = {
    Tissue.BACKGROUND: (-1000.0, 0.0),
    Tissue.FAT: (-100.0, 10.0),
    Tissue.SOFT_TISSUE: (45.0, 8.0),
    Tissue.LIVER: (65.0, 10.0),
    Tissue.SPLEEN: (55.0, 8.0),
    Tissue.KIDNEY: (150.0, 20.0),
    Tissue.BONE: (650.0, 80.0),
    Tissue.GAS: (-850.0, 50.0),
}
_TEXTURE_HU = {Tissue.FAT: 6.0, Tissue.SOFT_TISSUE: 8.0, Tissue.LIVER: 6.0, Tissue.TUMOUR: 8.0, Tissue.SPLEEN: 6.0,
               Tissue.KIDNEY: 8.0, Tissue.BONE: 60.0}
HU_MIN, HU_MAX = -1024.0, 3071.0  # the range a 12-bit scanner stores


@dataclass(frozen=True)
class CtAppearance:
    """HU of each Tissue (indexed by label value) for one scan."""

    hu_by_tissue: tuple[float, ...]

    @property
    def tumour_contrast_hu(self) -> float:
        return self.hu_by_tissue[Tissue.TUMOUR] - self.hu_by_tissue[Tissue.LIVER]


def sample_ct_appearance(rng: np.random.Generator, vessel_enhancement_hu: tuple[float, float]) -> CtAppearance:
    """One scan's HU table. ``vessel_enhancement_hu``: range of vessel minus liver HU (contrast phase)."""
    hu = np.zeros(len(Tissue))
    for tissue, (mean, jitter) in _BASE_HU.items():
        hu[tissue] = mean + rng.uniform(-jitter, jitter)
    hu[Tissue.TUMOUR] = hu[Tissue.LIVER] - rng.uniform(5.0, 15.0)
    hu[Tissue.VESSEL] = hu[Tissue.LIVER] + rng.uniform(*vessel_enhancement_hu)
    return CtAppearance(tuple(float(v) for v in hu))


def render_ct(labels: np.ndarray, grid: Grid, appearance: CtAppearance, texture: np.ndarray,
              rng: np.random.Generator, noise_hu: float, blur_mm: float = 2.0) -> np.ndarray:
    """HU volume (float32, shape of ``labels``): tissue HU + texture, blurred (scanner PSF), plus noise.

    texture: unit-variance smooth field on the same grid, sampled from the case's canonical texture so
    that the same tissue carries the same pattern in every scan.
    """
    lut = np.asarray(appearance.hu_by_tissue, dtype=np.float32)
    tex_lut = np.zeros(len(Tissue), dtype=np.float32)
    for tissue, amp in _TEXTURE_HU.items():
        tex_lut[tissue] = amp
    hu = lut[labels] + tex_lut[labels] * texture
    sigma_vox = [blur_mm / 2.355 / s for s in grid.spacing_mm[::-1]]
    hu = ndimage.gaussian_filter(hu, sigma_vox, mode="nearest")
    hu = hu + rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    return np.clip(hu, HU_MIN, HU_MAX).astype(np.float32)
