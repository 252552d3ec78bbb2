"""The evaluation harness: run registration methods over held-out phantoms and score them.

For the main task (moving pMR, fixed iCT) each method returns a field on the iCT grid; with it the pMR
label map is warped (nearest) and compared with the iCT labels (liver and tumour Dice, liver HD95), the
iCT landmarks are mapped into pMR space and compared with the pMR landmarks (TRE), the field is compared
with the ground truth inside the iCT liver (end-point error), and det J <= 0 is counted (folding).
Everything is written as it is computed (``per_case.csv``, ``landmarks.csv``) so a long run can be
watched and resumed; ``summary.md`` and the figures are written at the end.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .baselines import ChainRegistration, get_method
from .baselines.base import RegistrationResult
from .errors import MrctError, UnknownTaskError
from .image import Image
from .metrics import dice, endpoint_error_mm, folding_percent, hausdorff95_mm, target_registration_errors_mm
from .phantom import LIVER_LABELS, PhantomCase, PhantomConfig, Tissue, generate_case
from .transforms import warp_image, warp_labels


@dataclass(frozen=True)
class Task:
    """Which images of a case are registered: attribute names of :class:`PhantomCase`."""

    name: str
    moving: str
    fixed: str
    truth: str
    intermediate: str | None = None  # the image a chained method passes through (pCT for pMR -> iCT)

    def images(self, case: PhantomCase) -> tuple[Image, Image]:
        return getattr(case, self.fixed), getattr(case, self.moving)

    # the clean iCT shares the iCT's grid, labels and landmarks
    def labels(self, case: PhantomCase) -> tuple[Image, Image]:
        return getattr(case, f"{self.fixed.removesuffix('_clean')}_labels"), getattr(case, f"{self.moving}_labels")

    def landmarks(self, case: PhantomCase):
        return getattr(case, f"{self.fixed.removesuffix('_clean')}_landmarks"), getattr(case, f"{self.moving}_landmarks")


TASKS = {
    "pmr-ict": Task("pmr-ict", moving="pmr", fixed="ict", truth="pmr_to_ict", intermediate="pct"),  # the paper's main task
    "pct-ict": Task("pct-ict", moving="pct", fixed="ict", truth="pct_to_ict"),  # intra-procedural CT-CT
    "pct-ict-clean": Task("pct-ict-clean", moving="pct", fixed="ict_clean", truth="pct_to_ict"),  # no probe
    "pmr-pct": Task("pmr-pct", moving="pmr", fixed="pct", truth="pmr_to_pct"),  # pre-procedural MR-CT
}


@dataclass(frozen=True)
class CaseScore:
    """One (case, method) row of ``per_case.csv``."""

    method: str
    seed: int
    task: str
    liver_dice: float
    tumour_dice: float
    liver_hd95_mm: float
    tre_tumour_mm: float
    tre_bifurcation_mm: float
    epe_liver_mm: float
    folding_percent: float
    total_s: float
    intra_procedural_s: float  # total minus the stages a chained method runs before the procedure (pre_*)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float | int | str]:
        d = asdict(self)
        stages = d.pop("stage_seconds")
        d.update({f"time_{k}_s": v for k, v in stages.items()})
        return d


def score_case(case: PhantomCase, result: RegistrationResult, task: Task) -> tuple[CaseScore, list[dict]]:
    fixed_labels, moving_labels = task.labels(case)
    warped = warp_labels(moving_labels, result.field).array
    fixed_l = fixed_labels.array
    liver_f, liver_w = np.isin(fixed_l, LIVER_LABELS), np.isin(warped, LIVER_LABELS)
    fixed_lm, moving_lm = task.landmarks(case)
    tre = target_registration_errors_mm(result.field, fixed_lm, moving_lm)
    kinds = np.asarray(fixed_lm.kinds)
    truth = getattr(case, task.truth)
    score = CaseScore(
        method=result.method,
        seed=case.seed,
        task=task.name,
        liver_dice=dice(liver_f, liver_w),
        tumour_dice=dice(fixed_l == Tissue.TUMOUR, warped == Tissue.TUMOUR),
        liver_hd95_mm=hausdorff95_mm(liver_f, liver_w, result.field.grid),
        tre_tumour_mm=float(tre[kinds == "tumour_centroid"].mean()),
        tre_bifurcation_mm=float(tre[kinds == "vessel_bifurcation"].mean()) if (kinds == "vessel_bifurcation").any() else float("nan"),
        epe_liver_mm=endpoint_error_mm(result.field, truth, liver_f),
        folding_percent=folding_percent(result.field),
        total_s=result.total_seconds,
        intra_procedural_s=result.total_seconds - sum(v for k, v in result.stage_seconds.items() if k.startswith("pre_")),
        stage_seconds=dict(result.stage_seconds),
    )
    # distance of each fixed landmark to the needle (iCT space), for the TRE near the probe
    if case.needle is not None and task.fixed.removesuffix("_clean") == "ict":
        probe_mm = case.needle.distance_mm(np.asarray(fixed_lm.points_mm, dtype=np.float64))
    else:
        probe_mm = np.full(len(fixed_lm.names), np.nan)
    landmark_rows = [
        {"method": result.method, "seed": case.seed, "task": task.name, "name": n, "kind": k, "tre_mm": float(e),
         "probe_distance_mm": float(d)}
        for n, k, e, d in zip(fixed_lm.names, fixed_lm.kinds, tre, probe_mm)
    ]
    return score, landmark_rows


# ---------------------------------------------------------------------------------------------- summary


SUMMARY_METRICS = (
    ("liver_dice", "Liver Dice"),
    ("tumour_dice", "Tumour Dice"),
    ("liver_hd95_mm", "Liver HD95 (mm)"),
    ("tre_tumour_mm", "TRE tumour centroids (mm, per case mean)"),
    ("tre_bifurcation_mm", "TRE vessel bifurcations (mm, per case mean)"),
    ("epe_liver_mm", "End-point error in liver (mm)"),
    ("folding_percent", "Folding, det J <= 0 (%)"),
    ("total_s", "Run time (s)"),
    ("intra_procedural_s", "Intra-procedural run time (s)"),
)


def _stat_cell(values: pd.Series) -> str:
    v = values.dropna().to_numpy(dtype=float)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f} (med {np.median(v):.3f}, p95 {np.percentile(v, 95):.3f})"


def summary_table(per_case: pd.DataFrame) -> str:
    methods = list(dict.fromkeys(per_case["method"]))
    lines = ["| Metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for col, label in SUMMARY_METRICS:
        cells = [_stat_cell(per_case.loc[per_case["method"] == m, col]) for m in methods]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def landmark_table(landmarks: pd.DataFrame) -> str:
    lines = ["| Method | Landmark kind | n | median TRE (mm) | p95 TRE (mm) | max (mm) |", "|---|---|---|---|---|---|"]
    for (method, kind), group in landmarks.groupby(["method", "kind"], sort=False):
        e = group["tre_mm"].to_numpy()
        lines.append(f"| {method} | {kind} | {e.size} | {np.median(e):.2f} | {np.percentile(e, 95):.2f} | {e.max():.2f} |")
    return "\n".join(lines)


NEAR_PROBE_MM = 30.0  # "near the probe": landmarks within 3 cm of the needle, where the streaks are


def near_probe_table(landmarks: pd.DataFrame, radius_mm: float = NEAR_PROBE_MM) -> str:
    """TRE of the landmarks within ``radius_mm`` of the needle (all kinds), per method."""
    if "probe_distance_mm" not in landmarks or landmarks["probe_distance_mm"].isna().all():
        return "(no probe in the fixed images of this task, or rows from a run that did not record distances)"
    near = landmarks[landmarks["probe_distance_mm"] <= radius_mm]
    if near.empty:
        return f"(no landmark within {radius_mm:.0f} mm of the probe)"
    lines = ["| Method | n | median TRE (mm) | p95 TRE (mm) | max (mm) |", "|---|---|---|---|---|"]
    for method, group in near.groupby("method", sort=False):
        e = group["tre_mm"].to_numpy()
        lines.append(f"| {method} | {e.size} | {np.median(e):.2f} | {np.percentile(e, 95):.2f} | {e.max():.2f} |")
    return "\n".join(lines)


def stage_table(per_case: pd.DataFrame) -> str:
    stage_cols = [c for c in per_case.columns if c.startswith("time_") and c.endswith("_s")]
    lines = ["| Method | " + " | ".join(c[5:-2] for c in stage_cols) + " | total |", "|---|" + "---|" * (len(stage_cols) + 1)]
    for method, group in per_case.groupby("method", sort=False):
        cells = [f"{group[c].mean():.2f}" if group[c].notna().any() else "–" for c in stage_cols]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {group['total_s'].mean():.2f} |")
    return "\n".join(lines)


def paired_comparison(per_case: pd.DataFrame, reference: str, metrics: Sequence[str] = ("liver_dice", "tre_tumour_mm")) -> str:
    """Wilcoxon signed-rank test of every method against ``reference`` on the cases both ran (two-sided)."""
    if reference not in set(per_case["method"]):
        return f"(reference method {reference} not in this run; no paired comparison)"
    lines = ["| Method vs " + reference + " | Metric | n | median difference | Wilcoxon p |", "|---|---|---|---|---|"]
    ref = per_case[per_case["method"] == reference].set_index("seed")
    for method in dict.fromkeys(per_case["method"]):
        if method == reference:
            continue
        other = per_case[per_case["method"] == method].set_index("seed")
        common = ref.index.intersection(other.index)
        for metric in metrics:
            diff = (other.loc[common, metric] - ref.loc[common, metric]).dropna()
            if diff.size < 2 or np.allclose(diff, 0):
                p = float("nan")
            else:
                p = float(stats.wilcoxon(diff.to_numpy()).pvalue)
            lines.append(f"| {method} | {metric} | {diff.size} | {np.median(diff) if diff.size else float('nan'):+.3f} | {p:.2g} |")
    return "\n".join(lines)


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "default")
    return f"{model}, {cores} cores available, ITK threads {threads}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class EvalConfig:
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    phantom: PhantomConfig
    out_dir: Path
    task: str = "pmr-ict"
    figure_cases: int = 3  # overlay/checkerboard PNGs for the first few cases only (keeps outputs small)
    resume: bool = False
    reference: str = "ants-syn-mi"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        check_methods_for_task(self.methods, self.task)
        if not self.seeds:
            raise MrctError("no seeds to evaluate; pass at least one case")
        if self.figure_cases < 0:
            raise MrctError(f"figure_cases must be >= 0, got {self.figure_cases}")


def get_task(name: str) -> Task:
    """The task called ``name``; raises :class:`UnknownTaskError` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None


def check_methods_for_task(methods: Sequence[str], task_name: str) -> dict[str, object]:
    """Validate a method list against a task before any work; returns the method objects by name.

    Unknown task or method names raise :class:`UnknownTaskError` / ``UnknownMethodError``; a chained method
    (which registers through an intermediate image, the pCT) on a task without one raises :class:`MrctError`.
    """
    task = get_task(task_name)
    if not methods:
        raise MrctError("no methods to evaluate; pass at least one method")
    resolved = {name: get_method(name) for name in methods}
    chained = [name for name, method in resolved.items() if isinstance(method, ChainRegistration)]
    if chained and task.intermediate is None:
        raise MrctError(f"{', '.join(chained)} register(s) through an intermediate image (the pCT); task {task.name} "
                        f"has none, use a task with one ({', '.join(n for n, t in TASKS.items() if t.intermediate)})")
    return resolved


def run_evaluation(config: EvalConfig, progress: Callable[[Sequence], Sequence] | None = None) -> pd.DataFrame:
    """Run every method on every seed's case, append rows as they come, then write the summary and figures."""
    from . import figures

    task = TASKS[config.task]  # EvalConfig checked the task, the method names and their combination
    methods = {name: get_method(name) for name in config.methods}
    out = Path(config.out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    case_csv, landmark_csv = out / "per_case.csv", out / "landmarks.csv"
    case_rows: list[dict] = []
    landmark_rows: list[dict] = []
    if config.resume and case_csv.exists() and landmark_csv.exists():
        case_rows = pd.read_csv(case_csv).to_dict("records")
        landmark_rows = pd.read_csv(landmark_csv).to_dict("records")
    done = {(int(r["seed"]), r["method"]) for r in case_rows}
    pairs = [(seed, name) for seed in config.seeds for name in config.methods if (seed, name) not in done]
    iterator = progress(pairs) if progress else pairs
    case: PhantomCase | None = None
    for seed, name in iterator:
        if case is None or case.seed != seed:
            case = generate_case(seed, config.phantom)
        fixed, moving = task.images(case)
        method = methods[name]
        if isinstance(method, ChainRegistration):  # check_methods_for_task made sure the task has an intermediate
            result = method.register_via(fixed, getattr(case, task.intermediate), moving)
        else:
            result = method.register(fixed, moving)
        score, lm_rows = score_case(case, result, task)
        case_rows.append(score.row())
        landmark_rows.extend(lm_rows)
        # rewritten whole each time: methods report different stages, so the column set can grow
        pd.DataFrame(case_rows).to_csv(case_csv, index=False)
        pd.DataFrame(landmark_rows).to_csv(landmark_csv, index=False)
        if config.seeds.index(seed) < config.figure_cases:
            warped = warp_image(moving, result.field)
            warped_labels = warp_labels(task.labels(case)[1], result.field)
            figures.case_figure(fixed, warped, task.labels(case)[0], warped_labels,
                                out / "figures" / f"case{seed}_{name}.png", title=f"{name}, seed {seed}")
    if not case_rows:
        raise MrctError(f"nothing to evaluate: no (case, method) pairs for {config.methods} on {len(config.seeds)} seeds")
    per_case = pd.DataFrame(case_rows)
    landmarks = pd.DataFrame(landmark_rows)
    figures.box_plots(per_case, out / "figures" / "boxplots.png")
    write_summary(per_case, landmarks, config, out / "summary.md")
    return per_case


def write_summary(per_case: pd.DataFrame, landmarks: pd.DataFrame, config: EvalConfig, path: Path) -> None:
    p = config.phantom
    text = f"""# mrct_registration evaluation: task {config.task}

Synthetic abdominal phantoms (simplified physics, no clinical claim). Cases: {per_case['seed'].nunique()}
(seeds {min(per_case['seed'])}..{max(per_case['seed'])}, held-out range). CT {p.ct_shape_xyz} voxels over
{p.ct_fov_mm} mm, MR {p.mr_shape_xyz} voxels over {p.mr_fov_mm} mm ({p.mr_weighting.upper()}-weighted).

Machine: {machine_description()}.

## Per-case metrics: mean ± sd (median, 95th percentile) over cases

{summary_table(per_case)}

## Landmark TRE pooled over all landmarks

{landmark_table(landmarks)}

## Landmark TRE within {NEAR_PROBE_MM:.0f} mm of the probe (all kinds, pooled)

{near_probe_table(landmarks)}

## Run time by stage (mean seconds per case)

{stage_table(per_case)}

## Paired comparison (Wilcoxon signed-rank, two-sided)

{paired_comparison(per_case, config.reference)}
"""
    path.write_text(text)
