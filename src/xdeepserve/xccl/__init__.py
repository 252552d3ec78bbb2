"""XCCL: memory-semantic communication between ranks (paper §3).

Point-to-point send/recv through per-pair ring buffers in POSIX shared memory for ranks on one host,
torch.distributed (gloo) for ranks on different hosts, chosen per pair from the hosts the ranks declare
at rendezvous. See :class:`xdeepserve.xccl.group.XcclGroup`.
"""

from .errors import EventMismatchError, MessageSizeError, PeerDeadError, XcclError, XcclTimeoutError
from .group import Handle, XcclConfig, XcclGroup

__all__ = [
    "EventMismatchError",
    "Handle",
    "MessageSizeError",
    "PeerDeadError",
    "XcclConfig",
    "XcclError",
    "XcclGroup",
    "XcclTimeoutError",
]
