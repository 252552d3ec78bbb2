"""Per-layer expert load of the trained demo model on its held-out questions (the skew EPLB works against).

Runs every held-out conversation (prompt + expected answer) of ``xdeepserve.train_demo`` through the
checkpoint in transformers, main layers and the MTP module, counts with forward hooks on each router
which experts the top-k selection picks (after the ``e_score_correction_bias``, as served), per task,
and saves a stacked histogram per MoE layer to ``docs/demo_router_load.png``.

    .venv/bin/python benchmarks/demo_router_stats.py [--model DIR] [--n-per-task 200] [--out PNG]

Prints hottest/mean and coldest/mean per layer and ends with the largest hottest/mean ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from xdeepserve.train_demo import (
    DEFAULT_OUT,
    TASKS,
    Encoder,
    RouterLoad,
    build_tokenizer,
    heldout_questions,
    load_mtp_reference,
)


@torch.no_grad()
def expert_counts(model_dir: Path, n_per_task: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Router names (``layer 1`` … ``MTP (layer L)``) and, per task, counts ``[num_routers, num_experts]``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the MTP tensors are "unexpected keys" to transformers, by design
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    mtp = load_mtp_reference(model, model_dir)
    modules = [*model.named_modules(), *(("mtp." + n, m) for n, m in mtp.module.named_modules())]
    routers = RouterLoad(modules)
    names = list(routers.routers)
    labels = [f"MTP (layer {model.config.num_hidden_layers})" if n.startswith("mtp.") else f"layer {n.split('.')[2]}"
              for n in names]
    enc = Encoder(build_tokenizer())
    counts = {}
    for task, exs in heldout_questions(n_per_task).items():
        total = torch.zeros(len(names), model.config.n_routed_experts)
        for i in range(0, len(exs), 100):
            ids, _ = enc.encode(exs[i : i + 100])
            mtp.logits(model, ids)  # runs the main model too: every router fires once
            real = ids != enc.pad_id
            for r, name in enumerate(names):
                total[r] += routers.counts(name, real[:, 1:] if name.startswith("mtp.") else real)
        counts[task] = total
    return labels, counts


def plot(labels: list[str], counts: dict[str, torch.Tensor], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = sum(counts.values())
    n_experts = total.shape[1]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.6), sharey=True)
    for r, ax in enumerate(axes):
        bottom = torch.zeros(n_experts)
        share = 100 / total[r].sum()
        for task in counts:
            ax.bar(range(n_experts), counts[task][r] * share, bottom=bottom, label=task)
            bottom += counts[task][r] * share
        ax.axhline(100 / n_experts, color="black", linestyle="--", linewidth=1, label="uniform")
        ax.set_title(f"{labels[r]}: hottest/mean {total[r].max() / total[r].mean():.2f}")
        ax.set_xlabel("routed expert")
        ax.set_xticks(range(n_experts))
    axes[0].set_ylabel("share of routed token slots (%)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("demo model: expert load per MoE layer on the held-out questions, by task")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_OUT)
    p.add_argument("--n-per-task", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("docs/demo_router_load.png"))
    args = p.parse_args(argv)
    labels, counts = expert_counts(args.model, args.n_per_task)
    total = sum(counts.values())
    print(f"{'router':<16} {'slots':>7} {'hottest/mean':>13} {'coldest/mean':>13} {'within one task':>16}"
          "  per-task hottest expert")
    for r, label in enumerate(labels):
        mean = total[r].mean()
        hottest = " ".join(f"{t}:{int(counts[t][r].argmax())}" for t in TASKS)
        per_task = max(counts[t][r].max() / counts[t][r].mean() for t in TASKS)  # the skew one workload sees
        print(f"{label:<16} {int(total[r].sum()):>7} "
              f"{total[r].max() / mean:>13.2f} {total[r].min() / mean:>13.2f} {per_task:>16.2f}  {hottest}")
    plot(labels, counts, args.out)
    print(f"wrote {args.out}")
    print(f"hottest expert / mean load (max over layers): {max(total[r].max() / total[r].mean() for r in range(len(labels))):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
