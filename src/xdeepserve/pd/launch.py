"""``xds launch deploy.yaml``: start a deployment's processes, supervise them, stop them cleanly.

Without ``--host-id`` every process of the file starts on this machine (hosts that the file lists
separately are then simulated: their processes declare distinct host identities, so XCCL pairs between
them go over gloo/TCP instead of shared memory). With ``--host-id H`` only host H's share starts; the
first host of the file hosts the rendezvous store at ``--rendezvous`` (or the file's ``rendezvous``), the
others connect to it.

Each process logs to ``LOG_DIR/NAME.log``. The launcher reports a process that exits unexpectedly (the
others keep serving: no role is a single point of failure) and, on Ctrl-C or SIGTERM, stops frontends
first, then everything else (SIGTERM, SIGKILL after a grace period).
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..api.launch import free_port
from .spec import DeploymentSpec, SpecError, load_spec

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 10.0


@dataclass
class Child:
    role: str
    name: str
    proc: subprocess.Popen
    log_path: Path
    exited_reported: bool = False
    started_at: float = 0.0
    restarts: int = 0


class Deployment:
    """A running deployment (this host's share).

    ``with Deployment("deploy.yaml") as d: d.base_url`` — also the launcher behind ``xds launch``.
    """

    def __init__(self, spec_path: str | Path, *, host_id: str | None = None, rendezvous: tuple[str, int] | None = None,
                 log_dir: str | Path | None = None, log_level: str = "info", restart: bool = True) -> None:
        self.spec_path = Path(spec_path).resolve()
        self.spec: DeploymentSpec = load_spec(self.spec_path)
        if self.spec.colocated:
            raise SpecError(f"{spec_path}: a colocated deployment is one `xds serve` process (xds launch runs it)")
        if host_id is not None and host_id not in self.spec.hosts:
            raise SpecError(f"--host-id {host_id!r}: not a host of {spec_path} ({', '.join(self.spec.hosts)})")
        self.host_id = host_id
        if any(role in ("group", "frontend") for role, _ in self.spec.processes(host_id)):
            self.spec.model_dir()  # refused here, by name, rather than in every process's log
        self.rendezvous = rendezvous or self.spec.rendezvous
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="xds-deploy-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.children: dict[str, Child] = {}
        self.store = None
        self.restart = restart  # replace a process that exits unexpectedly (the others keep running)
        self.events: list[tuple[float, str]] = []  # (time, what happened), for operators and tests
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def hosts_store(self) -> bool:
        return self.host_id is None or self.host_id == next(iter(self.spec.hosts))

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.hosts[self.spec.frontend_host]}:{self.spec.port}/v1"

    # ---- start ---------------------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> Deployment:
        import torch.distributed as dist

        host, port = self.rendezvous
        if self.hosts_store:
            port = port or free_port(host)
            self.store = dist.TCPStore(host, port, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=ready_timeout_s))
        elif not port:
            raise SpecError("joining a multi-host deployment needs the rendezvous port (--rendezvous HOST:PORT)")
        self.rendezvous = (host, port)
        try:
            for role, name in self.spec.processes(self.host_id):
                self.spawn(role, name)
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(target=self._supervise, name="xds-supervisor", daemon=True)
        self._monitor.start()
        return self

    def spawn(self, role: str, name: str) -> Child:
        log_path = self.log_dir / f"{name.replace('/', '_')}.log"
        cmd = [sys.executable, "-m", "xdeepserve.pd.proc", role, name, "--spec", str(self.spec_path),
               "--store", f"{self.rendezvous[0]}:{self.rendezvous[1]}", "--log-level", self.log_level]
        with open(log_path, "ab") as f:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        old = self.children.get(name)
        child = self.children[name] = Child(role, name, proc, log_path, started_at=time.monotonic(),
                                            restarts=old.restarts + 1 if old else 0)
        return child

    def wait_ready(self, timeout_s: float) -> None:
        """Until every DP group and frontend of this host reported ready."""
        import torch.distributed as dist

        client = dist.TCPStore(self.rendezvous[0], self.rendezvous[1], is_master=False,
                               timeout=datetime.timedelta(seconds=timeout_s))
        waiting = [c for c in self.children.values() if c.role in ("group", "frontend")]
        deadline = time.monotonic() + timeout_s
        while waiting:
            for c in list(waiting):
                if client.check([f"ready/{c.name}"]):
                    waiting.remove(c)
                elif c.proc.poll() is not None:
                    raise RuntimeError(f"{c.name} exited with code {c.proc.returncode} during start-up; "
                                       f"its log ({c.log_path}) ends:\n{tail(c.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout_s:.0f} s: {', '.join(c.name for c in waiting)}")
            time.sleep(0.1)

    # ---- supervision -----------------------------------------------------------------------------------
    RESTART_BACKOFF_S = 2.0  # a process that dies again within this of its start waits this long

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                for c in list(self.children.values()):
                    if c.proc.poll() is None or c.exited_reported:
                        continue
                    c.exited_reported = True
                    self.events.append((time.monotonic(), f"{c.name} (pid {c.proc.pid}) exited with code {c.proc.returncode}"))
                    log.warning("%s (pid %d) exited with code %s; log: %s", c.name, c.proc.pid, c.proc.returncode,
                                c.log_path)
                    if self.restart and not self._stopping.is_set():
                        if time.monotonic() - c.started_at < self.RESTART_BACKOFF_S:
                            time.sleep(self.RESTART_BACKOFF_S)
                        new = self.spawn(c.role, c.name)
                        self.events.append((time.monotonic(), f"{c.name} replaced by pid {new.proc.pid}"))

    def check(self) -> list[str]:
        """What happened since the last call (exits and replacements), oldest first."""
        with self._lock:
            events, self.events = self.events, []
        return [what for _, what in events]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal one process (fault tests); returns its pid."""
        c = self.children[name]
        os.kill(c.proc.pid, sig)
        return c.proc.pid

    def pid(self, name: str) -> int:
        return self.children[name].proc.pid

    # ---- stop ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(5)
        order = [[c for c in self.children.values() if c.role == "frontend"],
                 [c for c in self.children.values() if c.role != "frontend"]]
        for batch in order:
            for c in batch:
                if c.proc.poll() is None:
                    c.proc.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            for c in batch:
                try:
                    c.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s; killing it", c.name, STOP_GRACE_S)
                    c.proc.kill()
                    c.proc.wait(5)
        self.store = None

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def launch_main(spec_path: str, host_id: str | None, rendezvous: str | None, log_dir: str | None,
                log_level: str = "info") -> int:
    """``xds launch``: run until Ctrl-C / SIGTERM."""
    from .spec import parse_rendezvous

    spec = load_spec(spec_path)
    if spec.colocated:
        from ..api.server import run_server

        config = spec.engine_config(None, spec.model_dir())
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_server(config, spec.hosts[next(iter(spec.hosts))], spec.port, log_level=log_level)
        return 0
    stop = {"flag": False}

    def on_signal(sig, _frame) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dep = Deployment(spec_path, host_id=host_id, rendezvous=parse_rendezvous(rendezvous) if rendezvous else None,
                     log_dir=log_dir, log_level=log_level)
    print(f"xds launch: starting {len(spec.processes(host_id))} processes (logs in {dep.log_dir})", flush=True)
    dep.start()
    share = f"host {host_id}" if host_id else "all hosts"
    print(f"xds launch: ready ({share}); rendezvous {dep.rendezvous[0]}:{dep.rendezvous[1]}; "
          f"API at {dep.base_url}", flush=True)
    try:
        while not stop["flag"]:
            for what in dep.check():
                print(f"xds launch: {what}", file=sys.stderr, flush=True)
            time.sleep(0.2)
    finally:
        print("xds launch: stopping", flush=True)
        dep.stop()
    return 0
