"""One phantom case: pMR, pCT, iCT (probe + streaks) and clean iCT, their label maps and landmarks, and the
ground-truth displacement fields pMR->pCT, pCT->iCT and pMR->iCT.

The canonical frame is the pCT's physical space. Two known motions relate the images:

* ``T1`` (pCT space -> pMR space): rigid repositioning on another scanner, a breath-hold difference and
  a smooth diffeomorphic deformation;
* ``T2`` (iCT space -> pCT space): another breath-hold, a small repositioning, smooth deformation and the
  push of tissue along the inserted needle.

In our registration convention (fixed grid, x_moving = x_fixed + u(x_fixed)) the ground truths are
pmr_to_pct = T1 - id on the pCT grid, pct_to_ict = T2 - id on the iCT grid and pmr_to_ict = T1 o T2 - id
on the iCT grid (evaluated analytically, not by resampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from ..image import Grid, Image
from ..landmarks import Landmarks
from ..transforms import DisplacementField
from .anatomy import Anatomy, Tissue, sample_anatomy
from .ct import CtAppearance, render_ct, sample_ct_appearance
from .motion import (
    Motion,
    breathing_velocity,
    exponentiate,
    motion_grid,
    needle_push_velocity,
    random_smooth_velocity,
    sample_rigid,
)
from .mr import PROTOCOLS, render_mr
from .probe import Needle, insert_probe


def _centred_grid(shape_xyz: tuple[int, int, int], fov_mm: tuple[float, float, float], center_mm) -> Grid:
    spacing = tuple(f / n for f, n in zip(fov_mm, shape_xyz))
    origin = tuple(c - (n - 1) * s / 2 for c, n, s in zip(center_mm, shape_xyz, spacing))
    return Grid(shape_xyz[::-1], spacing, origin)


@dataclass(frozen=True)
class PhantomConfig:
    """Sizes are voxel counts (x, y, z); fields of view are fixed in mm so anatomy does not depend on size."""

    ct_shape_xyz: tuple[int, int, int] = (96, 96, 80)
    ct_fov_mm: tuple[float, float, float] = (300.0, 300.0, 240.0)
    ict_fov_z_mm: float = 198.0
    ict_center_mm: tuple[float, float, float] = (0.0, 0.0, 12.0)
    mr_shape_xyz: tuple[int, int, int] = (96, 96, 40)
    mr_fov_mm: tuple[float, float, float] = (320.0, 320.0, 200.0)
    mr_center_mm: tuple[float, float, float] = (6.0, -4.0, 15.0)
    mr_weighting: str = "t1"
    pct_noise_hu: float = 10.0
    ict_noise_hu: float = 15.0
    # motions (mm, degrees)
    pmr_rigid_deg: float = 5.0
    pmr_rigid_mm: float = 10.0
    pmr_breathing_mm: tuple[float, float] = (8.0, 16.0)
    pmr_smooth_mm: float = 7.0
    ict_rigid_deg: float = 2.0
    ict_rigid_mm: float = 5.0
    ict_breathing_mm: tuple[float, float] = (4.0, 10.0)
    ict_smooth_mm: float = 5.0
    needle_push_mm: float = 2.5
    breathing_sigma_mm: float = 60.0  # extent of the breathing bump around the liver
    smoothness_mm: float = 25.0  # correlation length of the random smooth velocity
    with_probe: bool = True

    @classmethod
    def ci(cls) -> PhantomConfig:
        """The default CI scale: CT 96x96x80 (3.1 x 3.1 x 3.0 mm), MR 96x96x40 (3.3 x 3.3 x 5.0 mm)."""
        return cls()

    @classmethod
    def small(cls) -> PhantomConfig:
        """A coarse version for tests and ``eval --quick``: CT 64x64x48, MR 64x64x28."""
        return cls(ct_shape_xyz=(64, 64, 48), mr_shape_xyz=(64, 64, 28))

    @classmethod
    def tiny(cls) -> PhantomConfig:
        """The coarsest useful version (unit tests): CT 48x48x40, MR 48x48x20."""
        return cls(ct_shape_xyz=(48, 48, 40), mr_shape_xyz=(48, 48, 20))

    @classmethod
    def large(cls) -> PhantomConfig:
        """A finer version (GPU work): CT 160x160x128 (1.9 mm), MR 160x160x50."""
        return cls(ct_shape_xyz=(160, 160, 128), mr_shape_xyz=(160, 160, 50))

    def with_(self, **changes) -> PhantomConfig:
        return replace(self, **changes)

    def pct_grid(self) -> Grid:
        return _centred_grid(self.ct_shape_xyz, self.ct_fov_mm, (0.0, 0.0, 0.0))

    def ict_grid(self) -> Grid:
        nz = max(8, round(self.ct_shape_xyz[2] * self.ict_fov_z_mm / self.ct_fov_mm[2]))
        spacing_z = self.ct_fov_mm[2] / self.ct_shape_xyz[2]
        return _centred_grid((*self.ct_shape_xyz[:2], nz), (*self.ct_fov_mm[:2], nz * spacing_z), self.ict_center_mm)

    def pmr_grid(self) -> Grid:
        return _centred_grid(self.mr_shape_xyz, self.mr_fov_mm, self.mr_center_mm)


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """Everything one case provides. Images are float32 (CT in HU, MR in arbitrary units 0..~1000);
    label maps are uint8 :class:`Tissue` values; landmarks are in each image's own physical space."""

    seed: int
    config: PhantomConfig
    pmr: Image
    pct: Image
    ict: Image
    ict_clean: Image
    pmr_labels: Image
    pct_labels: Image
    ict_labels: Image
    probe_mask: Image
    pmr_landmarks: Landmarks
    pct_landmarks: Landmarks
    ict_landmarks: Landmarks
    pmr_to_pct: DisplacementField
    pct_to_ict: DisplacementField
    pmr_to_ict: DisplacementField
    needle: Needle | None
    pct_appearance: CtAppearance
    ict_appearance: CtAppearance
    anatomy: Anatomy = field(repr=False)


def _canonical_texture(grid: Grid, rng: np.random.Generator, correlation_mm: float = 5.0) -> Image:
    sigma = [correlation_mm / s for s in grid.spacing_mm[::-1]]
    tex = ndimage.gaussian_filter(rng.normal(size=grid.shape), sigma, mode="wrap")
    return Image((tex / tex.std()).astype(np.float32), grid)


def _sample_texture(texture: Image, canonical_points_mm: np.ndarray) -> np.ndarray:
    idx = texture.grid.physical_to_index(canonical_points_mm)
    coords = np.stack([idx[..., 2], idx[..., 1], idx[..., 0]])
    return ndimage.map_coordinates(texture.array, coords, order=1, mode="mirror").astype(np.float32)


def _place_needle(anatomy: Anatomy, ict_to_pct: Motion, target_ict: np.ndarray, rng: np.random.Generator) -> Needle:
    """A needle from outside the skin on the patient's right/anterior side to the target (iCT space)."""
    azimuth = np.deg2rad(rng.uniform(185.0, 245.0))  # from the target towards -x (right) and -y (anterior)
    tilt = np.deg2rad(rng.uniform(5.0, 20.0)) * rng.choice([-1.0, 1.0])
    outward = np.array([np.cos(azimuth) * np.cos(tilt), np.sin(azimuth) * np.cos(tilt), np.sin(tilt)])
    steps = target_ict + np.arange(2.0, 300.0, 2.0)[:, None] * outward
    labels = anatomy.labels_at(ict_to_pct(steps))
    outside = np.flatnonzero(labels == Tissue.BACKGROUND)
    depth_mm = 2.0 * (outside[0] + 1) if outside.size else 200.0
    entry = target_ict + (depth_mm + 15.0) * outward
    return Needle(tuple(float(v) for v in entry), tuple(float(v) for v in target_ict))


def generate_case(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Deterministic: the same (seed, config) gives bit-identical images, labels, landmarks and fields."""
    config = config or PhantomConfig.ci()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    rng_anatomy, rng_m1, rng_m2, rng_ct, rng_mr, rng_probe, rng_tex = streams
    anatomy = sample_anatomy(rng_anatomy)
    liver_center = np.mean([lobe.center_mm for lobe in anatomy.liver_lobes], axis=0)
    mgrid = motion_grid()

    # T1: pCT space -> pMR space
    breath1 = np.array([rng_m1.uniform(-3, 3), rng_m1.uniform(-4, 4), rng_m1.uniform(*config.pmr_breathing_mm)])
    v1 = breathing_velocity(mgrid, liver_center, breath1, sigma_mm=config.breathing_sigma_mm)
    v1 = v1 + random_smooth_velocity(mgrid, rng_m1, config.pmr_smooth_mm, smoothness_mm=config.smoothness_mm)
    t1 = Motion(exponentiate(DisplacementField(v1.astype(np.float32), mgrid)),
                sample_rigid(rng_m1, config.pmr_rigid_deg, config.pmr_rigid_mm, liver_center))

    # T2: iCT space -> pCT space; the needle is placed with the motion before its own push
    breath2 = np.array([rng_m2.uniform(-2, 2), rng_m2.uniform(-3, 3), -rng_m2.uniform(*config.ict_breathing_mm)])
    v2 = breathing_velocity(mgrid, liver_center, breath2, sigma_mm=config.breathing_sigma_mm)
    v2 = v2 + random_smooth_velocity(mgrid, rng_m2, config.ict_smooth_mm, smoothness_mm=config.smoothness_mm)
    rigid2 = sample_rigid(rng_m2, config.ict_rigid_deg, config.ict_rigid_mm, liver_center)
    needle = None
    if config.with_probe:
        t2_base = Motion(exponentiate(DisplacementField(v2.astype(np.float32), mgrid)), rigid2)
        target = t2_base.inverse(np.asarray(anatomy.tumours[0].center_mm)[None])[0]
        needle = _place_needle(anatomy, t2_base, target, rng_probe)
        v2 = v2 + needle_push_velocity(mgrid, np.asarray(needle.entry_mm), np.asarray(needle.tip_mm),
                                       config.needle_push_mm, sigma_mm=8.0)
    t2 = Motion(exponentiate(DisplacementField(v2.astype(np.float32), mgrid)), rigid2)

    pct_grid, ict_grid, pmr_grid = config.pct_grid(), config.ict_grid(), config.pmr_grid()
    pct_canon = pct_grid.physical_points()
    ict_canon = t2(ict_grid.physical_points())
    pmr_canon = t1.inverse(pmr_grid.physical_points())

    labels = {name: anatomy.labels_at(pts) for name, pts in (("pct", pct_canon), ("ict", ict_canon), ("pmr", pmr_canon))}
    texture = _canonical_texture(pct_grid, rng_tex)

    pct_app = sample_ct_appearance(rng_ct, vessel_enhancement_hu=(50.0, 100.0))
    ict_app = sample_ct_appearance(rng_ct, vessel_enhancement_hu=(10.0, 40.0))
    pct_hu = render_ct(labels["pct"], pct_grid, pct_app, texture.array, rng_ct, config.pct_noise_hu)
    ict_clean_hu = render_ct(labels["ict"], ict_grid, ict_app, _sample_texture(texture, ict_canon), rng_ct,
                             config.ict_noise_hu)
    if needle is not None:
        ict_hu, probe = insert_probe(ict_clean_hu, ict_grid, needle, rng_probe)
    else:
        ict_hu, probe = ict_clean_hu.copy(), np.zeros(ict_grid.shape, dtype=np.uint8)
    mr = render_mr(labels["pmr"], pmr_grid, PROTOCOLS[config.mr_weighting], _sample_texture(texture, pmr_canon), rng_mr)

    names, kinds, canon_points = anatomy.landmarks_mm()
    modality = {"pmr": "MR", "pct": "CT", "ict": "CT"}
    return PhantomCase(
        seed=seed,
        config=config,
        pmr=Image(mr, pmr_grid, {"Modality": modality["pmr"]}),
        pct=Image(pct_hu, pct_grid, {"Modality": "CT"}),
        ict=Image(ict_hu, ict_grid, {"Modality": "CT"}),
        ict_clean=Image(ict_clean_hu, ict_grid, {"Modality": "CT"}),
        pmr_labels=Image(labels["pmr"], pmr_grid),
        pct_labels=Image(labels["pct"], pct_grid),
        ict_labels=Image(labels["ict"], ict_grid),
        probe_mask=Image(probe, ict_grid),
        pmr_landmarks=Landmarks(names, kinds, t1(canon_points)),
        pct_landmarks=Landmarks(names, kinds, canon_points),
        ict_landmarks=Landmarks(names, kinds, t2.inverse(canon_points)),
        pmr_to_pct=t1.field_on(pct_grid),
        pct_to_ict=t2.field_on(ict_grid),
        pmr_to_ict=DisplacementField.from_point_map(ict_grid, lambda x: t1(t2(x))),
        needle=needle,
        pct_appearance=pct_app,
        ict_appearance=ict_app,
        anatomy=anatomy,
    )
