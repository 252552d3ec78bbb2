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


@pytest.fixture(scope="session")
def api_server(tmp_path_factory):
    """A server process on 127.0.0.1 serving a tiny qwen3_moe checkpoint; stopped with SIGTERM at the end.

    Yields an object with ``base_url`` (``http://127.0.0.1:PORT``), ``model`` (the served name),
    ``model_dir``, ``max_model_len`` and ``log_tail()``.
    """
    from types import SimpleNamespace

    from xdeepserve.api.launch import ServerProcess, ServerStartError

    root = tmp_path_factory.mktemp("api-server")
    model_dir = make_model("qwen3_moe", root / "tiny-qwen3-moe", seed=0)
    server = ServerProcess(
        ["--model", str(model_dir), "--max-model-len", str(API_SERVER_MAX_MODEL_LEN), "--kv-cache-memory-mib", "64",
         "--log-level", "warning"],
        log_path=root / "server.log",
    )
    try:
        server.start()
    except ServerStartError as e:
        pytest.fail(str(e))

    yield SimpleNamespace(base_url=server.base_url, model=model_dir.name, model_dir=model_dir,
                          max_model_len=API_SERVER_MAX_MODEL_LEN, log_tail=server.log_tail)

    code = server.stop()
    if code != 0:
        pytest.fail(f"the API server exited with code {code} after SIGTERM:\n{server.log_tail()}")
