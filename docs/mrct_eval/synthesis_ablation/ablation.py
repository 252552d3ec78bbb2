"""The MI ablation of the Cycle-GAN (issue 9): sCT quality and downstream pMR -> pCT registration.

    python docs/mrct_eval/synthesis_ablation/ablation.py N_HELD_OUT OUT_DIR

Trains the ci-no-mi preset into OUT_DIR/ci-no-mi unless it is there (the ci preset, with MI, must already be
in OUT_DIR/ci: `mrct-reg train synthesis --preset ci --out OUT_DIR/ci`), then scores both generators on the
first N held-out phantoms: sCT against the true CT of the pMR anatomy, and stage b (sCT + ANTs SyN-CC) as a
pMR -> pCT registration next to ANTs SyN-MI on the same cases. Writes OUT_DIR/syn_ablation.md.
"""
import os
import sys
from pathlib import Path

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrct_registration.learned.train_synthesis import (  # noqa: E402
    TRAIN_PRESETS,
    score_synthesis,
    synthesis_table_markdown,
    train_synthesis,
)
from mrct_registration.phantom import PhantomConfig, generate_case  # noqa: E402

torch.set_num_threads(1)
from mrct_registration.baselines import get_method  # noqa: E402
from mrct_registration.evaluation import TASKS, score_case  # noqa: E402
from mrct_registration.learned.pipeline import synthesis_pre_stage  # noqa: E402
from mrct_registration.phantom import held_out_seeds  # noqa: E402

OUT = sys.argv[2]
if not Path(f"{OUT}/ci-no-mi/synthesis.safetensors").exists():
    r = train_synthesis(TRAIN_PRESETS["ci-no-mi"], f"{OUT}/ci-no-mi", progress=True)
    print("RESULT no-mi", r.best_val_mae_hu, r.best_step, r.seconds, flush=True)
n = int(sys.argv[1])
variants = {"mi (weight 1)": f"{OUT}/ci", "no MI (ablation)": f"{OUT}/ci-no-mi"}
stages = {k: synthesis_pre_stage(Path(v)) for k, v in variants.items()}
scores = {k: [] for k in variants}
rows = []
ref = get_method("ants-syn-mi")
for seed in held_out_seeds(n):
    case = generate_case(seed, PhantomConfig.ci())
    for k, st in stages.items():
        scores[k].append(score_synthesis(st.mr_to_ct, case))
        s, lm = score_case(case, st.register(case.pct, case.pmr), TASKS["pmr-pct"])
        rows.append((k, seed, s.liver_dice, s.tre_tumour_mm, s.epe_liver_mm, [r["tre_mm"] for r in lm if r["kind"] == "tumour_centroid"]))
        print(rows[-1][:5], scores[k][-1], flush=True)
    s, lm = score_case(case, ref.register(case.pct, case.pmr), TASKS["pmr-pct"])
    rows.append(("ants-syn-mi (no synthesis)", seed, s.liver_dice, s.tre_tumour_mm, s.epe_liver_mm, [r["tre_mm"] for r in lm if r["kind"] == "tumour_centroid"]))
    print(rows[-1][:5], flush=True)
out = [synthesis_table_markdown(scores), "", "| pMR -> pCT (stage b) | cases | liver Dice | tumour TRE median / p95 (mm) | liver EPE (mm) |", "|---|---:|---:|---:|---:|"]
for k in [*variants, "ants-syn-mi (no synthesis)"]:
    rr = [r for r in rows if r[0] == k]
    t = np.concatenate([r[5] for r in rr])
    out.append(f"| {k} | {len(rr)} | {np.mean([r[2] for r in rr]):.3f} | {np.median(t):.2f} / {np.percentile(t,95):.2f} | {np.mean([r[4] for r in rr]):.2f} |")
(Path(OUT) / "syn_ablation.md").write_text("\n".join(out) + "\n")
print("\n".join(out))
