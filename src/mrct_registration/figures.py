"""Figures of the evaluation: per-case overlay/checkerboard PNGs and per-method box plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .image import Image  # noqa: E402
from .phantom import LIVER_LABELS, Tissue  # noqa: E402


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def _window_ct(a: np.ndarray) -> np.ndarray:
    return np.clip((a + 160.0) / 400.0, 0, 1)  # abdominal window W 400 / L 40


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate 2D tiles of two same-shaped slices."""
    ny, nx = a.shape
    yy, xx = np.meshgrid(np.arange(ny) * tiles // ny, np.arange(nx) * tiles // nx, indexing="ij")
    return np.where((yy + xx) % 2 == 0, a, b)


def case_figure(fixed: Image, warped: Image, fixed_labels: Image, warped_labels: Image, path: Path, title: str) -> None:
    """Axial slice through the tumour: fixed with liver/tumour contours (fixed = green/cyan, warped = red/yellow),
    warped moving image, and a checkerboard of the two."""
    tumour = np.argwhere(fixed_labels.array == Tissue.TUMOUR)
    k = int(np.median(tumour[:, 0])) if tumour.size else fixed.grid.shape[0] // 2
    f = _window_ct(fixed.array[k]) if fixed.meta.get("Modality") == "CT" else _normalise(fixed.array[k])
    w = _window_ct(warped.array[k]) if warped.meta.get("Modality") == "CT" else _normalise(warped.array[k])
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), dpi=70)
    axes[0].imshow(f, cmap="gray")
    for labels, colours in ((fixed_labels, ("lime", "cyan")), (warped_labels, ("red", "yellow"))):
        axes[0].contour(np.isin(labels.array[k], LIVER_LABELS), levels=[0.5], colors=colours[0], linewidths=0.8)
        axes[0].contour(labels.array[k] == Tissue.TUMOUR, levels=[0.5], colors=colours[1], linewidths=0.8)
    axes[0].set_title("fixed + contours")
    axes[1].imshow(w, cmap="gray")
    axes[1].set_title("warped moving")
    axes[2].imshow(checkerboard(f, w), cmap="gray")
    axes[2].set_title("checkerboard")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def box_plots(per_case: pd.DataFrame, path: Path) -> None:
    metrics = [("liver_dice", "liver Dice"), ("tre_tumour_mm", "tumour TRE (mm)"),
               ("tre_bifurcation_mm", "bifurcation TRE (mm)"), ("total_s", "run time (s)")]
    methods = list(dict.fromkeys(per_case["method"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), dpi=70)
    for ax, (col, label) in zip(axes, metrics):
        data = [per_case.loc[per_case["method"] == m, col].dropna().to_numpy() for m in methods]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def phantom_figure(case, path: Path) -> None:
    """One case at a glance: pMR and pCT through the first tumour, iCT / clean iCT / their difference through the
    needle tip, and the iCT labels."""
    from .phantom.probe import crossed_slices

    def slice_at(image: Image, point_mm: np.ndarray) -> int:
        k = int(round(image.grid.physical_to_index(point_mm)[2]))
        return int(np.clip(k, 0, image.grid.shape[0] - 1))

    k_mr = slice_at(case.pmr, case.pmr_landmarks.points_mm[0])
    k_ct = slice_at(case.pct, case.pct_landmarks.points_mm[0])
    if case.needle is not None:
        crossed = crossed_slices(case.needle, case.ict.grid)
        k_i = max(crossed, key=lambda k: int(case.probe_mask.array[k].sum())) if crossed else case.ict.grid.shape[0] // 2
    else:
        k_i = slice_at(case.ict, case.ict_landmarks.points_mm[0])
    panels = [
        (_normalise(case.pmr.array[k_mr]), "gray", f"pMR ({case.config.mr_weighting.upper()}w)"),
        (_window_ct(case.pct.array[k_ct]), "gray", "pCT"),
        (_window_ct(case.ict.array[k_i]), "gray", "iCT with probe"),
        (_window_ct(case.ict_clean.array[k_i]), "gray", "clean iCT (ground truth)"),
        (np.clip(case.ict.array[k_i] - case.ict_clean.array[k_i], -300, 300), "RdBu_r", "iCT - clean iCT (HU)"),
        (case.ict_labels.array[k_i], "tab10", "iCT labels"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4), dpi=70)
    for ax, (data, cmap, title) in zip(axes.ravel(), panels):
        kwargs = {"vmin": 0, "vmax": 9, "interpolation": "nearest"} if cmap == "tab10" else {}
        ax.imshow(data, cmap=cmap, **kwargs)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"phantom seed {case.seed} (axial slices; image left = patient right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_report(ict: Image, pmr_on_ict: Image, path: Path, stage_seconds: dict[str, float],
               tumour_on_ict: np.ndarray | None = None, hole: np.ndarray | None = None, title: str = "") -> None:
    """The report of ``mrct-reg run``: on one axial iCT slice, the warped pMR over the iCT (colour overlay),
    a checkerboard of the two, and the iCT with the pMR tumour outline; plus the stage times.

    The slice goes through the tumour's centre when a warped tumour mask is given, else through the
    probe hole's largest slice, else through the middle of the volume.
    """
    if tumour_on_ict is not None and tumour_on_ict.any():
        k = int(np.median(np.argwhere(tumour_on_ict)[:, 0]))
    elif hole is not None and hole.any():
        k = int(np.argmax(hole.sum(axis=(1, 2))))
    else:
        k = ict.grid.shape[0] // 2
    ct, mr = _window_ct(ict.array[k]), _normalise(pmr_on_ict.array[k])
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), dpi=80)
    axes[0].imshow(ct, cmap="gray")
    axes[0].imshow(np.ma.masked_less(mr, 0.05), cmap="magma", alpha=0.45)
    axes[0].set_title("iCT + warped pMR (overlay)", fontsize=9)
    axes[1].imshow(checkerboard(ct, mr), cmap="gray")
    axes[1].set_title("checkerboard iCT / pMR", fontsize=9)
    axes[2].imshow(ct, cmap="gray")
    if tumour_on_ict is not None and tumour_on_ict[k].any():
        axes[2].contour(tumour_on_ict[k], levels=[0.5], colors="yellow", linewidths=1.0)
        axes[2].set_title("iCT + pMR tumour outline", fontsize=9)
    else:
        axes[2].set_title("iCT (no pMR tumour mask given)", fontsize=9)
    for ax in axes[:3]:
        ax.axis("off")
    names = list(stage_seconds)
    axes[3].barh(range(len(names)), [stage_seconds[n] for n in names],
                 color=["0.6" if n.startswith("pre_") else "tab:blue" for n in names])
    axes[3].set_yticks(range(len(names)), names, fontsize=7)
    axes[3].invert_yaxis()
    intra = sum(v for n, v in stage_seconds.items() if not n.startswith("pre_"))
    axes[3].set_xlabel("seconds")
    axes[3].set_title(f"stage times (intra-procedural {intra:.1f} s, blue)", fontsize=9)
    fig.suptitle(title or f"pMR -> iCT, axial slice {k}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
