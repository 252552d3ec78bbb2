"""The one place where training and held-out phantom seeds are defined; the two ranges never overlap."""

from __future__ import annotations

from ..errors import SeedRangeError

TRAIN_SEEDS = range(0, 10_000)
VALIDATION_SEEDS = range(50_000, 51_000)
HELD_OUT_SEEDS = range(100_000, 101_000)


def held_out_seeds(n: int) -> list[int]:
    """The first ``n`` held-out seeds (the benchmark uses n >= 20); hyper-parameters never see them."""
    if not 0 < n <= len(HELD_OUT_SEEDS):
        raise SeedRangeError(f"the held-out range {HELD_OUT_SEEDS.start}..{HELD_OUT_SEEDS.stop - 1} holds "
                             f"{len(HELD_OUT_SEEDS)} cases; asked for {n} (use 1..{len(HELD_OUT_SEEDS)})")
    return list(HELD_OUT_SEEDS[:n])


def train_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` training seeds from offset ``start``; never reaches into the validation or held-out ranges."""
    if n < 1 or start < 0 or start + n > len(TRAIN_SEEDS):
        raise SeedRangeError(f"the training range {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1} holds {len(TRAIN_SEEDS)} "
                             f"seeds; asked for {n} from offset {start}")
    return list(TRAIN_SEEDS[start : start + n])
