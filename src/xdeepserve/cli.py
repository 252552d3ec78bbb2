"""``xds`` — the command line of xdeepserve.

    xds make-model --arch qwen3_moe --out DIR [--seed N]   tiny random checkpoint in HF format
    xds serve [--model DIR] [--host H] [--port P]           OpenAI-compatible server
    xds generate [--model DIR] --prompt TEXT ...            offline generation
    xds bench --base-url URL ...                            online load generator
    xds train-demo [--out DIR] [--seed N]                   retrain the built-in demo model
    xds launch deploy.yaml [--host-id H --rendezvous ADDR]  start a (disaggregated) deployment
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model.builder import ARCHITECTURES, make_model

DEMO_MODEL = Path(__file__).parent / "demo_model"


def demo_model_dir() -> Path:
    """The built-in demo checkpoint: a small trained DeepSeek-V3-architecture model with an MTP module,
    shipped in the package (``xds train-demo`` reproduces it)."""
    if not (DEMO_MODEL / "config.json").is_file():
        raise SystemExit(f"the demo checkpoint is missing from {DEMO_MODEL}: reinstall the package, "
                         f"rebuild it with `xds train-demo`, or pass --model DIR")
    return DEMO_MODEL


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory (default: the built-in demo model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--kv-cache-memory-mib", type=int, default=512)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--served-model-name", default=None)
    mtp = p.add_mutually_exclusive_group()
    mtp.add_argument("--mtp", dest="mtp", action="store_true", default=None,
                     help="speculative decoding with the checkpoint's DeepSeek MTP module (required)")
    mtp.add_argument("--no-mtp", dest="mtp", action="store_false",
                     help="ignore the MTP module (default: use it when the checkpoint has one)")


def _engine_config(args: argparse.Namespace):
    from .engine.config import EngineConfig

    return EngineConfig(
        model=str(args.model or demo_model_dir()),
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        kv_cache_memory_bytes=args.kv_cache_memory_mib * 2**20,
        enable_prefix_caching=not args.no_prefix_caching,
        served_model_name=args.served_model_name,
        mtp=args.mtp,
    )


def cmd_make_model(args: argparse.Namespace) -> int:
    if args.mtp and args.arch != "deepseek_v3":
        print("xds make-model: --mtp needs --arch deepseek_v3 (MTP modules are DeepSeek's)", file=sys.stderr)
        return 2
    out = make_model(args.arch, args.out, seed=args.seed, mtp=args.mtp)
    extra = " with an MTP module" if args.mtp else ""
    print(f"wrote a tiny random {args.arch} checkpoint{extra} to {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from .api.server import run_server

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(_engine_config(args), args.host, args.port, log_level=args.log_level)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.llm import LLM
    from .engine.request import SamplingParams

    cfg = _engine_config(args)
    llm = LLM(**cfg.__dict__)
    sp = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        stop=tuple(args.stop or ()),
    )
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], sp, use_tqdm=len(prompts) > 1)
    else:
        outs = llm.generate(prompts, sp, use_tqdm=len(prompts) > 1)
    for p, o in zip(prompts, outs):
        print(f"### {p}\n{o.text}\n[{len(o.token_ids)} tokens, finish_reason={o.finish_reason.value}]")
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    from .train_demo import main as train_demo_main

    return train_demo_main(args.rest) or 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.client import bench_main

    return bench_main(args) or 0


def cmd_launch(args: argparse.Namespace) -> int:
    from .pd.launch import launch_main
    from .pd.spec import SpecError

    try:
        return launch_main(args.spec, args.host_id, args.rendezvous, args.log_dir, args.log_level)
    except SpecError as e:
        print(f"xds launch: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a process failed to start (its log tail is in the message)
        print(f"xds launch: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds", description="xDeepServe: disaggregated MoE serving")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-model", help="write a tiny random checkpoint of a real architecture")
    p.add_argument("--arch", choices=ARCHITECTURES, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mtp", action="store_true", help="deepseek_v3: add one random MTP module")
    p.set_defaults(func=cmd_make_model)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    _engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="offline generation for scripts")
    _engine_args(p)
    p.add_argument("--prompt", action="append", help="prompt text (repeatable); default: one per stdin line")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message (chat template)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="online load generator against a running server")
    try:
        from .bench.client import add_bench_args

        add_bench_args(p)
    except ImportError:  # pragma: no cover - bench client not installed
        pass
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("launch", help="start the processes of a deployment file (PD-disaggregated or colocated)")
    p.add_argument("spec", help="deployment YAML (see xdeepserve/pd/spec.py and examples/deploy/)")
    p.add_argument("--host-id", default=None, help="start only this host's share of a multi-host deployment")
    p.add_argument("--rendezvous", default=None, help="HOST:PORT of the deployment's store (default: the file's)")
    p.add_argument("--log-dir", default=None, help="per-process logs (default: a new temporary directory)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("train-demo", help="train the built-in demo model (xds train-demo --help)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-demo"]:  # every option belongs to the trainer's own parser
        return cmd_train_demo(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
