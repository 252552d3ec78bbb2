"""Per-rank shared-memory regions: a metadata area and a managed area of per-peer ring buffers (§3.1).

Layout of rank r's segment (all offsets 64-byte aligned)::

    header   int64[8]                         magic, world, lanes, slots, slot_bytes, owner pid
    metadata int64[world, lanes + 1, 4]       one 32-byte field per (peer p, lane); the last lane
                                              signals for the CUDA IPC channel (its payload is in GPU
                                              memory, see p2p_cuda):
                                                EVENT, TAIL — written by p when p sends to r
                                                ACK         — written by p when p receives from r
                                                SIZE        — byte size of p's current message to r
    rings    uint8[world, lanes, slots, slot_bytes]   ring (p -> r, lane); p writes, r reads
    xmeta    int64[world, 4]                  exchange fields per peer p: SEQ, COUNT, EVENT (written
                                                by p: p's block for r holds COUNT bytes of exchange SEQ,
                                                user event EVENT), ACK (written by p: p has pulled r's
                                                block of exchange ACK)
    xblocks  uint8[world, exchange_bytes]     r's outgoing exchange data, one block per destination;
                                                destinations pull from here (two-phase, §3.2)

Senders write into the receiver's segment (payload first, then TAIL), the receiver acknowledges into
the sender's segment; TAIL and ACK are cumulative chunk counts, so they never need resetting. Everything
is sized at creation: nothing is allocated on the hot path.

Segments are named ``xccl_<group>_<rank>_<pid>``. The owner unlinks its segment on close and at exit;
after an abnormal exit (SIGKILL) :func:`cleanup_stale_segments` removes segments whose owner is dead —
peers call it when they detect the death, and every new group calls it at start.
"""

from __future__ import annotations

import _posixshmem
import atexit
import contextlib
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .poll import pid_alive

MAGIC = 0x5843434C  # "XCCL"
EVENT, TAIL, ACK, SIZE = range(4)  # p2p metadata fields
XSEQ, XCOUNT, XACK, XEVENT = range(4)  # exchange metadata fields
_HEADER_BYTES = 64
_ALIGN = 64
SHM_DIR = Path("/dev/shm")
_NAME = re.compile(r"^xccl_[0-9a-f]+_\d+_(\d+)$")


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class RegionLayout:
    world: int
    lanes: int
    slots: int
    slot_bytes: int
    exchange_bytes: int = 0  # per-destination block of the pull-based exchange (0: no exchange area)

    @property
    def meta_offset(self) -> int:
        return _HEADER_BYTES

    @property
    def ring_offset(self) -> int:
        return _align(self.meta_offset + self.world * (self.lanes + 1) * 4 * 8)

    @property
    def xmeta_offset(self) -> int:
        return _align(self.ring_offset + self.world * self.lanes * self.slots * self.slot_bytes)

    @property
    def xblock_offset(self) -> int:
        return _align(self.xmeta_offset + self.world * 4 * 8)

    @property
    def total_bytes(self) -> int:
        return self.xblock_offset + self.world * self.exchange_bytes


class Segment:
    """A named POSIX shared-memory mapping, opened directly (not through ``multiprocessing``): its
    resource tracker is shared by sibling processes and would unlink segments that peers still use, or
    complain about segments it never saw; the lifetime rules here are the module docstring's."""

    def __init__(self, name: str, size: int | None) -> None:
        self.name = name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if size is not None else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if size is not None:
                os.ftruncate(fd, size)
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still alive somewhere: the mapping goes with the process
            self.buf.release()
            self._mmap.close()


class Region:
    """One rank's segment, created by its owner or attached by a peer on the same host."""

    def __init__(self, shm: Segment, layout: RegionLayout, owner: bool) -> None:
        self.shm, self.layout, self.owner = shm, layout, owner
        buf = shm.buf
        self.header = np.ndarray((8,), np.int64, buffer=buf, offset=0)
        self.meta = np.ndarray((layout.world, layout.lanes + 1, 4), np.int64, buffer=buf, offset=layout.meta_offset)
        self.rings_np = np.ndarray(
            (layout.world, layout.lanes, layout.slots, layout.slot_bytes), np.uint8, buffer=buf,
            offset=layout.ring_offset,
        )
        self.xmeta = np.ndarray((layout.world, 4), np.int64, buffer=buf, offset=layout.xmeta_offset)
        self.xblocks = np.ndarray((layout.world, layout.exchange_bytes), np.uint8, buffer=buf,
                                  offset=layout.xblock_offset)
        self._closed = False

    @property
    def name(self) -> str:
        return self.shm.name

    @classmethod
    def create(cls, group: str, rank: int, layout: RegionLayout) -> Region:
        name = f"xccl_{group}_{rank}_{os.getpid()}"
        shm = Segment(name, layout.total_bytes)
        region = cls(shm, layout, owner=True)
        region.meta[:] = 0
        region.xmeta[:] = 0
        region.header[:7] = (
            MAGIC, layout.world, layout.lanes, layout.slots, layout.slot_bytes, os.getpid(), layout.exchange_bytes
        )
        atexit.register(region.close)
        return region

    @classmethod
    def attach(cls, name: str, layout: RegionLayout) -> Region:
        shm = Segment(name, None)
        region = cls(shm, layout, owner=False)
        header = tuple(int(v) for v in region.header[:7])
        expect = (MAGIC, layout.world, layout.lanes, layout.slots, layout.slot_bytes, header[5], layout.exchange_bytes)
        if header != expect:
            region.close()
            raise ValueError(f"shared-memory segment {name} has a different layout than this group")
        return region

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # views into the buffer must go before the mapping can be closed
        del self.header, self.meta, self.rings_np, self.xmeta, self.xblocks
        self.shm.close()
        if self.owner:
            _unlink("/" + self.shm.name)


def _unlink(name: str) -> None:
    """Unlink without telling the resource tracker (it was never told about the segment)."""
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink(name)


def list_segments() -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob("xccl_*")) if SHM_DIR.is_dir() else []


def cleanup_stale_segments() -> list[str]:
    """Unlink XCCL segments whose owner process no longer exists; returns their names."""
    removed = []
    for name in list_segments():
        m = _NAME.match(name)
        if m and not pid_alive(int(m[1])):
            _unlink("/" + name)
            removed.append(name)
    return removed
