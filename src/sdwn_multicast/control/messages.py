"""Explicit message types exchanged by the controllers, and their wire encoding.

Wire format: a 4-byte big-endian length, then a msgpack map ``{"t": type name, "id": msg_id, "b": fields}``.
``msg_id`` belongs to the transport (acknowledgement and de-duplication, see ``transport.py``); 0 marks an
unreliable message (acks, heartbeats). Collections are tuples (msgpack lists are turned back into tuples).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgpack

Link = tuple  # (u, v, free_bw_mbps, delay_ms, loss, up)


@dataclass(frozen=True)
class Hello:
    """First message on every connection: who is talking (role "domain", "client" or "root").

    A domain controller's Hello binds its domain to the connection at the root (only reports for that
    domain are accepted on it); ``incarnation`` is chosen when the controller starts (start time in ns),
    so a restarted controller supersedes its previous life although its report ``seq`` restarts at 1.
    """

    role: str
    domain: int = -1
    name: str = ""
    incarnation: int = 0


@dataclass(frozen=True)
class Ack:
    msg_id: int


@dataclass(frozen=True)
class Heartbeat:
    sent_at: float


@dataclass(frozen=True)
class LinkStateReport:
    """Domain -> root, every sync period: the domain's intra-domain and incident inter-domain links.

    ``seq`` increases with every report of the domain controller's ``incarnation`` (see :class:`Hello`);
    reports are ordered by (incarnation, seq). ``sent_at`` (Unix time, s) bounds staleness; ``step`` is
    the simulator step the state comes from.
    """

    domain: int
    seq: int
    sent_at: float
    step: int
    links: tuple[Link, ...]
    incarnation: int = 0


@dataclass(frozen=True)
class BoundaryInfo:
    """Domain -> root on connect: boundary APs and inter-domain links (the root's inter-domain graph)."""

    domain: int
    boundary_nodes: tuple[int, ...]
    inter_links: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GroupJoin:
    """Host -> its domain controller (IGMP membership report): soft state, refresh within ``ttl_s``."""

    group: int
    member: int
    ttl_s: float


@dataclass(frozen=True)
class GroupLeave:
    group: int
    member: int


@dataclass(frozen=True)
class MembershipReport:
    """Domain -> root, every sync period: the full set of live members per group in this domain."""

    domain: int
    seq: int
    sent_at: float
    groups: tuple[tuple[int, tuple[int, ...]], ...]
    incarnation: int = 0


@dataclass(frozen=True)
class StateDigest:
    """Root -> domains: the root's global view version and the latest accepted report per domain."""

    version: int
    sent_at: float
    link_seqs: tuple[tuple[int, int], ...]
    group_views: tuple[tuple[int, int, tuple[tuple[int, tuple[int, ...]], ...]], ...]


@dataclass(frozen=True)
class ViewQuery:
    request_id: int
    group: int = -1


@dataclass(frozen=True)
class GroupView:
    """A multicast group's members classified by domain, with a version that grows on every change."""

    group: int
    version: int
    members_by_domain: tuple[tuple[int, tuple[int, ...]], ...]

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(m for _, ms in self.members_by_domain for m in ms))


@dataclass(frozen=True)
class ViewReply:
    """Any controller -> client: its view version, report sequence numbers per domain, one group view."""

    request_id: int
    controller: str
    version: int
    link_seqs: tuple[tuple[int, int], ...]
    group_view: GroupView | None
    flow_rules: int = 0  # OpenFlow group + flow entries installed for the queried group (domains only)
    root_unreachable_s: float = 0.0  # domains only: seconds since the root connection was lost (0 if up)


@dataclass(frozen=True)
class TreeRequest:
    """Client -> root: build the multicast tree of ``group`` rooted at ``source``."""

    request_id: int
    group: int
    source: int
    weight: str = "delay_ms"
    #: "kmb": the root's inter-domain plan + KMB segments; "marl": the trained agents decide both
    policy: str = "kmb"


@dataclass(frozen=True)
class SegmentRequest:
    """Root -> domain: build the intra-domain tree spanning ``terminals`` (entry node first).

    ``request_id`` is the root's own segment id (clients number their tree requests independently).
    A re-entry plan (trained agents whose root may enter a domain more than once) sends ``entries``, pairs
    (entry AP, rank), and ``terminals`` as pairs (AP, bound): the domain answers with the forest of its
    components, each terminal attached to a component of rank < bound (any component for bound 0).
    ``link_seq`` is the sequence number of the domain's link-state report the root planned on: the domain
    builds its segment on that same state (links fail and recover between reports), so the root never
    rejects a segment over a link that came up after the report it holds. 0: the domain's current state.
    """

    request_id: int
    domain: int
    terminals: tuple
    weight: str
    policy: str = "kmb"  # "kmb" or "marl" (the domain's trained agent grafts the terminals)
    entries: tuple = ()
    link_seq: int = 0


@dataclass(frozen=True)
class TreeSegment:
    request_id: int
    domain: int
    edges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TreeCommit:
    """Root -> client and involved domains: the composed, validated tree; ``version`` numbers commits."""

    request_id: int
    version: int
    group: int
    source: int
    edges: tuple[tuple[int, int], ...]
    members: tuple[int, ...] = ()


@dataclass(frozen=True)
class ErrorReply:
    request_id: int
    reason: str


@dataclass(frozen=True)
class Rejected:
    """Root -> sender of a report it refused (stale or out-of-order); the reason says which."""

    kind: str
    domain: int
    seq: int
    reason: str


MESSAGE_TYPES: dict[str, type] = {c.__name__: c for c in (
    Hello, Ack, Heartbeat, LinkStateReport, BoundaryInfo, GroupJoin, GroupLeave, MembershipReport, StateDigest,
    ViewQuery, GroupView, ViewReply, TreeRequest, SegmentRequest, TreeSegment, TreeCommit, ErrorReply, Rejected,
)}


class ProtocolError(ValueError):
    """A frame could not be decoded into a known message."""


def _to_wire(obj):
    if dataclasses.is_dataclass(obj):
        return {"t": type(obj).__name__, "b": {f.name: _to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (tuple, list)):
        return [_to_wire(x) for x in obj]
    return obj


def _from_wire(obj):
    if isinstance(obj, dict) and "t" in obj and "b" in obj:
        cls = MESSAGE_TYPES.get(obj["t"])
        if cls is None:
            raise ProtocolError(f"unknown message type {obj['t']!r}")
        try:
            return cls(**{k: _from_wire(v) for k, v in obj["b"].items()})
        except TypeError as exc:
            raise ProtocolError(f"bad fields for {obj['t']}: {exc}") from exc
    if isinstance(obj, list):
        return tuple(_from_wire(x) for x in obj)
    return obj


def encode_frame(msg_id: int, msg) -> bytes:
    body = msgpack.packb({"id": msg_id, "m": _to_wire(msg)}, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def decode_body(body: bytes) -> tuple[int, object]:
    try:
        data = msgpack.unpackb(body, raw=False)
        return int(data["id"]), _from_wire(data["m"])
    except (ValueError, KeyError, TypeError, msgpack.ExtraData) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc
