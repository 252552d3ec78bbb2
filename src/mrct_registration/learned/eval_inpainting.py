"""How well each inpainting method restores the probe hole of held-out iCT slices (the must-show of issue 9).

For every axial iCT slice the needle crosses, the hole is found as at test time (:func:`metal_hole_mask`,
no ground truth), filled by each method, and compared with the *clean* iCT of the same case (the phantom
renders the iCT with and without the probe, so the truth under the needle is known):

* ``mae_hu``: mean absolute error (HU) over the hole pixels;
* ``ssim``: structural similarity (``skimage.metrics.structural_similarity``, 7x7 window) over a window
  around the hole (its bounding box grown by ``margin_px``), both images clipped to the abdominal display
  window (level 40 HU, width 400 HU) with ``data_range`` = 400 HU, so that the needle's 3000 HU do not
  flatten the score of every method to about 1;
* ``seconds``: the wall time of the method's call on that slice.

Methods: ``network`` (the partial-convolution U-Net), ``biharmonic`` and ``li-mar`` (the classical
baselines), and ``streaked`` (the iCT left as it is, the floor every method should beat).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from ..errors import GeometryError, SeedRangeError
from ..phantom import PhantomConfig, generate_case
from ..phantom.seeds import HELD_OUT_SEEDS
from .inpaint_baselines import INPAINTING_BASELINES, InpaintFn
from .inpaint_masks import metal_hole_mask
from .inpainting import network_inpainter
from .partial_conv import PartialConvUNet2d

ABDOMEN_WINDOW_HU = (-160.0, 240.0)  # level 40, width 400
SSIM_WIN_PX = 7
METHOD_ORDER = ("network", "biharmonic", "li-mar", "streaked")


def leave_streaked(slice_hu: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The no-op inpainter: the streaked iCT slice as it is (float32 HU)."""
    return np.asarray(slice_hu, dtype=np.float32).copy()


@dataclass(frozen=True)
class InpaintScore:
    """One method on one iCT slice: errors against the clean iCT, in the hole (MAE) and around it (SSIM)."""

    seed: int
    slice_index: int
    method: str
    hole_px: int
    mae_hu: float
    ssim: float
    seconds: float


def ssim_window(hole: np.ndarray, margin_px: int) -> tuple[slice, slice]:
    """The hole's bounding box grown by ``margin_px`` and to at least the SSIM window, inside the slice."""
    ny, nx = hole.shape
    if min(ny, nx) < SSIM_WIN_PX:
        raise GeometryError(f"SSIM needs slices of at least {SSIM_WIN_PX} pixels a side, got {hole.shape}")
    ys, xs = np.nonzero(hole)
    window = []
    for lo, hi, n in ((ys.min(), ys.max() + 1, ny), (xs.min(), xs.max() + 1, nx)):
        lo, hi = max(0, lo - margin_px), min(n, hi + margin_px)
        short = SSIM_WIN_PX - (hi - lo)
        if short > 0:  # grow a thin window symmetrically, then shift it back inside the slice
            lo, hi = lo - (short + 1) // 2, hi + short // 2
            lo, hi = max(0, lo - max(0, hi - n)), min(n, hi + max(0, -lo))
        window.append(slice(int(lo), int(hi)))
    return window[0], window[1]


def score_fill(filled_hu: np.ndarray, clean_hu: np.ndarray, hole: np.ndarray, margin_px: int = 8
               ) -> tuple[float, float]:
    """(MAE in the hole in HU, SSIM on the windowed images around the hole) of one filled slice."""
    if filled_hu.shape != clean_hu.shape or hole.shape != clean_hu.shape or not hole.any():
        raise GeometryError(f"need a filled slice, a clean slice and a non-empty hole of one shape, got "
                            f"{filled_hu.shape}, {clean_hu.shape}, {hole.shape} ({int(hole.sum())} hole px)")
    mae = float(np.abs(filled_hu[hole].astype(np.float64) - clean_hu[hole]).mean())
    rows, cols = ssim_window(hole, margin_px)
    lo, hi = ABDOMEN_WINDOW_HU
    ssim = structural_similarity(np.clip(filled_hu[rows, cols], lo, hi).astype(np.float64),
                                 np.clip(clean_hu[rows, cols], lo, hi).astype(np.float64),
                                 win_size=SSIM_WIN_PX, data_range=hi - lo)
    return mae, float(ssim)


def needle_slices(probe_mask: np.ndarray) -> np.ndarray:
    """Axial slice indices (k) of an iCT volume (nz, ny, nx) that the simulated needle crosses."""
    return np.flatnonzero(np.asarray(probe_mask).any(axis=(1, 2)))


def evaluate_inpainting(net: PartialConvUNet2d, seeds: list[int], phantom: PhantomConfig | None = None,
                        margin_px: int = 8) -> list[InpaintScore]:
    """Score the network and the baselines on every needle slice of the held-out phantoms ``seeds``.

    Slices the needle crosses whose metal threshold finds nothing (partial volume at the needle's ends)
    are skipped: there is no hole to fill. Raises :class:`SeedRangeError` for a seed outside the
    held-out range, so that no training or validation phantom is ever scored here.
    """
    outside = [s for s in seeds if s not in HELD_OUT_SEEDS]
    if not seeds or outside:
        raise SeedRangeError(f"inpainting is scored on held-out seeds only ({HELD_OUT_SEEDS.start}.."
                             f"{HELD_OUT_SEEDS.stop - 1}); got {outside or list(seeds)}")
    methods: dict[str, InpaintFn] = {"network": network_inpainter(net), **INPAINTING_BASELINES,
                                     "streaked": leave_streaked}
    phantom = phantom or PhantomConfig.ci()
    scores: list[InpaintScore] = []
    for seed in seeds:
        case = generate_case(seed, phantom)
        ict, clean = case.ict.array, case.ict_clean.array
        for k in needle_slices(case.probe_mask.array):
            hole = metal_hole_mask(ict[k])
            if not hole.any():
                continue
            for name, inpaint in methods.items():
                start = time.perf_counter()
                filled = inpaint(ict[k], hole)
                seconds = time.perf_counter() - start
                mae, ssim = score_fill(filled, clean[k], hole, margin_px)
                scores.append(InpaintScore(seed, int(k), name, int(hole.sum()), mae, ssim, seconds))
    return scores


@dataclass(frozen=True)
class InpaintSummary:
    """A method's scores over all slices: mean and standard deviation of MAE and SSIM, mean time."""

    method: str
    n_slices: int
    mae_hu_mean: float
    mae_hu_std: float
    ssim_mean: float
    ssim_std: float
    ms_per_slice: float


def summarise_inpainting(scores: list[InpaintScore]) -> list[InpaintSummary]:
    """One summary per method, in :data:`METHOD_ORDER` (then any other method in order of appearance)."""
    names = list(dict.fromkeys(s.method for s in scores))
    names.sort(key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    out = []
    for name in names:
        rows = [s for s in scores if s.method == name]
        mae = np.array([s.mae_hu for s in rows])
        ssim = np.array([s.ssim for s in rows])
        out.append(InpaintSummary(name, len(rows), float(mae.mean()), float(mae.std()), float(ssim.mean()),
                                  float(ssim.std()), 1e3 * float(np.mean([s.seconds for s in rows]))))
    return out


def inpainting_table_markdown(scores: list[InpaintScore]) -> str:
    """A Markdown table of :func:`summarise_inpainting`, with how the figures were measured."""
    seeds = sorted({s.seed for s in scores})
    lo, hi = ABDOMEN_WINDOW_HU
    lines = [
        f"Inpainting of the probe hole on {len(seeds)} held-out phantom(s) (seeds {seeds[0]}..{seeds[-1]}), "
        "against the clean iCT. MAE: mean |error| over the metal-threshold hole (HU). SSIM: over a window "
        f"around the hole, images clipped to [{lo:.0f}, {hi:.0f}] HU, data_range {hi - lo:.0f} HU.",
        "",
        "| method | slices | MAE in hole (HU) | SSIM around hole | time per slice (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summarise_inpainting(scores):
        lines.append(f"| {s.method} | {s.n_slices} | {s.mae_hu_mean:.1f} ± {s.mae_hu_std:.1f} | "
                     f"{s.ssim_mean:.3f} ± {s.ssim_std:.3f} | {s.ms_per_slice:.1f} |")
    return "\n".join(lines) + "\n"
