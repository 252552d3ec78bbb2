"""GPU: engine vs HF transformers eager ``generate`` on an OLMoE-shaped random MoE (bf16), in one run.

The model has OLMoE-1B-7B's shape (16 layers, hidden 2048, 16 heads of 128, 64 experts of width 1024,
top-8, vocab 50304; 6.9 B parameters) in the Qwen3-MoE family, with random weights built on the GPU.
Both systems get the same ``--batch`` requests (``--prompt-len`` random token ids, ``--new-tokens``
greedy tokens, EOS ignored).

Reported: HF tokens/s; the engine's end-to-end tokens/s and its steady decode-step time; the decode
throughput as a percentage of the weights-only memory-bandwidth roofline (``batch / (weight bytes /
measured copy bandwidth)``, gpt-fast style) and of the weights+KV floor. The last line is
``engine/hf throughput ratio: X.XX``.

    python benchmarks/gpu_engine_vs_hf.py [--batch 128] [--prompt-len 128] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from xdeepserve.engine.config import EngineConfig
from xdeepserve.engine.core import EngineCore
from xdeepserve.engine.request import SamplingParams
from xdeepserve.model.loader import GenerationDefaults, ModelBundle, from_hf_model

OLMOE_SHAPE = dict(
    vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
    head_dim=128, intermediate_size=1024, moe_intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
    norm_topk_prob=False, max_position_embeddings=4096, rms_norm_eps=1e-5, initializer_range=0.02,
    tie_word_embeddings=False,
)


TINY_SHAPE = dict(OLMOE_SHAPE, vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=32, moe_intermediate_size=64, num_experts=8,
                  num_experts_per_tok=2)  # --tiny: a CPU smoke test of this script, not a measurement


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth_bytes_per_s(device: str, nbytes: int = 2 << 30) -> float:
    """Device-to-device copy rate, counting bytes read and written (gpt-fast's convention)."""
    if not device.startswith("cuda"):
        nbytes = 64 << 20
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    _sync(device)
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    _sync(device)
    return 2 * nbytes * 10 / (time.perf_counter() - t)


def build_hf(seed: int, shape: dict, device: str):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(**shape)
    with torch.device(device):
        model = Qwen3MoeForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def hf_generate(model, prompts: torch.Tensor, new_tokens: int, device: str) -> tuple[float, torch.Tensor]:
    model.generation_config.eos_token_id = None
    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompts[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        _sync(device)
        t = time.perf_counter()
        out = model.generate(prompts, **kw)
        _sync(device)
    return time.perf_counter() - t, out[:, prompts.shape[1] :].cpu()


def engine_generate(core: EngineCore, prompts: torch.Tensor, new_tokens: int, device: str):
    sp = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    # warm-up: capture the graphs this batch will use (a production server does this at start-up)
    for i, p in enumerate(prompts.tolist()):
        core.add_request(f"warm{i}", p, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    core.run_until_done()
    for i, p in enumerate(prompts.tolist()):
        core.add_request(f"r{i}", p, sp)
    outs: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    decode_times = []
    _sync(device)
    t0 = time.perf_counter()
    while core.has_work():
        decode_only = all(r.num_computed_tokens == r.num_tokens - 1 for r in core.scheduler.running) and not core.scheduler.waiting
        ts = time.perf_counter()
        for o in core.step():
            outs[o.request_id].extend(o.new_token_ids)
        if decode_only:
            decode_times.append(time.perf_counter() - ts)  # step() returns after the host sync of sampling
    total = time.perf_counter() - t0
    return total, torch.tensor([outs[f"r{i}"] for i in range(len(prompts))]), decode_times


def profile_decode(core: EngineCore, prompts: torch.Tensor, new_tokens: int) -> None:
    """GPU time of one graph replay (CUDA events), and the top kernels of one eager decode step."""
    from torch.profiler import ProfilerActivity, profile

    sp = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts.tolist()):
        core.add_request(f"p{i}", p, sp)
    while core.scheduler.waiting or any(r.num_computed_tokens < r.num_tokens - 1 for r in core.scheduler.running):
        core.step()
    for _ in range(3):
        core.step()
    (b, k), (graph, _) = max(core.runner.graphs.graphs.items())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    print(f"graph replay alone (batch {b}, context bucket {k}): {start.elapsed_time(end) / 10:.2f} ms")
    graphs, core.runner.graphs = core.runner.graphs, None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        core.step()
        torch.cuda.synchronize()
    core.runner.graphs = graphs
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    core.run_until_done()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--tiny", action="store_true", help="smoke-test the script on a tiny shape (CPU ok)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", action="store_true", help="print graph replay time and top kernels")
    args = ap.parse_args()
    dev = args.device
    shape = TINY_SHAPE if args.tiny else OLMOE_SHAPE
    device_name = torch.cuda.get_device_properties(0).name if dev.startswith("cuda") else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}")
    bw = copy_bandwidth_bytes_per_s(dev)
    print(f"measured copy bandwidth: {bw / 1e12:.2f} TB/s")

    t = time.perf_counter()
    hf = build_hf(args.seed, shape, dev)
    ours = from_hf_model(hf, max_positions=4096)
    n_params = sum(p.numel() for p in hf.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for n, p in ours.named_parameters() if "embed_tokens" not in n)
    print(f"model: {n_params / 1e9:.2f} B params, {weight_bytes / 2**30:.1f} GiB read per decode step; "
          f"built in {time.perf_counter() - t:.0f} s")

    gen = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(5, shape["vocab_size"], (args.batch, args.prompt_len), generator=gen)

    t_hf, hf_tokens = hf_generate(hf, prompts.to(dev), args.new_tokens, dev)
    n_tokens = args.batch * args.new_tokens
    print(f"HF generate: {t_hf:.2f} s, {n_tokens / t_hf:.1f} tok/s")
    del hf
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()

    max_len = args.prompt_len + args.new_tokens + 16
    cfg = EngineConfig(model="olmoe-shaped-random", device=dev, dtype="bfloat16", max_model_len=max_len,
                       max_num_seqs=args.batch, max_num_batched_tokens=8192,
                       kv_cache_memory_bytes=6 << 30, enable_prefix_caching=False)
    bundle = ModelBundle(None, ours.config, ours, None, GenerationDefaults())
    core = EngineCore(cfg, bundle)
    t_eng, eng_tokens, decode_times = engine_generate(core, prompts, args.new_tokens, dev)
    graph_steps = len(core.runner.graphs.graphs) if core.runner.graphs else 0
    print(f"engine: {t_eng:.2f} s; CUDA graphs captured: {graph_steps}")
    if args.profile and core.runner.graphs:
        profile_decode(core, prompts, args.new_tokens)
    del core
    step = sorted(decode_times)[len(decode_times) // 2]
    decode_tps = args.batch / step
    roofline_tps = args.batch / (weight_bytes / bw)
    kv_bytes = ours.config.kv_bytes_per_token(2) * args.batch * (args.prompt_len + args.new_tokens // 2)
    floor_tps = args.batch / ((weight_bytes + kv_bytes) / bw)
    same_first = (eng_tokens[:, :4] == hf_tokens[:, :4]).all(dim=1).float().mean().item()

    core_eager = EngineCore(EngineConfig(**{**cfg.__dict__, "cuda_graphs": False}), bundle)
    t_eager, eager_tokens, eager_steps = engine_generate(core_eager, prompts, args.new_tokens, dev)
    eager_step = sorted(eager_steps)[len(eager_steps) // 2]
    graph_vs_eager = (eager_tokens == eng_tokens).float().mean().item()

    rows = [
        ("HF generate (eager)", t_hf, n_tokens / t_hf, None),
        ("engine, eager decode", t_eager, n_tokens / t_eager, eager_step),
        ("engine, CUDA-graph decode", t_eng, n_tokens / t_eng, step),
    ]
    print(f"{'system':<28}{'seconds':>9}{'tok/s':>10}{'decode step ms':>16}")
    for name, secs, tps, st in rows:
        print(f"{name:<28}{secs:>9.2f}{tps:>10.1f}{(f'{st * 1e3:.2f}' if st else '-'):>16}")
    print(f"engine decode throughput: {decode_tps:.0f} tok/s = {100 * decode_tps / roofline_tps:.1f} % of the "
          f"weights-only roofline ({roofline_tps:.0f} tok/s), {100 * decode_tps / floor_tps:.1f} % of the weights+KV floor")
    print(f"first 4 greedy tokens equal to HF: {100 * same_first:.0f} % of requests (bf16 batch numerics differ)")
    print(f"graph vs eager engine tokens identical: {100 * graph_vs_eager:.1f} %")
    result = dict(
        device=device_name, batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
        bandwidth_tb_s=bw / 1e12, hf_tok_s=n_tokens / t_hf, engine_tok_s=n_tokens / t_eng,
        engine_eager_tok_s=n_tokens / t_eager, decode_step_ms=step * 1e3, eager_decode_step_ms=eager_step * 1e3,
        decode_tok_s=decode_tps, roofline_tok_s=roofline_tps, pct_roofline=100 * decode_tps / roofline_tps,
        pct_floor_with_kv=100 * decode_tps / floor_tps, decode_vs_hf=decode_tps / (n_tokens / t_hf),
        ratio=(n_tokens / t_eng) / (n_tokens / t_hf),
    )
    if args.json or os.environ.get("OUT"):
        path = args.json or os.path.join(os.environ["OUT"], f"gpu_bench_b{args.batch}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print(f"engine decode / hf throughput: {result['decode_vs_hf']:.2f}")
    print(f"engine/hf throughput ratio: {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
