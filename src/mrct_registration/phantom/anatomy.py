"""Analytic abdominal anatomy: a per-case random body evaluated at arbitrary physical points.

The anatomy lives in the *canonical* frame, which is the pCT's physical space (mm, LPS, body axis along
z, centred near the origin). Every image of a case samples the same analytic shapes at its own voxel
centres mapped into the canonical frame, so labels and landmarks are exact in every image, never
interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ..errors import GeometryError


class Tissue(IntEnum):
    """Label values of every phantom label map."""

    BACKGROUND = 0
    FAT = 1
    SOFT_TISSUE = 2  # muscle, bowel and everything not modelled separately
    LIVER = 3
    TUMOUR = 4
    VESSEL = 5  # hepatic/portal vessels inside the liver
    SPLEEN = 6
    KIDNEY = 7
    BONE = 8
    GAS = 9


LIVER_LABELS = (Tissue.LIVER, Tissue.TUMOUR, Tissue.VESSEL)  # the liver as an organ, for Dice and HD95


@dataclass(frozen=True)
class Ellipsoid:
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        q = (points_mm - np.asarray(self.center_mm)) / np.asarray(self.semi_axes_mm)
        return np.einsum("...i,...i->...", q, q) <= 1.0


@dataclass(frozen=True)
class VesselSegment:
    start_mm: tuple[float, float, float]
    end_mm: tuple[float, float, float]
    radius_mm: float

    def distance_mm(self, points_mm: np.ndarray) -> np.ndarray:
        a, b = np.asarray(self.start_mm), np.asarray(self.end_mm)
        ab = b - a
        t = np.clip(((points_mm - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        return np.linalg.norm(points_mm - (a + t[..., None] * ab), axis=-1)


@dataclass(frozen=True)
class SmoothWarp:
    """w(p) = sum_m A_m sin(k_m . p + phase_m): a smooth displacement (mm) that makes the liver irregular."""

    amplitudes_mm: np.ndarray  # (M, 3)
    wavevectors_per_mm: np.ndarray  # (M, 3)
    phases: np.ndarray  # (M,)

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        s = np.sin(points_mm @ self.wavevectors_per_mm.T + self.phases)  # (..., M)
        return s @ self.amplitudes_mm


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One random abdomen. ``labels_at`` maps physical points (N, 3) in the canonical frame to Tissue labels."""

    body_semi_axes_mm: tuple[float, float]
    fat_thickness_mm: float
    liver_lobes: tuple[Ellipsoid, ...]
    liver_warp: SmoothWarp
    tumours: tuple[Ellipsoid, ...]
    vessels: tuple[VesselSegment, ...]
    bifurcations_mm: np.ndarray  # (B, 3)
    spleen: Ellipsoid
    kidneys: tuple[Ellipsoid, ...]
    spine_center_mm: tuple[float, float]
    spine_radius_mm: float
    rib_levels_mm: tuple[float, ...]
    gas: Ellipsoid | None

    # -- primitives -----------------------------------------------------------------------------------------

    def _ellipse_q(self, points_mm: np.ndarray, shrink_mm: float) -> np.ndarray:
        # the trunk widens towards the lower ribs and flattens upwards, so it is no cylinder along z
        # (a cylinder would make z-translations ambiguous for any registration)
        ax, ay = self.body_semi_axes_mm
        z = np.clip(points_mm[..., 2], -150.0, 150.0) / 120.0
        ax_z = ax * (1.0 + 0.06 * z - 0.05 * z**2)
        ay_z = ay * (1.0 - 0.05 * z)
        return (points_mm[..., 0] / (ax_z - shrink_mm)) ** 2 + (points_mm[..., 1] / (ay_z - shrink_mm)) ** 2

    def in_body(self, points_mm: np.ndarray) -> np.ndarray:
        return self._ellipse_q(points_mm, 0.0) <= 1.0

    def in_liver(self, points_mm: np.ndarray) -> np.ndarray:
        warped = points_mm + self.liver_warp(points_mm)
        inside = np.zeros(points_mm.shape[:-1], dtype=bool)
        for lobe in self.liver_lobes:
            inside |= lobe.contains(warped)
        # the liver stays inside the rib cage: its boundary lies fat + 16 mm under the skin (ribs at fat + 3..11 mm)
        return inside & (self._ellipse_q(points_mm, self.fat_thickness_mm + 16.0) <= 1.0)

    def _in_ribs(self, points_mm: np.ndarray) -> np.ndarray:
        wall = self.fat_thickness_mm
        outer = self._ellipse_q(points_mm, wall + 3.0) <= 1.0
        inner = self._ellipse_q(points_mm, wall + 11.0) <= 1.0
        ring = outer & ~inner
        # ribs slope downwards anteriorly and are absent in front of the sternum region (|x| small, y < 0)
        lateral = ~((np.abs(points_mm[..., 0]) < 35.0) & (points_mm[..., 1] < 0.0))
        hit = np.zeros_like(ring)
        for z0 in self.rib_levels_mm:
            z_rib = z0 + 0.25 * points_mm[..., 1]
            hit |= np.abs(points_mm[..., 2] - z_rib) <= 4.5
        return ring & lateral & hit

    # -- labels ---------------------------------------------------------------------------------------------

    def labels_at(self, points_mm: np.ndarray, chunk: int = 262144) -> np.ndarray:
        """Tissue label (uint8) of each physical point; ``points_mm`` has shape (..., 3) in mm."""
        points_mm = np.asarray(points_mm, dtype=np.float64)
        if points_mm.shape[-1] != 3:
            raise GeometryError(f"points must have shape (..., 3), got {points_mm.shape}")
        flat = points_mm.reshape(-1, 3)
        out = np.empty(flat.shape[0], dtype=np.uint8)
        for start in range(0, flat.shape[0], chunk):
            out[start : start + chunk] = self._labels_flat(flat[start : start + chunk])
        return out.reshape(points_mm.shape[:-1])

    def _labels_flat(self, p: np.ndarray) -> np.ndarray:
        lab = np.full(p.shape[0], Tissue.BACKGROUND, dtype=np.uint8)
        body = self.in_body(p)
        lab[body] = Tissue.SOFT_TISSUE
        lab[body & (self._ellipse_q(p, self.fat_thickness_mm) > 1.0)] = Tissue.FAT
        idx = np.flatnonzero(body)
        q = p[idx]
        sub = lab[idx]
        for kidney in self.kidneys:
            sub[kidney.contains(q)] = Tissue.KIDNEY
        sub[self.spleen.contains(q)] = Tissue.SPLEEN
        if self.gas is not None:
            sub[self.gas.contains(q)] = Tissue.GAS
        liver = self.in_liver(q)
        sub[liver] = Tissue.LIVER
        li = np.flatnonzero(liver)
        if li.size:
            ql = q[li]
            vessel = np.zeros(li.size, dtype=bool)
            for seg in self.vessels:
                vessel |= seg.distance_mm(ql) <= seg.radius_mm
            tumour = np.zeros(li.size, dtype=bool)
            for t in self.tumours:
                tumour |= t.contains(ql)
            liver_sub = sub[li]
            liver_sub[vessel] = Tissue.VESSEL
            liver_sub[tumour] = Tissue.TUMOUR
            sub[li] = liver_sub
        sx, sy = self.spine_center_mm
        spine = (q[:, 0] - sx) ** 2 + (q[:, 1] - sy) ** 2 <= self.spine_radius_mm**2
        sub[spine | self._in_ribs(q)] = Tissue.BONE
        lab[idx] = sub
        return lab

    # -- landmarks ------------------------------------------------------------------------------------------

    def landmarks_mm(self) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
        """(names, kinds, points (N, 3) mm): tumour centroids then vessel bifurcations, canonical frame."""
        names = tuple(f"tumour_{i}" for i in range(len(self.tumours))) + tuple(
            f"bifurcation_{i}" for i in range(len(self.bifurcations_mm))
        )
        kinds = ("tumour_centroid",) * len(self.tumours) + ("vessel_bifurcation",) * len(self.bifurcations_mm)
        points = np.concatenate([np.asarray([t.center_mm for t in self.tumours]).reshape(-1, 3), self.bifurcations_mm])
        return names, kinds, points


# ---------------------------------------------------------------------------------------------- sampling


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotate_towards(direction: np.ndarray, angle_rad: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate ``direction`` by ``angle_rad`` about a random axis perpendicular to it."""
    perp = _unit(np.cross(direction, _unit(rng.normal(size=3))))
    return _unit(np.cos(angle_rad) * direction + np.sin(angle_rad) * perp)


def _grow_vessel_tree(anatomy_liver, rng: np.random.Generator, depth: int):
    """A binary tree of tubes from the liver hilum; every inner node is a bifurcation landmark."""
    segments: list[VesselSegment] = []
    bifurcations: list[np.ndarray] = []
    hilum = np.array([-40.0, 5.0, 15.0]) + rng.uniform(-5, 5, size=3)
    trunk_start = hilum + np.array([25.0, 10.0, -35.0])
    segments.append(VesselSegment(tuple(trunk_start), tuple(hilum), 5.5))
    frontier = [(hilum, _unit(np.array([-1.0, -0.2, 0.6]) + rng.normal(0, 0.15, 3)), 36.0, 4.5, 0)]
    while frontier:
        node, direction, length, radius, level = frontier.pop(0)
        if level >= depth:
            continue
        # only nodes deep enough inside the liver become bifurcations (so their label neighbourhood is liver)
        children = []
        for sign in (+1, -1):
            for _attempt in range(12):
                d = _rotate_towards(direction, sign * rng.uniform(0.35, 0.7), rng)
                length_i = length * rng.uniform(0.8, 1.1)
                end = node + length_i * d
                probe = node + np.linspace(0.2, 1.0, 6)[:, None] * (end - node)
                if anatomy_liver(probe).all() and anatomy_liver(end + 8.0 * d[None]).all():
                    children.append((end, d, length_i))
                    break
        if len(children) < 2:
            continue
        bifurcations.append(node)
        for end, d, length_i in children:
            segments.append(VesselSegment(tuple(node), tuple(end), radius))
            frontier.append((end, d, length_i * 0.8, radius * 0.72, level + 1))
    return tuple(segments), np.asarray(bifurcations).reshape(-1, 3)


def sample_anatomy(rng: np.random.Generator, n_tumours: int | None = None) -> Anatomy:
    """Draw one abdomen: body, fat layer, liver (warped ellipsoid union), vessel tree, 1-3 tumours, spleen,
    kidneys, spine, ribs and (sometimes) bowel gas. Deterministic given ``rng``'s state."""
    ax, ay = 132.0 + rng.uniform(-8, 8), 98.0 + rng.uniform(-6, 6)
    fat = rng.uniform(10.0, 18.0)
    j = lambda s: rng.uniform(-s, s, size=3)  # noqa: E731 - a jitter shorthand
    lobes = (
        Ellipsoid(tuple(np.array([-55.0, -5.0, 25.0]) + j(5)), tuple(np.array([58.0, 62.0, 62.0]) + j(5))),
        Ellipsoid(tuple(np.array([5.0, -30.0, 45.0]) + j(5)), tuple(np.array([55.0, 32.0, 32.0]) + j(4))),
        Ellipsoid(tuple(np.array([-68.0, 5.0, -20.0]) + j(5)), tuple(np.array([32.0, 42.0, 40.0]) + j(4))),
    )
    m = 6
    k_dir = np.stack([_unit(v) for v in rng.normal(size=(m, 3))])
    warp = SmoothWarp(
        amplitudes_mm=rng.uniform(-6.0, 6.0, size=(m, 3)),
        wavevectors_per_mm=k_dir * (2 * np.pi / rng.uniform(90.0, 180.0, size=(m, 1))),
        phases=rng.uniform(0, 2 * np.pi, size=m),
    )
    # the body and liver alone, so that vessels and tumours can be grown and placed inside the liver
    partial = Anatomy((ax, ay), fat, lobes, warp, (), (), np.zeros((0, 3)), Ellipsoid((0, 0, 0), (1, 1, 1)), (),
                      (0.0, 0.0), 1.0, (), None)
    vessels, bifurcations = _grow_vessel_tree(partial.in_liver, rng, depth=3)
    tumours: list[Ellipsoid] = []
    n_tumours = int(rng.integers(1, 4)) if n_tumours is None else n_tumours
    for _ in range(400):
        if len(tumours) == n_tumours:
            break
        semi = rng.uniform(7.0, 14.0, size=3)
        center = np.array([-55.0, -5.0, 20.0]) + rng.uniform([-40, -40, -45], [40, 40, 45])
        shell = center + semi.max() * 1.4 * np.concatenate([np.eye(3), -np.eye(3)])
        if not partial.in_liver(np.vstack([center, shell])).all():
            continue
        if len(bifurcations) and np.min(np.linalg.norm(bifurcations - center, axis=1)) < semi.max() + 10.0:
            continue
        if any(np.linalg.norm(center - np.asarray(t.center_mm)) < semi.max() + max(t.semi_axes_mm) + 6 for t in tumours):
            continue
        tumours.append(Ellipsoid(tuple(center), tuple(semi)))
    if len(tumours) < max(1, n_tumours):
        raise GeometryError("could not place the tumours inside the liver; try another seed")
    wall = fat + 14.0
    spleen = Ellipsoid(tuple(np.array([ax - wall - 30.0, 35.0, 35.0]) + j(5)), tuple(np.array([24.0, 40.0, 48.0]) + j(4)))
    kidneys = tuple(
        Ellipsoid(tuple(np.array([s * 62.0, ay * 0.5, -45.0]) + j(5)), tuple(np.array([24.0, 20.0, 48.0]) + j(3)))
        for s in (-1.0, 1.0)
    )
    spine_center = (rng.uniform(-3, 3), ay - fat - 32.0 + rng.uniform(-3, 3))
    # rib levels with irregular gaps: equally spaced ribs would alias registrations by one rib period
    ribs = tuple(float(z) for z in np.cumsum(rng.uniform(18.0, 34.0, size=5)) - 30.0)
    gas = (
        Ellipsoid(tuple(np.array([45.0, -40.0, 20.0]) + j(8)), tuple(np.array([22.0, 16.0, 18.0]) + j(4)))
        if rng.random() < 0.6
        else None
    )
    return Anatomy((ax, ay), fat, lobes, warp, tuple(tumours), vessels, bifurcations, spleen, kidneys,
                   spine_center, rng.uniform(14.0, 18.0), ribs, gas)
