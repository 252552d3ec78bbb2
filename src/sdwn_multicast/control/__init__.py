"""Multi-controller control plane: one process per domain plus a root, over TCP on 127.0.0.1."""

from .launcher import ControlClient, ControlPlane, RequestFailedError
from .transport import ChannelTiming, ControlPlaneError, FaultConfig, PeerDeadError, PeerUnreachableError

__all__ = ["ChannelTiming", "ControlClient", "ControlPlane", "ControlPlaneError", "FaultConfig", "PeerDeadError",
           "PeerUnreachableError", "RequestFailedError"]
