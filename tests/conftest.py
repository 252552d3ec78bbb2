"""Shared fixtures. Tiny checkpoints are built once per test session (offline, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdeepserve.model.builder import make_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(arch, seed=0) -> Path`` of a tiny random HF checkpoint, cached per session."""
    made: dict[tuple[str, int], Path] = {}

    def get(arch: str, seed: int = 0) -> Path:
        key = (arch, seed)
        if key not in made:
            made[key] = make_model(arch, tmp_path_factory.mktemp(f"{arch}-{seed}"), seed=seed)
        return made[key]

    return get


# ---- api_server: a real `xds serve` process for the OpenAI API tests ---------------------------------------

API_SERVER_MAX_MODEL_LEN = 1024
_API_SERVER_CODE = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from xdeepserve.api.server import run_server
from xdeepserve.engine.config import EngineConfig
run_server(EngineConfig(model=sys.argv[1], max_model_len=int(sys.argv[3]), kv_cache_memory_bytes=64 * 2**20),
           "127.0.0.1", int(sys.argv[2]), log_level="warning")
"""


@pytest.fixture(scope="session")
def api_server(tmp_path_factory):
    """A server process on 127.0.0.1 serving a tiny qwen3_moe checkpoint; stopped with SIGTERM at the end.

    Yields an object with ``base_url`` (``http://127.0.0.1:PORT``), ``model`` (the served name),
    ``model_dir`` and ``max_model_len``.
    """
    import signal
    import socket
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    import httpx

    root = tmp_path_factory.mktemp("api-server")
    model_dir = make_model("qwen3_moe", root / "tiny-qwen3-moe", seed=0)
    with socket.socket() as s:  # a free port; the tiny race with other processes is acceptable in tests
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _API_SERVER_CODE, str(model_dir), str(port), str(API_SERVER_MAX_MODEL_LEN)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the API server exited with code {proc.returncode} during startup:\n{log_tail()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the API server did not become healthy within 180 s:\n{log_tail()}")
        time.sleep(0.3)

    yield SimpleNamespace(base_url=base_url, model=model_dir.name, model_dir=model_dir,
                          max_model_len=API_SERVER_MAX_MODEL_LEN, log_tail=log_tail)

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the API server did not exit within 30 s of SIGTERM:\n{log_tail()}")
    if proc.returncode != 0:
        pytest.fail(f"the API server exited with code {proc.returncode} after SIGTERM:\n{log_tail()}")
