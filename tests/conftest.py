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
