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

import torch

from .errors import EventMismatchError, MessageSizeError
from .poll import PollPolicy, wait_until
from .region import ACK, EVENT, SIZE, TAIL, Region


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous CPU tensor (no copy)."""
    if not t.is_contiguous():
        raise ValueError("xccl needs contiguous tensors")
    return t.reshape(-1).view(torch.uint8)


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

    def _lanes_for(self, n_chunks: int) -> list[tuple[int, list[int]]]:
        """(lane, chunk indices) for every lane that carries at least one chunk."""
        return [(lane, list(range(lane, n_chunks, self.lanes))) for lane in range(min(self.lanes, n_chunks))]

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
        n = src.numel()
        n_chunks = max(1, -(-n // self.chunk))
        work = self._lanes_for(n_chunks)
        ring = self.remote.rings[self.rank]  # [lanes, slots, slot_bytes] in the receiver's segment
        meta_out = self.remote.meta[self.rank]  # our fields in the receiver's metadata
        acks = self.own.meta[self.peer]  # the receiver acknowledges into our metadata

        def lane_send(lane: int, chunks: list[int]) -> None:
            meta_out[lane, EVENT] = event_id
            meta_out[lane, SIZE] = n
            for c in chunks:
                seq = self.sent[lane]
                self._wait(lambda seq=seq: seq - int(acks[lane, ACK]) < self.slots, f"a free ring slot (lane {lane})")
                start = c * self.chunk
                length = min(self.chunk, n - start)
                if length > 0:
                    ring[lane, seq % self.slots, :length].copy_(src[start : start + length])
                self.sent[lane] = seq + 1
                meta_out[lane, TAIL] = seq + 1  # publish after the payload
            final = self.sent[lane]
            self._wait(lambda: int(acks[lane, ACK]) >= final, f"the acknowledgement of event {event_id} (lane {lane})")

        self._run_lanes("send", work, lane_send)

    # ---- receive ---------------------------------------------------------------------------------------
    def recv(self, out: torch.Tensor, event_id: int) -> int:
        """Receive into ``out``; returns the message size in bytes."""
        dst = as_bytes(out)
        meta_in = self.own.meta[self.peer]
        ring = self.own.rings[self.peer]
        ack_out = self.remote.meta[self.rank]
        first = self.received[0]
        self._wait(lambda: int(meta_in[0, TAIL]) > first, f"event {event_id}")
        got = int(meta_in[0, EVENT])
        if got != event_id:
            raise EventMismatchError(f"expected event {event_id} from rank {self.peer}, found event {got}", self.peer)
        n = int(meta_in[0, SIZE])
        if n > dst.numel():
            raise MessageSizeError(
                f"rank {self.peer} sent {n} bytes for event {event_id} but the receive buffer holds {dst.numel()}",
                self.peer,
            )
        n_chunks = max(1, -(-n // self.chunk))

        def lane_recv(lane: int, chunks: list[int]) -> None:
            for c in chunks:
                seq = self.received[lane]
                self._wait(lambda seq=seq: int(meta_in[lane, TAIL]) > seq, f"chunk {c} of event {event_id} (lane {lane})")
                got = int(meta_in[lane, EVENT])
                if got != event_id:
                    raise EventMismatchError(
                        f"expected event {event_id} from rank {self.peer}, found event {got}", self.peer
                    )
                start = c * self.chunk
                length = min(self.chunk, n - start)
                if length > 0:
                    dst[start : start + length].copy_(ring[lane, seq % self.slots, :length])
                self.received[lane] = seq + 1
                ack_out[lane, ACK] = seq + 1

        self._run_lanes("recv", self._lanes_for(n_chunks), lane_recv)
        return n
