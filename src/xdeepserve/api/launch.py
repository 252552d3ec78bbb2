"""Start and stop an ``xds serve`` process (for the demo, benchmarks and tests)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


class ServerStartError(RuntimeError):
    """The server process exited or did not become healthy in time; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:  # the small race with other processes is acceptable for local runs
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(["--model", DIR]) as server: server.base_url`` — a real server on 127.0.0.1.

    Stopping sends SIGTERM and waits for a clean exit (the server drains and shuts its engine down).
    """

    def __init__(self, serve_args: list[str], *, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout_s: float = 180.0, log_path: Path | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.args = [sys.executable, "-m", "xdeepserve.cli", "serve", "--host", host, "--port", str(self.port),
                     *serve_args]
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="xds-server-")) / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise ServerStartError(f"server not healthy within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait; kill if it does not exit in time. Returns the exit code (0 = clean)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
