"""Command line entry point ``sdwn-mcast``.

Subcommands: ``topology`` (describe a multi-domain topology), ``simulate`` (live stepping),
``dataset`` (write an offline snapshot dataset), ``tree`` (build one multicast tree), ``eval`` (the
evaluation harness), ``repair`` (incremental repair vs rebuilding), ``control`` (start the
multi-process control plane and serve one tree request), ``train`` (multi-agent PPO, MA-CDMR) and
``compare`` (offline+online vs online-only, MAPPO vs IPPO).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .simulator import WEIGHTS

#: ``sdwn-mcast train --preset`` names (``marl.train.PRESETS``; listed here so the CLI starts without torch)
TRAIN_PRESETS = ["tiny", "paper30", "geant",
                 *(f"{t}-{o}" for t in ("paper30", "geant") for o in ("delay", "loss", "cost"))]


class CliError(ValueError):
    """Bad command-line input found after parsing (reported as ``sdwn-mcast: error: ...``, exit code 2)."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value
    parse.__name__ = "positive int" if lo == 1 else "non-negative int"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _members(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"members must be node ids separated by commas: {text!r}") from exc


def cmd_topology(args) -> int:
    from .topology import load_topology

    t = load_topology(args.name, n_domains=args.domains, seed=args.seed)
    print(f"{t.name}: {t.graph.number_of_nodes()} nodes, {t.graph.number_of_edges()} links, "
          f"{t.n_domains} domains, {len(t.inter_domain_links)} inter-domain links")
    for d in range(t.n_domains):
        print(f"  D{d + 1}: {len(t.domain_nodes(d))} nodes, {len(t.intra_domain_links(d))} intra links, "
              f"boundary {sorted(t.boundary_nodes(d))}")
    print(f"  inter-domain links: {list(t.inter_domain_links)}")
    return 0


def cmd_simulate(args) -> int:
    from .simulator import LinkStateSimulator
    from .topology import load_topology

    t = load_topology(args.topology, n_domains=args.domains, seed=args.seed)
    sim = LinkStateSimulator(t, seed=args.seed)
    print("step  hour   up  free_bw_med  delay_med_ms  loss_max")
    for s in sim.run(args.steps):
        if s.step % args.every == 0:
            u = s.up
            print(f"{s.step:5d} {s.hour:5.2f} {int(u.sum()):4d} {np.median(s.free_bw_mbps[u]):11.2f} "
                  f"{np.median(s.delay_ms[u]):13.3f} {s.loss[u].max():9.3f}")
    return 0


def cmd_dataset(args) -> int:
    from .dataset import generate_dataset
    from .topology import load_topology

    t = load_topology(args.topology, n_domains=args.domains, seed=args.seed)
    out = generate_dataset(t, args.snapshots, args.out, seed=args.seed, every_n_steps=args.every,
                           progress=True)
    print(f"wrote {args.snapshots} snapshots of {t.name} to {out}")
    return 0


def cmd_tree(args) -> int:
    from .evaluation import build_tree, tree_metrics
    from .simulator import LinkStateSimulator
    from .topology import load_topology
    from .trees import validate_tree

    t = load_topology(args.topology, n_domains=args.domains, seed=args.seed)
    sim = LinkStateSimulator(t, seed=args.seed)
    for _ in range(args.step + 1):
        snap = sim.step()
    g = snap.to_graph()
    t0 = time.perf_counter()
    tree = build_tree(args.method, t, g, args.source, tuple(args.members), args.weight)
    ms = (time.perf_counter() - t0) * 1e3
    validate_tree(g, tree, args.source, args.members)
    print(f"{args.method} tree on {t.name} at step {snap.step} ({ms:.1f} ms): {sorted(tree.edges)}")
    for k, v in tree_metrics(g, tree, args.source, tuple(args.members), args.weight).items():
        print(f"  {k}: {v:.4f}")
    return 0


def cmd_eval(args) -> int:
    from dataclasses import replace

    from .evaluation import (
        MARL_METHOD,
        QUICK_CONFIG,
        EvalConfig,
        MarlCheckpointError,
        bottleneck_ratio,
        invalid_rate,
        metric_ratio,
        run_evaluation,
        write_outputs,
    )

    cfg = QUICK_CONFIG if args.quick else EvalConfig()
    over = {k: v for k, v in {
        "topologies": tuple(args.topologies) if args.topologies else None,
        "methods": tuple(m for arg in args.methods for m in arg.split(",") if m) if args.methods else None,
        "marl_checkpoint": args.marl_checkpoint,
        "n_requests": args.requests, "cost_weight": args.weight, "seed": args.seed,
        "n_domains": args.domains}.items() if v is not None}
    cfg = replace(cfg, **over)
    t0 = time.perf_counter()
    try:
        result = run_evaluation(cfg, progress=not args.no_progress)
    except MarlCheckpointError as exc:
        raise CliError(f"eval: {exc}") from None
    paths = write_outputs(result, args.out)
    print(paths["summary"].read_text())
    print(f"wrote {paths['csv']}, {paths['summary']} and {len(paths) - 2} plots to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    df = result.rows
    kmb = df[(df.method == "kmb") & df.valid]["cost_ratio"].dropna()
    if len(kmb):
        print(f"kmb cost ratio to optimum (mean): {kmb.mean():.3f}")
    if MARL_METHOD in cfg.methods:
        bad, n = invalid_rate(df, MARL_METHOD)
        t = df[(df.method == MARL_METHOD) & df.valid]["decision_time_ms"]
        print(f"marl checkpoint: {result.extra['marl_checkpoint']}")
        print(f"marl invalid/failed trees: {bad}/{n}; decision time (mean): {t.mean():.2f} ms")
        if "kmb" in cfg.methods:
            ratio = bottleneck_ratio(df, MARL_METHOD, "kmb")
            print(f"marl vs kmb: mean over {len(ratio)} requests of marl / kmb bottleneck bandwidth, kmb weighted "
                  f"by {cfg.cost_weight} (the eval cost weight; kmb-bw is KMB weighted by 1/bandwidth)")
            if "kmb-bw" in cfg.methods:
                print(f"marl vs kmb-bw bottleneck bandwidth ratio (mean): "
                      f"{bottleneck_ratio(df, MARL_METHOD, 'kmb-bw').mean():.3f}")
            print(f"marl vs kmb bottleneck bandwidth ratio (mean): {ratio.mean():.3f}")
    # the delay- and loss-weighted variants against KMB with the same weighting (kmb: delay, kmb-loss)
    for method, ref, metric in (("marl-delay", "kmb", "mean_link_delay_ms"), ("marl-loss", "kmb-loss", "mean_link_loss")):
        if method not in cfg.methods:
            continue
        bad, n = invalid_rate(df, method)
        print(f"{method} checkpoint: {result.extra[f'{method}_checkpoint']}")
        print(f"{method} invalid/failed trees: {bad}/{n}")
        if ref in cfg.methods:
            a = df[(df.method == method) & df.valid][metric].mean()
            b = df[(df.method == ref) & df.valid][metric].mean()
            r = metric_ratio(df, method, ref, metric)
            print(f"{method} vs {ref} {metric}: {a:.4f} vs {b:.4f} (mean of per-request ratios {r.mean():.3f} "
                  f"over {len(r)} requests)")
    # the cost-minimising variant against the exact optimum (ILP) and KMB on the same requests
    if "marl-cost" in cfg.methods:
        bad, n = invalid_rate(df, "marl-cost")
        print(f"marl-cost checkpoint: {result.extra['marl-cost_checkpoint']}")
        print(f"marl-cost invalid/failed trees: {bad}/{n}")
        key = ["topology", "request_id"]
        mc = df[(df.method == "marl-cost") & df.valid].set_index(key)["cost_ratio"].dropna()
        if len(mc):
            line = (f"marl-cost cost ratio to optimum ({cfg.cost_weight}): mean {mc.mean():.3f}, "
                    f"worst {mc.max():.3f} over {len(mc)} requests")
            if "kmb" in cfg.methods:
                km = df[(df.method == "kmb") & df.valid].set_index(key)["cost_ratio"].dropna()
                both = mc.index.intersection(km.index)
                line += (f"; kmb on the same requests: mean {km.loc[both].mean():.3f}, "
                         f"worst {km.loc[both].max():.3f}")
            print(line)
    return 0


def cmd_repair(args) -> int:
    from pathlib import Path

    from .evaluation import (
        cpu_model,
        repair_summary_markdown,
        run_marl_session_evaluation,
        run_repair_evaluation,
        session_summary_markdown,
    )

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.marl:
        df = run_marl_session_evaluation(tuple(args.topologies), args.requests, args.events, seed=args.seed,
                                         checkpoint_dir=args.marl_checkpoint, progress=not args.no_progress,
                                         objective=args.marl_objective)
        df.to_csv(out / "sessions.csv", index=False, float_format="%.6g")
        text = session_summary_markdown(df, cpu_model())
        (out / "sessions.md").write_text(text)
        print(text)
        served = df[df.kmb_served]
        print(f"wrote {out / 'sessions.csv'} and {out / 'sessions.md'} in {time.perf_counter() - t0:.1f} s")
        print(f"marl served {int(served.served.sum())}/{len(served)} events KMB could serve "
              "(a served tree passed validation)")
        return 0
    df = run_repair_evaluation(tuple(args.topologies), args.requests, seed=args.seed,
                               progress=not args.no_progress)
    df.to_csv(out / "repair.csv", index=False, float_format="%.6g")
    text = repair_summary_markdown(df, cpu_model())
    (out / "repair.md").write_text(text)
    print(text)
    print(f"wrote {out / 'repair.csv'} and {out / 'repair.md'} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_control(args) -> int:
    from .control.launcher import ControlPlane, FaultConfig
    from .trees import UnknownNodeError

    try:
        faults = FaultConfig(drop_prob=args.drop, dup_prob=args.dup, max_delay_ms=args.delay_ms, seed=args.seed)
    except ValueError as exc:
        raise CliError(f"fault injection: {exc}") from None
    checkpoint = args.marl_checkpoint
    if args.policy == "marl" and checkpoint is None and args.marl_objective != "bandwidth":
        from .evaluation import committed_checkpoint_for
        from .topology import load_topology

        checkpoint = str(committed_checkpoint_for(load_topology(args.topology, seed=args.seed), args.marl_objective))
    elif args.policy != "marl" and (checkpoint is not None or args.marl_objective != "bandwidth"):
        raise CliError("control: --marl-checkpoint and --marl-objective need --policy marl")
    plane = ControlPlane(args.topology, sync_period_s=args.sync_period, faults=faults, seed=args.seed,
                         marl=args.policy == "marl", marl_checkpoint=checkpoint)
    unknown = [n for n in (args.source, *args.members) if n not in plane.topology.domain_of]
    if unknown:  # fail before starting any controller process
        plane.close()
        raise UnknownNodeError(f"APs {unknown} are not nodes of {plane.topology.name}")
    with plane as cp:
        client = cp.client()
        for m in args.members:
            client.join(group=1, member=m)
        deadline = time.monotonic() + 10 * args.sync_period + 5
        view = client.group_view(1)
        while set(view.members) != set(args.members) and time.monotonic() < deadline:
            time.sleep(args.sync_period / 4)  # membership reaches the root with the next domain report
            view = client.group_view(1)
        print(f"group 1 view v{view.version}: members by domain {view.members_by_domain}")
        latencies = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            commit = client.request_tree(group=1, source=args.source, timeout_s=10.0, policy=args.policy)
            latencies.append((time.perf_counter() - t) * 1e3)
        print(f"tree commit v{commit.version} for request {commit.request_id} ({args.policy}): "
              f"{sorted(commit.edges)}")
        print(f"end-to-end tree request latency ({args.policy}, client -> root -> domains -> commit, "
              f"{args.repeat} requests): median {np.median(latencies):.1f} ms, max {max(latencies):.1f} ms")
        client.close()
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    from .dataset import DatasetError
    from .marl.train import PRESETS, TrainConfigError, train

    over = {k: v for k, v in {"critic": args.critic, "source": args.source, "episodes": args.episodes,
                              "bc_episodes": args.bc_episodes, "dataset_dir": args.dataset,
                              "seed": args.seed, "expert": args.expert, "init_from": args.init_from,
                              "lr": args.lr, "topology": args.topology, "n_domains": args.domains,
                              "bc_epochs": args.bc_epochs, "reentry": args.reentry}.items() if v is not None}
    try:
        cfg = replace(PRESETS[args.preset], **over)
        r = train(cfg, args.out, progress=not args.no_progress)
    except (TrainConfigError, DatasetError, FileNotFoundError) as exc:
        raise CliError(f"train: {exc}") from None
    print(f"{r['episodes']} episodes in {r['seconds']:.1f} s: valid-tree rate {r['valid_rate']:.2f}, mean return "
          f"first fifth {r['first_return']:.3f} -> last fifth {r['last_return']:.3f}")
    print(f"wrote {r['checkpoint']}, {r['config']}, {r['csv']} and {r['png']}")
    return 0


def cmd_compare(args) -> int:
    from dataclasses import replace

    from .marl.compare import CompareConfig, run_comparison, write_comparison
    from .marl.train import PRESETS, TrainConfigError

    preset = PRESETS[args.preset]
    try:
        cfg = CompareConfig(topology=preset.topology, n_domains=preset.n_domains, seeds=tuple(args.seeds),
                            online_episodes=args.online_episodes, window=args.window,
                            offline=replace(preset, episodes=args.offline_episodes))
        rows = run_comparison(cfg, args.work, progress=not args.no_progress)
    except TrainConfigError as exc:
        raise CliError(f"compare: {exc}") from None
    out = write_comparison(rows, cfg, args.out)
    print((out["summary"]).read_text())
    print(f"wrote {', '.join(str(p) for p in out.values())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdwn-mcast", description="Cross-domain SDWN multicast routing")
    sub = p.add_subparsers(dest="command")

    def topo_args(sp, default="paper30"):
        sp.add_argument("--topology", default=default, help="paper30, paper9, geant, abilene, germany50, "
                        "waxman<N>, sbm<N> or a topohub key")
        sp.add_argument("--domains", type=positive_int, default=None,
                        help="number of domains (real/synthetic graphs; not for paper30/paper9)")
        sp.add_argument("--seed", type=int, default=0)

    sp = sub.add_parser("topology", help="describe a multi-domain topology")
    sp.add_argument("name")
    sp.add_argument("--domains", type=positive_int, default=None,
                    help="number of domains (real/synthetic graphs; not for paper30/paper9)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_topology)

    sp = sub.add_parser("simulate", help="step the link-state simulator live and print summaries")
    topo_args(sp)
    sp.add_argument("--steps", type=positive_int, default=360)
    sp.add_argument("--every", type=positive_int, default=30)
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("dataset", help="write an offline snapshot dataset (.npz + meta.json)")
    topo_args(sp)
    sp.add_argument("--snapshots", type=positive_int, default=8640, help="number of snapshots (8640 = one day at 10 s)")
    sp.add_argument("--every", type=positive_int, default=1, help="record every n-th simulator step")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_dataset)

    sp = sub.add_parser("tree", help="build one multicast tree on a simulated snapshot")
    topo_args(sp)
    sp.add_argument("--method", default="kmb")
    sp.add_argument("--source", type=int, required=True)
    sp.add_argument("--members", type=_members, required=True)
    sp.add_argument("--weight", default="delay_ms", choices=WEIGHTS)
    sp.add_argument("--step", type=non_negative_int, default=0, help="simulator step of the snapshot")
    sp.set_defaults(func=cmd_tree)

    sp = sub.add_parser("eval", help="run methods on seeded requests; CSV, Markdown and PNG outputs")
    sp.add_argument("--quick", action="store_true", help="paper30, abilene and geant, 30 requests each (well under 5 min)")
    sp.add_argument("--topologies", nargs="+")
    sp.add_argument("--methods", nargs="+")
    sp.add_argument("--requests", type=positive_int)
    sp.add_argument("--weight", choices=WEIGHTS)
    sp.add_argument("--domains", type=positive_int,
                    help="domains of the partitioned topologies (paper30/paper9 keep their fixed domains)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--marl-checkpoint", help="training output folder for the marl method "
                    "(default: the committed paper30 checkpoint)")
    sp.add_argument("--out", default="out/sdwn_eval", help="output folder (default out/sdwn_eval)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("repair", help="incremental repair (join/leave/link failure) vs rebuilding")
    sp.add_argument("--topologies", nargs="+", default=["paper30", "geant", "germany50"])
    sp.add_argument("--requests", type=positive_int, default=100, help="requests (sessions with --marl)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--marl", action="store_true",
                    help="sessions under churn and link failures, every event answered by the learned agents")
    sp.add_argument("--events", type=positive_int, default=6, help="events per session (--marl)")
    sp.add_argument("--marl-checkpoint", help="training output folder (default: the committed checkpoints)")
    sp.add_argument("--marl-objective", choices=["bandwidth", "delay", "loss", "cost"], default="bandwidth",
                    help="--marl: the committed agents of this objective (default bandwidth)")
    sp.add_argument("--out", default="out/sdwn_eval", help="output folder (default out/sdwn_eval)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_repair)

    sp = sub.add_parser("control", help="start root + domain controllers on 127.0.0.1 and serve one tree")
    sp.add_argument("--topology", default="paper30")
    sp.add_argument("--source", type=int, default=1)
    sp.add_argument("--members", type=_members, default=[5, 14, 25, 30])
    sp.add_argument("--sync-period", type=_positive_float, default=0.5)
    sp.add_argument("--drop", type=float, default=0.0, help="injected message drop probability")
    sp.add_argument("--dup", type=float, default=0.0, help="injected duplicate probability")
    sp.add_argument("--delay-ms", type=float, default=0.0, help="max injected extra delay")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--policy", choices=["kmb", "marl"], default="kmb",
                    help="who decides the tree: the root's plan + KMB segments, or the trained agents")
    sp.add_argument("--marl-objective", choices=["bandwidth", "delay", "loss", "cost"], default="bandwidth",
                    help="--policy marl: serve the committed agents of this objective (default bandwidth)")
    sp.add_argument("--marl-checkpoint", help="--policy marl: serve this training output instead")
    sp.add_argument("--repeat", type=positive_int, default=1, help="tree requests to time")
    sp.set_defaults(func=cmd_control)

    sp = sub.add_parser("train", help="train the MA-CDMR agents with multi-agent PPO (checkpoint, CSV, PNG)")
    sp.add_argument("--preset", choices=TRAIN_PRESETS, default="tiny")
    sp.add_argument("--reentry", action=argparse.BooleanOptionalAction, default=None,
                    help="cost objectives: may the root enter a domain more than once (presets: yes)")
    sp.add_argument("--critic", choices=["central", "local"], help="central = MAPPO (default), local = IPPO")
    sp.add_argument("--source", choices=["offline", "online"], help="replay snapshots or a live simulator")
    sp.add_argument("--dataset", help="offline snapshot dataset folder (from `sdwn-mcast dataset`)")
    sp.add_argument("--episodes", type=positive_int)
    sp.add_argument("--bc-episodes", type=non_negative_int, help="expert episodes for a BC warm start (0: none)")
    sp.add_argument("--bc-epochs", type=positive_int, help="behaviour-cloning passes over the expert data")
    sp.add_argument("--expert", choices=["widest", "composed-kmb"], help="behaviour-cloning teacher")
    sp.add_argument("--topology", help="override the preset's topology (paper30, geant, waxman300, ...)")
    sp.add_argument("--domains", type=positive_int, help="domains of a partitioned topology (not paper30/paper9)")
    sp.add_argument("--init-from", help="start from this training output (offline pre-training -> online)")
    sp.add_argument("--lr", type=_positive_float, help="PPO learning rate")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", default="out/sdwn_train", help="output folder (default out/sdwn_train)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("compare", help="offline+online vs online-only and MAPPO vs IPPO training, same seeds")
    sp.add_argument("--preset", choices=["tiny", "paper30", "geant"], default="paper30",
                    help="topology and offline pre-training settings")
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sp.add_argument("--online-episodes", type=positive_int, default=3000)
    sp.add_argument("--offline-episodes", type=positive_int, default=800, help="offline PPO episodes after BC")
    sp.add_argument("--window", type=positive_int, default=100, help="moving-mean window for convergence")
    sp.add_argument("--work", default="out/sdwn_compare", help="folder for the runs' checkpoints and logs")
    sp.add_argument("--out", default="docs/sdwn_eval/marl", help="folder for compare.csv/.md and the PNGs")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .control.transport import ControlPlaneError
    from .topology import TopologyError
    from .trees import MulticastError

    try:
        return int(args.func(args) or 0)
    except (TopologyError, MulticastError, ControlPlaneError, CliError, KeyError) as exc:
        print(f"sdwn-mcast: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
