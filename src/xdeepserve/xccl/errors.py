"""XCCL errors. Each names the peer involved so a failure can be attributed without a debugger."""

from __future__ import annotations


class XcclError(RuntimeError):
    """Base class: the operation with ``peer`` failed; the pair's channel is unusable afterwards."""

    def __init__(self, message: str, peer: int | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class PeerDeadError(XcclError):
    """The peer process is gone (detected while waiting on it)."""


class XcclTimeoutError(XcclError):
    """The peer is alive but did not do its part before the deadline."""


class EventMismatchError(XcclError):
    """The receiver expected one event id and the sender published another (paper §3.1 sanity check)."""


class MessageSizeError(XcclError):
    """A message larger than the receiving buffer, or than a region was sized for."""
