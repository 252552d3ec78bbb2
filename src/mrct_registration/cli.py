"""Command line entry point ``mrct-reg``.

    mrct-reg eval --quick                        # 3 small held-out phantoms, a few methods, < 5 min on 2 cores
    mrct-reg eval --quick --threads 2            # faster, but ANTs results then vary slightly from run to run
    mrct-reg eval --method all --cases 20        # the baseline table (writes per_case.csv, summary.md, figures/)
    mrct-reg eval --method ants-syncc --task pct-ict
    mrct-reg phantom --seed 100000 --out out/case100000
    mrct-reg register --fixed ict.nii.gz --moving pmr.nii.gz --method ants-syn-mi --out field.nii.gz
    mrct-reg train inpainting --preset ci --eval-cases 20   # the committed inpainting weights, then their table
    mrct-reg train registration --preset ci       # the committed registration-network weights
    mrct-reg train synthesis --preset ci --eval-cases 20     # the MI-constrained Cycle-GAN (ci-no-mi: ablation)
    mrct-reg run --pmr pmr.nii.gz --pct pct.nii.gz --ict ict.nii.gz OUT    # the learned pipeline on one case
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import MrctError

ITK_THREADS_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

DEFAULT_METHODS = ("identity", "sitk-rigid-mi", "ants-rigid", "ants-syn-mi", "elastix-bspline-mi", "ants-two-stage")
QUICK_METHODS = ("identity", "sitk-rigid-mi", "ants-rigid", "ants-syn-mi")
SIZES = ("tiny", "small", "ci", "large")


def _set_itk_threads(threads: int | None) -> str:
    """Set the ITK thread count for this process (SimpleITK, ANTs, elastix) before any of them runs.

    ``--threads N`` wins; otherwise a value the caller put in ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS; otherwise
    1, the only setting under which ANTs registrations are exactly repeatable (the seed alone is not enough
    with several threads). ITK reads the variable once per process, when it first runs a filter, so this
    only takes effect in a process that has not run a registration yet. Returns the value in effect.
    """
    if threads is not None:
        if threads < 1:
            raise MrctError(f"--threads must be >= 1, got {threads}")
        os.environ[ITK_THREADS_VAR] = str(threads)
    return os.environ.setdefault(ITK_THREADS_VAR, "1")


def _phantom_config(size: str):
    from .phantom import PhantomConfig

    return getattr(PhantomConfig, size)()


def _methods(values: list[str] | None, quick: bool) -> tuple[str, ...]:
    from .baselines import METHOD_NAMES

    if not values:
        return QUICK_METHODS if quick else DEFAULT_METHODS
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                names.extend(DEFAULT_METHODS)
            elif name:
                names.append(name)
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        from .errors import UnknownMethodError

        raise UnknownMethodError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_NAMES)} or 'all'")
    return tuple(dict.fromkeys(names))


def _cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markdown import Markdown
    from tqdm import tqdm

    from .evaluation import EvalConfig, run_evaluation
    from .phantom import HELD_OUT_SEEDS, held_out_seeds

    methods = _methods(args.method, args.quick)
    cases = args.cases if args.cases is not None else (3 if args.quick else 20)
    if not 1 <= cases <= len(HELD_OUT_SEEDS):
        raise MrctError(f"--cases must be between 1 and {len(HELD_OUT_SEEDS)} (the held-out seed range "
                        f"{HELD_OUT_SEEDS.start}..{HELD_OUT_SEEDS.stop - 1}), got {cases}")
    size = args.size if args.size is not None else ("small" if args.quick else "ci")
    out = Path(args.out if args.out is not None else ("out/mrct_eval_quick" if args.quick else "out/mrct_eval"))
    # EvalConfig checks the task, the methods and their combination before any case is generated
    config = EvalConfig(methods=methods, seeds=tuple(held_out_seeds(cases)), phantom=_phantom_config(size), out_dir=out,
                        task=args.task, figure_cases=args.figure_cases, resume=args.resume)
    threads = os.environ[ITK_THREADS_VAR]
    mode = "repeatable" if threads == "1" else "faster; ANTs results vary slightly run to run"
    console = Console(stderr=True)
    console.print(f"[bold]mrct-reg eval[/]: task {args.task}, {cases} held-out cases ({size}), methods {', '.join(methods)}, "
                  f"ITK threads {threads} ({mode})")
    per_case = run_evaluation(config, progress=lambda pairs: tqdm(pairs, desc="cases x methods", unit="reg", file=sys.stderr))
    console.print(Markdown((out / "summary.md").read_text()))
    console.print(f"wrote {out / 'per_case.csv'}, {out / 'landmarks.csv'}, {out / 'summary.md'}, {out / 'figures'}")
    order = sorted(dict.fromkeys(per_case["method"]), key=lambda m: m == "ants-syn-mi")
    for method in order:
        mean = per_case.loc[per_case["method"] == method, "liver_dice"].mean()
        print(f"{method} liver dice (mean): {mean:.3f}", flush=True)
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import generate_case
    from .phantom.export import save_case

    case = generate_case(args.seed, _phantom_config(args.size))
    folder = save_case(case, Path(args.out))
    if args.figure:
        from .figures import phantom_figure

        phantom_figure(case, folder / "overview.png")
    print(f"wrote phantom case {args.seed} to {folder}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from .baselines import ChainRegistration, get_method
    from .io import check_output_path, read_image, write_image, write_sitk
    from .transforms import field_to_sitk, warp_image

    # everything that can be checked is checked before the (possibly long) registration
    check_output_path(args.out, allow_dicom=False)
    if args.warped:
        check_output_path(args.warped)
    method = get_method(args.method)
    chained = isinstance(method, ChainRegistration)
    if chained and not args.intermediate:
        raise MrctError(f"{args.method} registers through an intermediate image (the pCT): pass --intermediate")
    fixed, moving = read_image(args.fixed), read_image(args.moving)
    if chained:
        result = method.register_via(fixed, read_image(args.intermediate), moving)
    else:
        result = method.register(fixed, moving)
    write_sitk(field_to_sitk(result.field), args.out)
    if args.warped:
        write_image(warp_image(moving, result.field), args.warped)
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.stage_seconds.items())
    print(f"{result.method}: field (fixed grid, x_moving = x + u(x), mm) written to {args.out}; {stages}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.eval_cases < 0:
        raise MrctError(f"--eval-cases must be >= 0, got {args.eval_cases}")
    trainers = {"inpainting": _train_inpainting, "registration": _train_registration, "synthesis": _train_synthesis}
    return trainers[args.model](args)


def _train_inpainting(args: argparse.Namespace) -> int:
    from .learned.eval_inpainting import evaluate_inpainting, inpainting_table_markdown
    from .learned.train_inpainting import TRAIN_PRESETS, TrainConfigError, load_inpainter, train_inpainting
    from .phantom import held_out_seeds

    if args.preset not in TRAIN_PRESETS:
        raise TrainConfigError(f"unknown preset {args.preset!r}; choose from {', '.join(TRAIN_PRESETS)}")
    config = TRAIN_PRESETS[args.preset]
    out = Path(args.out if args.out is not None else f"out/inpainting_{args.preset}")
    result = train_inpainting(config, out)
    print(f"validation hole L1: {result.initial_val_hole_l1_hu:.1f} HU before training, "
          f"{result.best_val_hole_l1_hu:.1f} HU at step {result.best_step} (kept); {result.seconds:.0f} s")
    print(f"wrote {result.weights_path}, {result.config_path}, {result.log_path}, {result.curve_path}")
    if args.eval_cases:
        # the held-out phantoms at the training scale, with the probe (training phantoms have none)
        phantom = config.phantom().with_(with_probe=True)
        scores = evaluate_inpainting(load_inpainter(result.weights_path), held_out_seeds(args.eval_cases), phantom)
        table = inpainting_table_markdown(scores)
        (out / "inpainting_eval.md").write_text(table)
        print(table)
    return 0


def _train_registration(args: argparse.Namespace) -> int:
    import torch

    from .learned.train_registration import TRAIN_PRESETS, RegistrationTrainConfigError, train_registration

    if args.preset not in TRAIN_PRESETS:
        raise RegistrationTrainConfigError(f"unknown preset {args.preset!r}; choose from {', '.join(TRAIN_PRESETS)}")
    if args.eval_cases:
        raise MrctError("--eval-cases applies to inpainting and synthesis; score the registration network with "
                        "`mrct-reg eval --method learned-ctct --task pct-ict`")
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    out = Path(args.out if args.out is not None else f"out/registration_{args.preset}")
    result = train_registration(TRAIN_PRESETS[args.preset], out)
    print(f"validation landmark TRE (network alone): {result.initial_val_tre_mm:.2f} mm before training, "
          f"{result.best_val_tre_mm:.2f} mm at step {result.best_step} (kept); {result.seconds:.0f} s")
    print(f"wrote {result.weights_path}, {result.config_path}, {result.log_path}, {result.curve_path}")
    return 0


def _train_synthesis(args: argparse.Namespace) -> int:
    import torch

    from .learned.train_synthesis import (
        TRAIN_PRESETS,
        SynthesisConfigError,
        evaluate_synthesis,
        synthesis_table_markdown,
        train_synthesis,
    )
    from .phantom import held_out_seeds

    if args.preset not in TRAIN_PRESETS:
        raise SynthesisConfigError(f"unknown preset {args.preset!r}; choose from {', '.join(TRAIN_PRESETS)}")
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    config = TRAIN_PRESETS[args.preset]
    out = Path(args.out if args.out is not None else f"out/synthesis_{args.preset}")
    result = train_synthesis(config, out)
    print(f"validation sCT MAE (body): {result.best_val_mae_hu:.1f} HU at step {result.best_step} (kept); "
          f"{result.seconds:.0f} s; wrote {result.weights_path}")
    if args.eval_cases:
        scores = evaluate_synthesis(result.mr_to_ct, held_out_seeds(args.eval_cases), config.phantom())
        table = synthesis_table_markdown({args.preset: scores})
        (out / "synthesis_eval.md").write_text(table)
        print(table)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .figures import run_report
    from .io import read_image, write_image, write_sitk
    from .learned.pipeline import PIPELINE_STAGES, PRE_PROCEDURAL_METHOD, REFINE_STEPS, learned_pipeline
    from .phantom import Tissue
    from .transforms import field_to_sitk, warp_labels

    refine_steps = REFINE_STEPS if args.refine_steps is None else args.refine_steps
    if refine_steps < 0:
        raise MrctError(f"--refine-steps must be >= 0, got {refine_steps}")
    from .learned.ctct_registration import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:  # checked before any image is read
        raise MrctError(f"--device: {exc}") from exc
    synthesis = None
    if args.synthesis is not None:
        from .learned.train_synthesis import COMMITTED, WEIGHTS_NAME

        synthesis = COMMITTED.get(args.synthesis, Path(args.synthesis))
        if not (synthesis / WEIGHTS_NAME if synthesis.is_dir() else synthesis).is_file():
            raise MrctError(f"--synthesis {args.synthesis}: no such weights file or folder; give 'mi', 'no-mi' or the "
                            "output of `mrct-reg train synthesis`")
    pmr, pct, ict = read_image(args.pmr), read_image(args.pct), read_image(args.ict)
    labels = read_image(args.pmr_labels) if args.pmr_labels else None
    if labels is not None and not labels.grid.matches(pmr.grid):
        raise MrctError(f"--pmr-labels {args.pmr_labels} must lie on the pMR's grid")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise MrctError(f"--torch-threads must be >= 1, got {args.torch_threads}")
        import torch

        torch.set_num_threads(args.torch_threads)
    pipeline = learned_pipeline(refine_steps=refine_steps, synthesis=synthesis, device=args.device)
    pre_name = PRE_PROCEDURAL_METHOD if synthesis is None else f"the Cycle-GAN sCT ({args.synthesis}) + SyN-CC"
    console = Console(stderr=True)
    console.print(f"[bold]mrct-reg run[/]: pMR -> pCT with {pre_name} (pre-procedural), pCT -> iCT with "
                  f"inpainting + registration network + {refine_steps} refinement steps, composed, pMR resampled "
                  "once")
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("reading", total=len(PIPELINE_STAGES))

        def on_stage(name: str) -> None:
            progress.update(task, description=name, completed=PIPELINE_STAGES.index(name))

        result = pipeline.run(ict, pct, pmr, on_stage=on_stage)
        progress.update(task, description="done", completed=len(PIPELINE_STAGES))
    write_image(result.pmr_on_ict, out / "pmr_on_ict.nii.gz")
    write_image(result.ict_inpainted, out / "ict_inpainted.nii.gz")
    for name in ("pmr_to_pct", "pct_to_ict", "pmr_to_ict"):
        write_sitk(field_to_sitk(getattr(result, name)), out / f"field_{name}.nii.gz")
    tumour = None
    if labels is not None:
        warped_labels = warp_labels(labels, result.pmr_to_ict).array
        has_tumour_label = bool((labels.array == Tissue.TUMOUR).any())
        tumour = warped_labels == Tissue.TUMOUR if has_tumour_label else warped_labels > 0
        write_image(result.pmr_on_ict.with_array(warped_labels), out / "pmr_labels_on_ict.nii.gz")
    run_report(ict, result.pmr_on_ict, out / "report.png", result.stage_seconds, tumour, result.hole)
    timings = {"stage_seconds": result.stage_seconds, "intra_procedural_s": result.intra_procedural_seconds,
               "total_s": float(sum(result.stage_seconds.values())),
               "convention": "field_a_to_b: on b's grid, mm, LPS, x_a = x_b + u(x_b)"}
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    width = max(len(k) for k in result.stage_seconds)
    for stage, seconds in result.stage_seconds.items():
        print(f"{stage:<{width}}  {seconds:7.2f} s")
    hole_px = 0 if result.hole is None else int(np.count_nonzero(result.hole))
    print(f"intra-procedural (inpaint + register + compose + warp): {result.intra_procedural_seconds:.2f} s; "
          f"probe hole {hole_px} voxels")
    print(f"wrote {out}/pmr_on_ict.nii.gz, field_pmr_to_pct/pct_to_ict/pmr_to_ict.nii.gz, ict_inpainted.nii.gz, "
          "report.png, timings.json")
    return 0


THREADS_HELP = ("ITK threads for the registrations (default 1, or ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS if set): "
                "1 makes ANTs runs exactly repeatable; more is faster but ANTs results then vary slightly run to run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrct-reg", description="Fast MR-CT registration for liver ablation guidance")
    sub = parser.add_subparsers(dest="command")

    ev = sub.add_parser("eval", help="run registration methods over held-out phantoms and write metrics + figures")
    ev.add_argument("--method", action="append", help="method name(s), comma-separated or repeated; 'all' = the baselines")
    ev.add_argument("--quick", action="store_true", help="3 small cases and the fast baselines (< 5 min on 2 cores)")
    ev.add_argument("--cases", type=int, help="number of held-out cases (default 20, quick 3)")
    ev.add_argument("--size", choices=SIZES, help="phantom scale (default ci, quick small)")
    ev.add_argument("--task", default="pmr-ict", help="pmr-ict (default), pct-ict, pct-ict-clean or pmr-pct")
    ev.add_argument("--out", help="output folder (default out/mrct_eval or out/mrct_eval_quick)")
    ev.add_argument("--figure-cases", type=int, default=3, help="cases that get overlay/checkerboard PNGs")
    ev.add_argument("--resume", action="store_true", help="keep rows already in per_case.csv and skip those runs")
    ev.add_argument("--threads", type=int, help=THREADS_HELP)
    ev.set_defaults(func=_cmd_eval)

    ph = sub.add_parser("phantom", help="generate one phantom case and write its images, labels, fields, landmarks")
    ph.add_argument("--seed", type=int, required=True)
    ph.add_argument("--size", choices=SIZES, default="ci")
    ph.add_argument("--out", required=True)
    ph.add_argument("--figure", action="store_true", help="also write overview.png (axial slices of every image)")
    ph.set_defaults(func=_cmd_phantom)

    rg = sub.add_parser("register", help="register two image files with one method and write the displacement field")
    rg.add_argument("--fixed", required=True)
    rg.add_argument("--moving", required=True)
    rg.add_argument("--method", default="ants-syn-mi")
    rg.add_argument("--intermediate", help="the pCT, for chained methods (ants-two-stage)")
    rg.add_argument("--out", required=True, help="displacement field file (.nii.gz / .mha / .nrrd)")
    rg.add_argument("--warped", help="optional file for the moving image resampled onto the fixed grid")
    rg.add_argument("--threads", type=int, help=THREADS_HELP)
    rg.set_defaults(func=_cmd_register)

    tr = sub.add_parser("train", help="train a learned stage from phantoms and write its weights, log and loss curve")
    tr.add_argument("model", choices=("inpainting", "registration", "synthesis"), help="the stage to train")
    tr.add_argument("--preset", default="tiny",
                    help="tiny (seconds, for tests), ci (the committed weights); synthesis also ci-no-mi (ablation)")
    tr.add_argument("--out", help="output folder (default out/<model>_<preset>)")
    tr.add_argument("--eval-cases", type=int, default=0,
                    help="inpainting/synthesis: then score the network (and the inpainting baselines) on this many held-out phantoms")
    tr.add_argument("--torch-threads", type=int, help="torch CPU threads (default: torch's choice)")
    tr.set_defaults(func=_cmd_train)

    rn = sub.add_parser("run", help="the learned pipeline on one case: pMR warped onto iCT, fields, report, timings")
    rn.add_argument("--pmr", required=True, help="pre-procedural MR")
    rn.add_argument("--pct", required=True, help="pre-procedural CT")
    rn.add_argument("--ict", required=True, help="intra-procedural CT (with the probe)")
    rn.add_argument("--pmr-labels", help="optional label map (or tumour mask) on the pMR grid, drawn on the report")
    rn.add_argument("--refine-steps", type=int, default=None, help="instance-optimisation steps (default: the committed setting)")
    rn.add_argument("--synthesis", help="pre-procedural stage through a Cycle-GAN synthetic CT and SyN-CC instead of "
                    "mind-svf: 'mi' or 'no-mi' (the committed ci weights) or a `mrct-reg train synthesis` output")
    rn.add_argument("--device", default="cpu",
                    help="where the inpainting and registration networks and the CT-CT refinements run: cpu "
                    "(default), cuda or cuda:N; the pre-procedural stage stays on the CPU")
    rn.add_argument("--threads", type=int, help=THREADS_HELP)
    rn.add_argument("--torch-threads", type=int,
                    help="torch CPU threads (default: torch's choice; 1 is faster on a machine shared with other jobs)")
    rn.add_argument("out", help="output folder")
    rn.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        if hasattr(args, "threads"):
            _set_itk_threads(args.threads)
        return int(args.func(args))
    except (MrctError, FileNotFoundError) as exc:
        print(f"mrct-reg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
