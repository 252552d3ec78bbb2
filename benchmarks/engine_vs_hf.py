"""Engine vs HF transformers ``generate`` on the same tiny MoE and the same requests, in one run.

The workload (fixed seed): 64 requests with prompts of 16-512 random token ids and 16-256 output tokens
each, greedy, EOS ignored so every request produces exactly its output length. HF is driven the way a
user batches with it: fixed batches in arrival order, left padding, and ``max_new_tokens`` = the longest
output in the batch (``generate`` has no per-request length). It is run at each batch size of
``--hf-batch`` and the ratio is taken against its best. Both sides are credited only with the tokens
each request asked for.

The default model is the brief's "tiny MoE" (§6a) at its upper end: Qwen3-MoE with 4 layers, hidden
256, 8 heads of 32 (4 KV heads), 16 experts of width 128, top-2; random weights, fp32.

    python benchmarks/engine_vs_hf.py [--arch qwen3_moe] [--requests 64] [--device cpu]

The last line is ``engine/hf throughput ratio: X.XX``.
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time

import torch
from tqdm import tqdm

from xdeepserve.engine.llm import LLM
from xdeepserve.engine.request import SamplingParams
from xdeepserve.model.builder import hf_classes, make_model


def workload(n: int, vocab: int, seed: int, in_range=(16, 512), out_range=(16, 256)):
    rng = random.Random(seed)
    return [
        ([rng.randrange(5, vocab) for _ in range(rng.randint(*in_range))], rng.randint(*out_range))
        for _ in range(n)
    ]


def run_hf(path, reqs, batch: int, device: str, dtype: torch.dtype, arch: str) -> tuple[float, int, list[list[int]]]:
    model = hf_classes(arch)[1].from_pretrained(path, dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None
    pad = 0
    outputs, t0 = [], time.perf_counter()
    for i in tqdm(range(0, len(reqs), batch), desc="hf generate", leave=False):
        chunk = reqs[i : i + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (p, _) in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                max_new_tokens=max(n for _, n in chunk), pad_token_id=pad,
            )
        outputs += [out[row, width : width + n].tolist() for row, (_, n) in enumerate(chunk)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, sum(n for _, n in reqs), outputs


def run_engine(path, reqs, device: str, dtype: str) -> tuple[float, int, list[list[int]]]:
    llm = LLM(str(path), device=device, dtype=dtype, max_model_len=1024, max_num_seqs=64,
              max_num_batched_tokens=2048, kv_cache_memory_bytes=256 << 20)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for _, n in reqs]
    llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params, use_tqdm=True)
    return time.perf_counter() - t0, sum(len(o.token_ids) for o in outs), [o.token_ids for o in outs]


BENCH_MODEL = dict(
    hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
    intermediate_size=512, moe_intermediate_size=128, num_experts=16, num_experts_per_tok=2, mlp_only_layers=[],
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen3_moe")
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a fresh tiny random one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--hf-batch", default="16,64", help="comma-separated HF batch sizes to try")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine-only", action="store_true", help="skip HF (for A/B runs of the engine alone)")
    ap.add_argument("--no-paged-kernel", action="store_true",
                    help="decode attention by gather + SDPA instead of the paged kernel")
    args = ap.parse_args()
    if args.no_paged_kernel:
        from xdeepserve.model import paged_attention

        paged_attention.disable("--no-paged-kernel")
    torch.manual_seed(args.seed)
    overrides = BENCH_MODEL if args.arch == "qwen3_moe" else None
    path = args.model or make_model(args.arch, tempfile.mkdtemp(prefix="xds-bench-"), seed=args.seed, overrides=overrides)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    vocab = hf_classes(args.arch)[0].from_pretrained(path).vocab_size
    reqs = workload(args.requests, vocab, args.seed)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {args.device}, torch {torch.__version__}")
    print(f"workload: {len(reqs)} requests, prompt tokens {sum(len(p) for p, _ in reqs)}, "
          f"output tokens {sum(n for _, n in reqs)}")
    t_eng, n_eng, out_eng = run_engine(path, reqs, args.device, "auto")
    rows = [("xdeepserve engine", t_eng, n_eng)]
    if args.engine_only:
        print(f"xdeepserve engine: {t_eng:.2f} s, {n_eng / t_eng:.1f} output tok/s")
        return
    best_hf, same = 0.0, 0
    for batch in (int(b) for b in args.hf_batch.split(",")):
        t_hf, n_hf, out_hf = run_hf(path, reqs, batch, args.device, dtype, args.arch)
        rows.append((f"HF generate (batch {batch})", t_hf, n_hf))
        if n_hf / t_hf > best_hf:
            best_hf, same = n_hf / t_hf, sum(a == b for a, b in zip(out_eng, out_hf))
    print(f"{'system':<28}{'seconds':>10}{'output tok':>12}{'tok/s':>10}")
    for name, secs, n in rows:
        print(f"{name:<28}{secs:>10.2f}{n:>12}{n / secs:>10.1f}")
    print(f"requests with greedy output identical to the best HF run: {same}/{len(reqs)} "
          f"(left padding changes HF's numerics slightly)")
    print(f"engine/hf throughput ratio: {(n_eng / t_eng) / best_hf:.2f}")


if __name__ == "__main__":
    main()
