"""The one place where training and held-out phantom seeds are defined; the two ranges never overlap."""

from __future__ import annotations

TRAIN_SEEDS = range(0, 10_000)
VALIDATION_SEEDS = range(50_000, 51_000)
HELD_OUT_SEEDS = range(100_000, 101_000)


def held_out_seeds(n: int) -> list[int]:
    """The first ``n`` held-out seeds (the benchmark uses n >= 20); hyper-parameters never see them."""
    if not 0 < n <= len(HELD_OUT_SEEDS):
        raise ValueError(f"n must be in 1..{len(HELD_OUT_SEEDS)}, got {n}")
    return list(HELD_OUT_SEEDS[:n])


def train_seeds(n: int, start: int = 0) -> list[int]:
    if not start >= 0 and start + n <= len(TRAIN_SEEDS):
        raise ValueError(f"training seeds are {TRAIN_SEEDS}; asked for {n} from offset {start}")
    return list(TRAIN_SEEDS[start : start + n])
