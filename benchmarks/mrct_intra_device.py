"""Intra-procedural time of the learned pMR -> iCT pipeline on the CPU and on a CUDA device, in one run.

The intra-procedural part is what runs once the iCT exists: inpainting, the CT-CT network and its two
refinements, composition with the pre-procedural field, and one resampling of the pMR. The pre-procedural
field (``mind-svf``, pMR -> pCT) is computed once per case on the CPU, before any timing, and shared by both
devices; ``--pre truth`` uses the phantom's true pMR -> pCT field instead (no ANTs needed, same cost to
compose; the accuracy is then that of the intra-procedural stage alone). Each device gets one untimed warm-up case (CUDA context, kernels, allocator), then every case is timed.
The accuracy of each device's result is printed beside its time, so a fast but wrong device shows.

    python benchmarks/mrct_intra_device.py                 # 3 held-out CI-scale phantoms, cpu and cuda if present
    python benchmarks/mrct_intra_device.py --cases 5 --torch-threads 2 --json out.json
    python benchmarks/mrct_intra_device.py --pre truth     # on a machine without ANTs

Without a CUDA device the script measures the CPU alone and says so.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from mrct_registration.baselines.base import RegistrationResult
from mrct_registration.evaluation import TASKS, score_case
from mrct_registration.learned.pipeline import PRE_PROCEDURAL_METHOD, learned_ctct
from mrct_registration.phantom import PhantomConfig, generate_case, held_out_seeds
from mrct_registration.transforms import compose, warp_image


def intra_procedural(reg, case, pre_field) -> tuple[float, RegistrationResult, dict[str, float]]:
    """Seconds for inpaint + register + compose + warp, the composed pMR -> iCT result and the CT-CT stages."""
    start = time.perf_counter()
    intra = reg.run(case.ict, case.pct)
    field = compose(pre_field, intra.registration.field)
    warp_image(case.pmr, field)
    seconds = time.perf_counter() - start
    return seconds, RegistrationResult("learned", field, {}), intra.registration.stage_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="held-out phantoms (CI scale), at most 20")
    parser.add_argument("--torch-threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--pre", choices=("mind-svf", "truth"), default="mind-svf",
                        help="the pre-procedural pMR -> pCT field: the pipeline's (mind-svf) or the phantom's true one")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.cases <= 20:
        parser.error(f"--cases must be 1..20, got {args.cases}")
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"devices: {', '.join(devices)}; GPU: {gpu}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    cases, pre_fields = [], []
    pre_name = PRE_PROCEDURAL_METHOD if args.pre == "mind-svf" else "true field"
    for seed in tqdm(held_out_seeds(args.cases), desc=f"phantoms + {pre_name} (pre-procedural)"):
        case = generate_case(seed, PhantomConfig.ci())
        cases.append(case)
        if args.pre == "truth":
            pre_fields.append(case.pmr_to_pct)
        else:
            from mrct_registration.baselines import get_method

            pre_fields.append(get_method(PRE_PROCEDURAL_METHOD).register(case.pct, case.pmr).field)

    results: dict[str, dict] = {}
    for device in devices:
        reg = learned_ctct(device=device)
        intra_procedural(reg, cases[0], pre_fields[0])  # warm-up, not timed
        times, dice, tre, stages = [], [], [], []
        for case, pre in tqdm(list(zip(cases, pre_fields)), desc=f"intra-procedural on {device}"):
            seconds, result, stage_seconds = intra_procedural(reg, case, pre)
            score, _ = score_case(case, result, TASKS["pmr-ict"])
            times.append(seconds)
            dice.append(score.liver_dice)
            tre.append(score.tre_tumour_mm)
            stages.append(stage_seconds)
        results[device] = {
            "seconds_mean": float(np.mean(times)), "seconds_max": float(np.max(times)),
            "liver_dice": float(np.mean(dice)), "tumour_tre_mm": float(np.mean(tre)),
            "stage_seconds": {k: float(np.mean([s.get(k, 0.0) for s in stages])) for k in stages[0]},
        }

    print("\n| device | intra-procedural s (mean / max) | liver Dice | tumour TRE (mm, per-case mean) |")
    print("|---|---|---:|---:|")
    for device, r in results.items():
        print(f"| {device} | {r['seconds_mean']:.2f} / {r['seconds_max']:.2f} | {r['liver_dice']:.3f} | "
              f"{r['tumour_tre_mm']:.2f} |")
    if "cuda" in results:
        ratio = results["cpu"]["seconds_mean"] / results["cuda"]["seconds_mean"]
        print(f"\ncuda is {ratio:.1f}x faster than cpu (target: <= 1 s on the GPU; "
              f"{results['cuda']['seconds_mean']:.2f} s measured)")
    else:
        print("\nno CUDA device: cpu only")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"gpu": gpu, "cases": args.cases, "pre": args.pre, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
