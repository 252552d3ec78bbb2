"""Entry point of one process of a deployment (started by :mod:`.launch`)::

    python -m xdeepserve.pd.proc ROLE NAME --spec deploy.yaml --store HOST:PORT
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .spec import load_spec, parse_rendezvous

ROLES = ("group", "shell", "executor", "frontend")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xdeepserve.pd.proc")
    p.add_argument("role", choices=ROLES)
    p.add_argument("name")
    p.add_argument("--spec", required=True)
    p.add_argument("--store", required=True, help="the deployment's rendezvous HOST:PORT")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {args.name}: %(message)s")
    spec = load_spec(args.spec)
    store = parse_rendezvous(args.store, "--store")
    if args.role != "frontend":  # SIGTERM unwinds (sockets, shared memory); the frontend handles it itself
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.role == "group":
        from .group import run_group

        run_group(spec, args.name, store)
    elif args.role == "shell":
        from .shell import run_shell

        run_shell(spec, args.name, store)
    elif args.role == "executor":
        from .executor import run_executor

        run_executor(spec, args.name, store)
    else:
        from .frontend import run_frontend

        run_frontend(spec, args.name, store, log_level="warning" if args.log_level == "info" else args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
