"""Waiting on shared memory: spin briefly, then yield, then sleep — with a deadline and liveness checks.

The paper's kernels busy-poll on dedicated cores. Here several ranks share two cores, so a waiter spins
only for a few microseconds (the fast path when the peer is running), then yields its time slice, then
sleeps in growing steps up to ``max_sleep_s``. Every ``check_every_s`` it asks ``alive()`` whether the
peer still exists, so a dead peer is reported within that bound instead of at the deadline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import PeerDeadError, XcclTimeoutError


@dataclass(frozen=True)
class PollPolicy:
    spin_s: float = 20e-6
    yield_s: float = 200e-6
    max_sleep_s: float = 500e-6
    check_every_s: float = 0.01
    timeout_s: float = 30.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed child its parent has not reaped yet
    still answers signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True  # no /proc (not Linux): signal 0 is all we have


def wait_until(
    ready: Callable[[], bool],
    *,
    policy: PollPolicy,
    peer: int,
    what: str,
    alive: Callable[[], bool] | None = None,
    deadline: float | None = None,
) -> None:
    """Return once ``ready()`` is true; raise :class:`PeerDeadError` or :class:`XcclTimeoutError`."""
    if ready():
        return
    start = time.perf_counter()
    deadline = deadline if deadline is not None else start + policy.timeout_s
    next_check = start + policy.check_every_s
    sleep = 10e-6
    while True:
        now = time.perf_counter()
        waited = now - start
        if waited < policy.spin_s:
            pass
        elif waited < policy.spin_s + policy.yield_s:
            os.sched_yield()
        else:
            time.sleep(sleep)
            sleep = min(sleep * 2, policy.max_sleep_s)
        if ready():
            return
        if now >= next_check:
            next_check = now + policy.check_every_s
            if alive is not None and not alive():
                raise PeerDeadError(f"peer rank {peer} died while this rank waited for {what}", peer)
            if now >= deadline:
                raise XcclTimeoutError(
                    f"peer rank {peer} did not complete {what} within {policy.timeout_s:.1f} s", peer
                )
