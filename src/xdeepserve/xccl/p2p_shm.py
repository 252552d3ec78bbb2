"""Point-to-point over shared memory: the paper's synchronous protocol (§3.1), on CPU processes.

A message is cut into ``slot_bytes`` chunks; chunk ``c`` travels on lane ``c % lanes`` (lanes are
threads, the analogue of the paper's AIV cores). Per chunk the sender waits for a free slot in the
lane's ring, copies the chunk into the receiver's ring, then publishes the lane's cumulative TAIL; the
receiver waits for TAIL, checks the event id, copies the chunk out and publishes ACK into the sender's
metadata. A lane's ring has at least two slots, so the sender fills one slot while the receiver drains
another: the ping-pong overlap of copy-in and copy-out. ``send`` returns once every chunk is
acknowledged. Messages of any size stream through the fixed ring.

Ordering on x86 (total store order): the payload copy completes before the TAIL store that publishes it,
and EVENT/SIZE are stored before TAIL; readers load TAIL first.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .errors import EventMismatchError, MessageSizeError
from .poll import PollPolicy, wait_until
from .region import ACK, EVENT, SIZE, TAIL, Region

LANE_MIN_BYTES = 1 << 20  # a message gets one lane per MiB (up to the configured lanes): a thread
# hand-off costs tens of microseconds on a busy 2-core machine, more than a small copy


def as_bytes(t: torch.Tensor) -> np.ndarray:
    """A flat uint8 numpy view of a contiguous CPU tensor (no copy; numpy copies have less call
    overhead than torch's for the small chunks of the hot path)."""
    if not t.is_contiguous():
        raise ValueError("xccl needs contiguous tensors")
    if t.device.type != "cpu":
        raise ValueError("the shared-memory transport moves CPU tensors")
    return t.reshape(-1).view(torch.uint8).numpy()


class ShmChannel:
    """Both directions between this rank and one peer on the same host."""

    def __init__(
        self,
        rank: int,
        peer: int,
        own: Region,
        remote: Region,
        policy: PollPolicy,
        alive: Callable[[], bool],
    ) -> None:
        self.rank, self.peer, self.own, self.remote = rank, peer, own, remote
        self.policy, self.alive = policy, alive
        layout = own.layout
        self.lanes, self.slots, self.chunk = layout.lanes, layout.slots, layout.slot_bytes
        self._tx = remote.rings_np[rank]  # [lanes, slots, slot_bytes]: our ring in the peer's segment
        self._rx = own.rings_np[peer]  # the peer's ring in our segment
        self._meta_out = remote.meta[rank]  # our EVENT/TAIL/SIZE fields (and ACKs for the peer) there
        self._meta_in = own.meta[peer]  # the peer's fields here
        self.sent = [0] * self.lanes  # cumulative chunks sent per lane
        self.received = [0] * self.lanes
        # lanes 1.. of each direction get threads of their own: a pool shared with other channels could
        # park one channel's lane behind another's wait, and two ranks waiting on each other deadlock
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- helpers -------------------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        wait_until(ready, policy=self.policy, peer=self.peer, what=what, alive=self.alive)

    def _lanes_for(self, n_bytes: int) -> list[tuple[int, list[int]]]:
        """(lane, chunk indices) for every lane that carries a chunk; both sides derive it from the size."""
        n_chunks = max(1, -(-n_bytes // self.chunk))
        lanes = max(1, min(self.lanes, n_chunks, n_bytes // LANE_MIN_BYTES))
        return [(lane, list(range(lane, n_chunks, lanes))) for lane in range(lanes)]

    def _run_lanes(self, direction: str, work: list[tuple[int, list[int]]], fn: Callable[[int, list[int]], None]) -> None:
        if len(work) == 1:
            fn(*work[0])
            return
        if direction not in self._pools:
            self._pools[direction] = ThreadPoolExecutor(
                self.lanes - 1, thread_name_prefix=f"xccl{self.rank}-{direction}{self.peer}-lane"
            )
        futures = [self._pools[direction].submit(fn, lane, chunks) for lane, chunks in work[1:]]
        error = None
        try:
            fn(*work[0])
        except BaseException as e:  # still collect the other lanes before raising
            error = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:
                error = error or e
        if error is not None:
            raise error

    # ---- send ------------------------------------------------------------------------------------------
    def send(self, data: torch.Tensor, event_id: int) -> None:
        src = as_bytes(data)
        n = src.size
        ring, meta_out, acks = self._tx, self._meta_out, self._meta_in  # the peer acks into _meta_in
        slots, chunk = self.slots, self.chunk

        def lane_send(lane: int, chunks: list[int]) -> None:
            meta_out[lane, EVENT] = event_id
            meta_out[lane, SIZE] = n
            for c in chunks:
                seq = self.sent[lane]
                if seq - acks[lane, ACK] >= slots:
                    self._wait(lambda seq=seq: seq - acks[lane, ACK] < slots, f"a free ring slot (lane {lane})")
                start = c * chunk
                length = min(chunk, n - start)
                if length > 0:
                    np.copyto(ring[lane, seq % slots, :length], src[start : start + length])
                self.sent[lane] = seq + 1
                meta_out[lane, TAIL] = seq + 1  # publish after the payload
            final = self.sent[lane]
            self._wait(lambda: acks[lane, ACK] >= final, f"the acknowledgement of event {event_id} (lane {lane})")

        self._run_lanes("send", self._lanes_for(n), lane_send)

    # ---- receive ---------------------------------------------------------------------------------------
    def recv(self, out: torch.Tensor, event_id: int) -> int:
        """Receive into ``out``; returns the message size in bytes."""
        dst = as_bytes(out)
        meta_in, ring, ack_out = self._meta_in, self._rx, self._meta_out
        slots, chunk = self.slots, self.chunk
        first = self.received[0]
        self._wait(lambda: meta_in[0, TAIL] > first, f"event {event_id}")
        got = int(meta_in[0, EVENT])
        if got != event_id:
            raise EventMismatchError(f"expected event {event_id} from rank {self.peer}, found event {got}", self.peer)
        n = int(meta_in[0, SIZE])
        if n > dst.size:
            raise MessageSizeError(
                f"rank {self.peer} sent {n} bytes for event {event_id} but the receive buffer holds {dst.size}",
                self.peer,
            )

        def lane_recv(lane: int, chunks: list[int]) -> None:
            for c in chunks:
                seq = self.received[lane]
                if meta_in[lane, TAIL] <= seq:
                    self._wait(lambda seq=seq: meta_in[lane, TAIL] > seq, f"chunk {c} of event {event_id} (lane {lane})")
                got = int(meta_in[lane, EVENT])
                if got != event_id:
                    raise EventMismatchError(
                        f"expected event {event_id} from rank {self.peer}, found event {got}", self.peer
                    )
                start = c * chunk
                length = min(chunk, n - start)
                if length > 0:
                    np.copyto(dst[start : start + length], ring[lane, seq % slots, :length])
                self.received[lane] = seq + 1
                ack_out[lane, ACK] = seq + 1

        self._run_lanes("recv", self._lanes_for(n), lane_recv)
        return n
