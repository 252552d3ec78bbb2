"""An XCCL group: rendezvous, one channel per peer (shared memory or gloo), p2p send/recv.

Ranks meet through a torch.distributed ``TCPStore``. Each declares a host identity; pairs on the same
host talk through shared-memory regions, other pairs through a gloo process group over TCP. Two "hosts"
on one machine are simulated simply by declaring different host ids (traffic then goes over loopback).
A rank that declares a CUDA ``device`` also gets CUDA IPC channels to the same-host peers that declared
one: CUDA tensors then move GPU to GPU (:mod:`.p2p_cuda`); to other peers they are staged through host
memory.

    group = XcclGroup.init(rank, world_size, store_addr=("127.0.0.1", port), host_id="host-a")
    group.send(tensor, peer=1, event_id=7)
    group.recv(out, peer=0, event_id=7)
    handle = group.isend(tensor, peer=1, event_id=8); handle.wait()
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .errors import EventMismatchError, MessageSizeError, PeerDeadError, XcclError, XcclTimeoutError
from .p2p_cuda import CudaIpcChannel, open_ring, share_ring
from .p2p_shm import ShmChannel, as_bytes
from .poll import PollPolicy, pid_alive, wait_until
from .region import XACK, XCOUNT, XEVENT, XSEQ, Region, RegionLayout, cleanup_stale_segments


@dataclass(frozen=True)
class XcclConfig:
    lanes: int = 2  # parallel copy lanes per pair (the paper's AIV cores)
    slots: int = 4  # ring slots per lane (>= 2: copy-in and copy-out overlap)
    slot_bytes: int = 256 * 1024
    # per-destination block of the pull-based exchange (dispatch/combine); size it for the largest
    # batch: tokens per rank x top-k x bytes per row
    exchange_bytes: int = 1 << 20
    device_slots: int = 2  # CUDA IPC ring per peer (used only by ranks that declare a device)
    device_slot_bytes: int = 16 << 20
    timeout_s: float = 30.0  # every wait has this deadline
    policy: PollPolicy = field(default_factory=PollPolicy)

    def __post_init__(self) -> None:
        if self.lanes < 1 or self.slots < 2 or self.slot_bytes < 64:
            raise ValueError("xccl needs lanes >= 1, slots >= 2 and slot_bytes >= 64")
        if self.device_slots < 2 or self.device_slot_bytes < 64:
            raise ValueError("xccl needs device_slots >= 2 and device_slot_bytes >= 64")


@dataclass(frozen=True)
class PeerInfo:
    rank: int
    host_id: str
    pid: int
    region: str | None


class Handle:
    """A non-blocking operation: ``wait(timeout_s)`` returns its result or raises its error."""

    def __init__(self, future: Future, peer: int) -> None:
        self._future, self.peer = future, peer

    def test(self) -> bool:
        return self._future.done()

    def wait(self, timeout_s: float | None = None):
        try:
            return self._future.result(timeout=timeout_s)
        except FutureTimeout:
            raise XcclTimeoutError(f"operation with rank {self.peer} not done within {timeout_s} s", self.peer) from None


class GlooChannel:
    """Both directions with a peer on another host: a header (event id, size), then the payload."""

    def __init__(self, pg, rank: int, peer: int) -> None:
        self.pg, self.rank, self.peer = pg, rank, peer

    def _run(self, work, what: str) -> None:
        try:
            work.wait()
        except RuntimeError as e:
            raise PeerDeadError(f"{what} with rank {self.peer} failed over gloo: {e}", self.peer) from e

    def send(self, data: torch.Tensor, event_id: int) -> None:
        payload = torch.from_numpy(as_bytes(data))
        header = torch.tensor([event_id, payload.numel()], dtype=torch.int64)
        self._run(self.pg.send([header], self.peer, 0), f"send of event {event_id}")
        if payload.numel():
            self._run(self.pg.send([payload], self.peer, 1), f"send of event {event_id}")

    def recv(self, out: torch.Tensor, event_id: int) -> int:
        dst = torch.from_numpy(as_bytes(out))
        header = torch.empty(2, dtype=torch.int64)
        self._run(self.pg.recv([header], self.peer, 0), f"receive of event {event_id}")
        got, n = int(header[0]), int(header[1])
        if got != event_id:
            raise EventMismatchError(f"expected event {event_id} from rank {self.peer}, found event {got}", self.peer)
        if n > dst.numel():
            raise MessageSizeError(
                f"rank {self.peer} sent {n} bytes for event {event_id} but the receive buffer holds {dst.numel()}",
                self.peer,
            )
        if n:
            buf = dst[:n] if n == dst.numel() else torch.empty(n, dtype=torch.uint8)
            self._run(self.pg.recv([buf], self.peer, 1), f"receive of event {event_id}")
            if buf.data_ptr() != dst.data_ptr():
                dst[:n].copy_(buf)
        return n


class _HostStaged:
    """CUDA tensors over a host channel (shared memory or gloo) to a peer without a CUDA IPC channel:
    copied to host memory first (the receiver copies back to its device)."""

    def __init__(self, channel: ShmChannel | GlooChannel) -> None:
        self.channel = channel

    def send(self, data: torch.Tensor, event_id: int) -> None:
        self.channel.send(data.cpu(), event_id)

    def recv(self, out: torch.Tensor, event_id: int) -> int:
        host = torch.empty(out.numel() * out.element_size(), dtype=torch.uint8)
        n = self.channel.recv(host, event_id)
        out.reshape(-1).view(torch.uint8)[:n].copy_(host[:n])
        return n


class XcclGroup:
    def __init__(self, rank: int, world_size: int, config: XcclConfig) -> None:
        self.rank, self.world_size, self.config = rank, world_size, config
        self.peers: dict[int, PeerInfo] = {}
        self.channels: dict[int, ShmChannel | GlooChannel] = {}
        self.device_channels: dict[int, CudaIpcChannel] = {}  # same-host peers, for CUDA tensors
        self.device: torch.device | None = None
        self._device_rings: torch.Tensor | None = None
        self.region: Region | None = None
        self._attached: dict[int, Region] = {}
        self._workers: dict[tuple[int, str], ThreadPoolExecutor] = {}
        self._locks: dict[tuple[int, str], threading.Lock] = {}
        self._last: dict[tuple[int, str], Future] = {}
        self._store: dist.TCPStore | None = None
        self._gloo = None
        self._barrier_gen = 0
        self._closed = False

    # ---- formation -------------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        rank: int,
        world_size: int,
        *,
        store_addr: tuple[str, int],
        host_id: str | None = None,
        config: XcclConfig | None = None,
        device: str | torch.device | None = None,
    ) -> XcclGroup:
        """Join the group (every rank calls this). ``device``: this rank's CUDA device, for GPU-to-GPU
        traffic with same-host peers that declare one too (None: CUDA tensors are staged through host
        memory)."""
        self = cls(rank, world_size, config or XcclConfig())
        cfg = self.config
        policy = PollPolicy(**{**cfg.policy.__dict__, "timeout_s": cfg.timeout_s})
        host_id = host_id or os.uname().nodename
        timeout = datetime.timedelta(seconds=cfg.timeout_s)
        store = dist.TCPStore(store_addr[0], store_addr[1], world_size, is_master=rank == 0, timeout=timeout)
        self._store = store
        if rank == 0:
            cleanup_stale_segments()
            store.set("xccl/group", secrets.token_hex(4))
        group_id = store.get("xccl/group").decode()
        layout = RegionLayout(world_size, cfg.lanes, cfg.slots, cfg.slot_bytes, cfg.exchange_bytes)
        self.region = Region.create(group_id, rank, layout)
        me = PeerInfo(rank, host_id, os.getpid(), self.region.name)
        store.set(f"xccl/rank/{rank}", json.dumps(me.__dict__))
        if device is not None:
            self.device = torch.device(device)
            if self.device.type != "cuda":
                raise ValueError(f"xccl device must be a CUDA device, got {self.device}")
            self._device_rings = torch.empty(
                world_size, cfg.device_slots, cfg.device_slot_bytes, dtype=torch.uint8, device=self.device
            )
            store.set(f"xccl/cuda/{rank}", share_ring(self._device_rings))
        else:
            store.set(f"xccl/cuda/{rank}", b"")
        for r in range(world_size):
            self.peers[r] = PeerInfo(**json.loads(store.get(f"xccl/rank/{r}").decode()))
        cross_host = any(p.host_id != self.peers[0].host_id for p in self.peers.values())
        if cross_host:  # every rank takes part in creating the gloo group, whatever its own pairs
            self._gloo = dist.ProcessGroupGloo(dist.PrefixStore("xccl/gloo", store), rank, world_size, timeout)
        for r, info in self.peers.items():
            if r == rank:
                continue
            if info.host_id == host_id:
                remote = Region.attach(info.region, layout)
                self._attached[r] = remote
                self.channels[r] = ShmChannel(rank, r, self.region, remote, policy, self._alive_fn(info.pid))
            else:
                self.channels[r] = GlooChannel(self._gloo, rank, r)
        if self.device is not None:
            for r, info in self.peers.items():
                blob = store.get(f"xccl/cuda/{r}")
                if r != rank and info.host_id == host_id and blob:
                    tx = open_ring(blob, self.device)[rank]  # our ring in the peer's GPU memory
                    self.device_channels[r] = CudaIpcChannel(
                        rank, r, self.region, self._attached[r], self._device_rings[r], tx, policy,
                        self._alive_fn(info.pid),
                    )
        self._policy = policy
        self._xsent = [0] * world_size  # exchange payloads published to each rank
        self._xrecvd = [0] * world_size  # exchange payloads pulled from each rank
        self._xrecv = np.empty((world_size, cfg.exchange_bytes), dtype=np.uint8)  # receive side, reused
        self.barrier()
        return self

    @staticmethod
    def _alive_fn(pid: int):
        return lambda: pid_alive(pid)

    def transport(self, peer: int, cuda: bool = False) -> str:
        """How this rank talks to ``peer``: 'shm' or 'gloo' for CPU tensors; for CUDA tensors
        (``cuda=True``) 'cuda_ipc', or 'shm' / 'gloo' staged through host memory."""
        if cuda and peer in self.device_channels:
            return "cuda_ipc"
        return "shm" if isinstance(self.channels[peer], ShmChannel) else "gloo"

    # ---- p2p ---------------------------------------------------------------------------------------------
    def _channel(self, peer: int, tensor: torch.Tensor | None = None):
        if self._closed:
            raise XcclError("the group is closed", peer)
        if peer not in self.channels:
            raise ValueError(f"rank {peer} is not a peer of rank {self.rank} (world size {self.world_size})")
        channel = self.channels[peer]
        if tensor is not None and tensor.is_cuda:
            return self.device_channels.get(peer) or _HostStaged(channel)
        return channel

    def _guard(self, fn, peer: int):
        try:
            return fn()
        except PeerDeadError:
            cleanup_stale_segments()  # the dead peer cannot unlink its own segment
            raise

    # Messages between a pair travel in program order. Blocking calls run on the caller's thread (no
    # hand-off on the latency path) after any earlier non-blocking call of the same (peer, direction)
    # has finished; a lock per (peer, direction) keeps two operations from sharing the channel.
    def _ordered(self, peer: int, direction: str, op):
        key = (peer, direction)
        last = self._last.get(key)
        if last is not None and not last.done():
            last.result()
        with self._locks.setdefault(key, threading.Lock()):
            return self._guard(op, peer)

    def send(self, tensor: torch.Tensor, peer: int, event_id: int) -> None:
        """Blocking send: returns once the peer has received and acknowledged every byte."""
        channel = self._channel(peer, tensor)
        self._ordered(peer, "send", lambda: channel.send(tensor, event_id))

    def recv(self, out: torch.Tensor, peer: int, event_id: int) -> int:
        """Blocking receive into ``out`` (at least the message's size); returns the message size in bytes."""
        channel = self._channel(peer, out)
        return self._ordered(peer, "recv", lambda: channel.recv(out, event_id))

    def _submit(self, peer: int, direction: str, op) -> Handle:
        key = (peer, direction)
        if key not in self._workers:  # one thread per (peer, direction) keeps messages in order
            self._workers[key] = ThreadPoolExecutor(1, thread_name_prefix=f"xccl{self.rank}-{direction}{peer}")
        lock = self._locks.setdefault(key, threading.Lock())

        def run():
            with lock:
                return self._guard(op, peer)

        future = self._workers[key].submit(run)
        self._last[key] = future
        return Handle(future, peer)

    def isend(self, tensor: torch.Tensor, peer: int, event_id: int) -> Handle:
        channel = self._channel(peer, tensor)
        return self._submit(peer, "send", lambda: channel.send(tensor, event_id))

    def irecv(self, out: torch.Tensor, peer: int, event_id: int) -> Handle:
        channel = self._channel(peer, out)
        return self._submit(peer, "recv", lambda: channel.recv(out, event_id))

    # ---- pull-based exchange (the two phases of the paper's dispatch/combine, §3.2) ----------------------
    def exchange(
        self, sends: dict[int, torch.Tensor | np.ndarray], sources: list[int], event_id: int
    ) -> dict[int, np.ndarray]:
        """Send one byte payload to each rank in ``sends`` and receive one from each rank in ``sources``
        (either may include this rank). Only the listed pairs take part, so a sparse pattern (A2E via
        trampolines) touches only its own metadata.

        Same-host pairs: phase 1 — the sender copies its payload for ``d`` into its own block for ``d``
        and publishes (count, event, sequence) in ``d``'s metadata; phase 2 — the receiver waits until
        every source has published, pulls the bytes from the source's block and acknowledges. A block is
        reused only after its destination acknowledged the previous payload. Cross-host pairs carry the
        same payloads over gloo. The returned arrays are views into a buffer reused by the next call.
        """
        if self._closed:
            raise XcclError("the group is closed")
        try:
            return self._exchange(sends, sources, event_id)
        except PeerDeadError:
            cleanup_stale_segments()  # the dead peer cannot unlink its own segment
            raise

    def _exchange(
        self, sends: dict[int, torch.Tensor | np.ndarray], sources: list[int], event_id: int
    ) -> dict[int, np.ndarray]:
        payloads = {
            d: (np.ascontiguousarray(p).reshape(-1).view(np.uint8) if isinstance(p, np.ndarray) else as_bytes(p))
            for d, p in sends.items()
        }
        cap = self.config.exchange_bytes
        for d, p in payloads.items():
            if p.size > cap:
                raise MessageSizeError(f"exchange payload of {p.size} bytes for rank {d} exceeds exchange_bytes={cap}", d)
        me, own = self.rank, self.region
        received: dict[int, np.ndarray] = {}

        def wait(peer: int, ready, what: str) -> None:
            wait_until(ready, policy=self._policy, peer=peer, what=what, alive=self._alive_fn(self.peers[peer].pid))

        # phase 1: publish (after each destination released the block it pulled last time)
        handles = []
        for d, payload in payloads.items():
            if d == me:
                continue
            if isinstance(self.channels[d], GlooChannel):
                handles.append(self.isend(torch.from_numpy(payload), d, event_id))
                continue
            seq = self._xsent[d] + 1
            wait(d, lambda d=d, seq=seq: own.xmeta[d, XACK] >= seq - 1, f"release of exchange block {seq - 1}")
            n = payload.size
            np.copyto(own.xblocks[d, :n], payload)
            remote = self._attached[d].xmeta[me]
            remote[XCOUNT] = n
            remote[XEVENT] = event_id
            remote[XSEQ] = seq  # publish last
            self._xsent[d] = seq
        for s in sources:
            if s != me and isinstance(self.channels[s], GlooChannel):
                handles.append(self.irecv(torch.from_numpy(self._xrecv[s]), s, event_id))
        if me in sources:
            n = payloads[me].size if me in payloads else 0
            if n:
                np.copyto(self._xrecv[me, :n], payloads[me])
            received[me] = self._xrecv[me, :n]
        # phase 2: wait for every source, pull, acknowledge
        for s in sources:
            if s == me or isinstance(self.channels[s], GlooChannel):
                continue
            seq = self._xrecvd[s] + 1
            meta = own.xmeta[s]
            wait(s, lambda meta=meta, seq=seq: meta[XSEQ] >= seq, f"exchange payload {seq} (event {event_id})")
            if int(meta[XEVENT]) != event_id:
                raise EventMismatchError(
                    f"expected exchange event {event_id} from rank {s}, found event {int(meta[XEVENT])}", s
                )
            n = int(meta[XCOUNT])
            np.copyto(self._xrecv[s, :n], self._attached[s].xblocks[me, :n])
            received[s] = self._xrecv[s, :n]
            self._attached[s].xmeta[me, XACK] = seq
            self._xrecvd[s] = seq
        for h in handles:
            n = h.wait(timeout_s=self.config.timeout_s)
            if n is not None:
                received[h.peer] = self._xrecv[h.peer, :n]
        return received

    def alltoallv(self, sends: list[torch.Tensor | np.ndarray], event_id: int) -> list[np.ndarray]:
        """Every rank sends one payload to every rank (itself included) and receives one from each."""
        if len(sends) != self.world_size:
            raise ValueError(f"alltoallv needs one payload per rank ({self.world_size}), got {len(sends)}")
        got = self.exchange(dict(enumerate(sends)), list(range(self.world_size)), event_id)
        return [got[s] for s in range(self.world_size)]

    # ---- collectives used for bookkeeping ------------------------------------------------------------------
    def barrier(self) -> None:
        """All ranks reach this point (through the store; not a data-path primitive)."""
        self._barrier_gen += 1
        key = f"xccl/barrier/{self._barrier_gen}"
        self._store.add(key, 1)
        deadline = time.monotonic() + self.config.timeout_s
        while int(self._store.add(key, 0)) < self.world_size:
            for r, info in self.peers.items():
                if info.host_id == self.peers[self.rank].host_id and not pid_alive(info.pid):
                    raise PeerDeadError(f"peer rank {r} died before the barrier", r)
            if time.monotonic() > deadline:
                raise XcclTimeoutError(f"barrier {self._barrier_gen} not reached by all ranks", None)
            time.sleep(0.001)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers.values():
            w.shutdown(wait=False, cancel_futures=True)
        for channel in self.channels.values():
            if isinstance(channel, ShmChannel):
                channel.close()
        self.channels.clear()
        self.device_channels.clear()
        self._device_rings = None
        for region in self._attached.values():
            region.close()
        if self.region is not None:
            self.region.close()
        self._gloo = None
        self._store = None  # rank 0's store server goes with its last reference

    def __enter__(self) -> XcclGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
