"""Point-to-point for CUDA tensors between processes on one host: CUDA IPC rings (paper §3.1 on GPUs).

Each rank that declares a device allocates, once, a device ring per peer (``[world, slots,
device_slot_bytes]`` bytes) and publishes a CUDA IPC handle to it through the group's store. A peer
opens the handle (the memory is mapped into its address space, not copied) and sends by copying each
chunk of its tensor straight into the receiver's ring with a device-to-device copy; the receiver copies
the chunk out into the destination tensor. The signalling is the shared-memory protocol of
:mod:`.p2p_shm` on a lane of its own (the region's device lane): the sender publishes EVENT / SIZE /
TAIL in the receiver's host metadata only after the chunk's copy has completed on the GPU, and the
receiver acknowledges after its copy-out completed, so a slot is never overwritten while it is read.

Only same-host pairs use this; cross-host CUDA tensors are staged through host memory over gloo.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

import torch

from .errors import EventMismatchError, MessageSizeError
from .poll import PollPolicy, wait_until
from .region import ACK, EVENT, SIZE, TAIL, Region


def device_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous CUDA tensor (no copy)."""
    if not t.is_contiguous():
        raise ValueError("xccl needs contiguous tensors")
    if not t.is_cuda:
        raise ValueError("the CUDA IPC transport moves CUDA tensors")
    return t.reshape(-1).view(torch.uint8)


def share_ring(ring: torch.Tensor) -> bytes:
    """Serialise a CUDA IPC handle to ``ring`` (the owner must keep ``ring`` alive while peers use it)."""
    from torch.multiprocessing.reductions import reduce_tensor

    buf = io.BytesIO()
    pickle.dump(reduce_tensor(ring), buf)
    return buf.getvalue()


def open_ring(blob: bytes, device: torch.device) -> torch.Tensor:
    """Map a peer's ring published by :func:`share_ring` into this process."""
    rebuild, args = pickle.loads(blob)
    with torch.cuda.device(device):
        return rebuild(*args)


class CudaIpcChannel:
    """Both directions of CUDA tensor traffic between this rank and one peer on the same host."""

    def __init__(
        self,
        rank: int,
        peer: int,
        own: Region,
        remote: Region,
        rx_ring: torch.Tensor,
        tx_ring: torch.Tensor,
        policy: PollPolicy,
        alive: Callable[[], bool],
    ) -> None:
        self.rank, self.peer, self.policy, self.alive = rank, peer, policy, alive
        self.lane = own.layout.lanes  # the device lane, after the host lanes
        self._rx, self._tx = rx_ring, tx_ring  # [slots, slot_bytes]: ours for the peer, the peer's for us
        self.slots, self.chunk = rx_ring.shape
        self.device = rx_ring.device
        self._meta_out = remote.meta[rank]  # our EVENT/TAIL/SIZE (and ACKs for the peer) in its segment
        self._meta_in = own.meta[peer]
        self.sent = 0
        self.received = 0

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        wait_until(ready, policy=self.policy, peer=self.peer, what=what, alive=self.alive)

    def send(self, data: torch.Tensor, event_id: int) -> None:
        """Blocking: returns once the peer has copied out and acknowledged every chunk."""
        src = device_bytes(data)
        n = src.numel()
        lane, slots, chunk = self.lane, self.slots, self.chunk
        out, acks = self._meta_out, self._meta_in
        out[lane, EVENT] = event_id
        out[lane, SIZE] = n
        stream = torch.cuda.current_stream(src.device)  # the one that produced ``data``
        for c in range(max(1, -(-n // chunk))):
            seq = self.sent
            if seq - acks[lane, ACK] >= slots:
                self._wait(lambda seq=seq: seq - acks[lane, ACK] < slots, "a free device ring slot")
            start, length = c * chunk, min(chunk, n - c * chunk)
            if length > 0:
                self._tx[seq % slots, :length].copy_(src[start : start + length], non_blocking=True)
                stream.synchronize()  # the chunk is in the peer's memory before TAIL says so
            self.sent = seq + 1
            out[lane, TAIL] = seq + 1
        final = self.sent
        self._wait(lambda: acks[lane, ACK] >= final, f"the acknowledgement of event {event_id} (device lane)")

    def recv(self, out: torch.Tensor, event_id: int) -> int:
        """Receive into ``out`` (a CUDA tensor at least the message's size); returns the size in bytes."""
        dst = device_bytes(out)
        lane, slots, chunk = self.lane, self.slots, self.chunk
        meta_in, ack_out = self._meta_in, self._meta_out
        first = self.received
        self._wait(lambda: meta_in[lane, TAIL] > first, f"event {event_id} (device lane)")
        got = int(meta_in[lane, EVENT])
        if got != event_id:
            raise EventMismatchError(f"expected event {event_id} from rank {self.peer}, found event {got}", self.peer)
        n = int(meta_in[lane, SIZE])
        if n > dst.numel():
            raise MessageSizeError(
                f"rank {self.peer} sent {n} bytes for event {event_id} but the receive buffer holds {dst.numel()}",
                self.peer,
            )
        stream = torch.cuda.current_stream(dst.device)
        for c in range(max(1, -(-n // chunk))):
            seq = self.received
            if meta_in[lane, TAIL] <= seq:
                self._wait(lambda seq=seq: meta_in[lane, TAIL] > seq, f"chunk {c} of event {event_id} (device lane)")
            start, length = c * chunk, min(chunk, n - c * chunk)
            if length > 0:
                dst[start : start + length].copy_(self._rx[seq % slots, :length], non_blocking=True)
                stream.synchronize()  # copied out before the slot is released
            self.received = seq + 1
            ack_out[lane, ACK] = seq + 1
        return n
