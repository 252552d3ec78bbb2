"""Domain (local) controller: runs its domain's share of the simulated network, reports to the root,
keeps IGMP-like soft-state group membership and builds intra-domain tree segments on request.

Every domain process steps its own copy of the seeded simulator (same topology, config and seed), so
all controllers observe one consistent simulated world while each reports only its own links.

A domain controller outlives its root: when the root connection dies (closed, or silent past
``dead_after_s``) it keeps running its domain (host joins, soft state, the simulated world), records and
logs the root as unreachable, and reconnects with exponential backoff (``reconnect_min_s`` doubling up
to ``reconnect_max_s``); after reconnecting it says Hello again and resumes reporting.
"""

from __future__ import annotations

import asyncio
import logging
import time

import networkx as nx

from ..baselines.steiner import kmb_tree
from ..simulator import LinkStateSimulator
from ..topology import MultiDomainTopology
from .links import check_weight, domain_label, graph_from_links, link_tuples
from .messages import (
    BoundaryInfo,
    ErrorReply,
    GroupJoin,
    GroupLeave,
    GroupView,
    Hello,
    LinkStateReport,
    MembershipReport,
    Rejected,
    SegmentRequest,
    StateDigest,
    TreeCommit,
    TreeSegment,
    ViewQuery,
    ViewReply,
)
from .openflow import MulticastRules, tree_rules
from .transport import Channel, ChannelTiming, ControlPlaneError, FaultConfig, open_channel

log = logging.getLogger(__name__)
REPORTS_KEPT = 16  # link-state reports a domain keeps for segment requests (one per sync period)


class DomainController:
    def __init__(self, topology: MultiDomainTopology, domain: int, sync_period_s: float, faults: FaultConfig,
                 timing: ChannelTiming, seed: int = 0, reconnect_min_s: float = 0.2, reconnect_max_s: float = 5.0,
                 marl_checkpoint: str | None = None, preload_marl: bool = False):
        self.topology, self.domain = topology, domain
        self.marl_checkpoint = marl_checkpoint
        self._domain_agent = None
        if preload_marl:
            self.domain_agent()
        self.name = f"domain {domain_label(domain)}"
        self.sync_period_s = sync_period_s
        self.faults, self.timing = faults, timing
        self.sim = LinkStateSimulator(topology, seed=seed)
        self.nodes = set(topology.domain_nodes(domain))
        self.my_links = [i for i, (u, v) in enumerate(topology.edges) if u in self.nodes or v in self.nodes]
        # reports are versioned (incarnation, seq) at the root: a restarted controller supersedes its old life
        self.incarnation = time.time_ns()
        self.link_seq = 0
        self.member_seq = 0
        self.members: dict[int, dict[int, float]] = {}  # group -> member -> expiry (monotonic s)
        self.digest: StateDigest | None = None
        self.rejected = 0
        self.segments: dict[int, TreeSegment] = {}
        self.reported: dict[int, tuple] = {}  # link_seq -> the links of that report, the latest REPORTS_KEPT
        self.installed: dict[int, TreeCommit] = {}
        self.flow_tables: dict[int, MulticastRules] = {}
        self.root: Channel | None = None
        self.root_port = 0
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.root_down_since: float | None = None  # monotonic time the root connection was lost, None if up
        self.reconnects = 0
        self.stopped = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    @property
    def root_unreachable_s(self) -> float:
        """Seconds since the root connection was lost (0 while connected)."""
        return 0.0 if self.root_down_since is None else time.monotonic() - self.root_down_since

    def _task(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def start(self, root_port: int, host_port: int = 0) -> int:
        server = await asyncio.start_server(self._on_host, "127.0.0.1", host_port)
        self.server = server
        self.root_port = root_port
        await self._connect_root(connect_timeout_s=5.0)
        self._task(self._sync_loop())
        return server.sockets[0].getsockname()[1]

    async def _connect_root(self, connect_timeout_s: float) -> None:
        ch = await open_channel("127.0.0.1", self.root_port, self.name, "root", self._handle, self.faults,
                                self.timing, connect_timeout_s=connect_timeout_s)
        try:
            await ch.send(Hello("domain", self.domain, self.name, self.incarnation))
            inter = tuple(e for e in self.topology.inter_domain_links if e[0] in self.nodes or e[1] in self.nodes)
            await ch.send(BoundaryInfo(self.domain, tuple(sorted(self.topology.boundary_nodes(self.domain))),
                                       inter))
        except BaseException:
            await ch.close()
            raise
        ch.on_dead = self._on_root_dead
        if not ch.alive:
            raise ControlPlaneError(f"{self.name}: root connection died while saying Hello ({ch.dead_reason})")
        self.root = ch
        self.root_down_since = None

    def _on_root_dead(self, ch: Channel) -> None:
        if ch is not self.root or self.stopped.is_set():
            return
        self.root_down_since = time.monotonic()
        log.warning("%s: lost the root controller (%s); reconnecting with backoff", self.name, ch.dead_reason)
        self._task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self.reconnect_min_s
        while not self.stopped.is_set():
            await asyncio.sleep(delay)
            try:
                await self._connect_root(connect_timeout_s=min(delay, 1.0))
            except ControlPlaneError as exc:
                delay = min(2 * delay, self.reconnect_max_s)
                log.warning("%s: root unreachable for %.1f s (%s); next attempt in %.1f s", self.name,
                            self.root_unreachable_s, exc, delay)
                continue
            self.reconnects += 1
            log.warning("%s: reconnected to the root (attempt after %.2f s backoff)", self.name, delay)
            return

    async def stop(self) -> None:
        self.stopped.set()
        for t in list(self._tasks):
            t.cancel()
        if self.root is not None:
            await self.root.close()
        self.server.close()

    async def _on_host(self, reader, writer) -> None:
        Channel(reader, writer, self.name, "host", self._handle, self.faults, self.timing)

    def _report(self) -> LinkStateReport:
        snap = self.sim.snapshot
        self.link_seq += 1
        links = link_tuples(self.topology, snap, self.my_links)
        self.reported[self.link_seq] = links  # a segment request names the report its plan used
        while len(self.reported) > REPORTS_KEPT:
            self.reported.pop(next(iter(self.reported)))
        return LinkStateReport(self.domain, self.link_seq, time.time(), snap.step, links, self.incarnation)

    def _membership(self) -> MembershipReport:
        now = time.monotonic()
        for g in list(self.members):
            self.members[g] = {m: exp for m, exp in self.members[g].items() if exp > now}  # soft-state expiry
        self.member_seq += 1
        groups = tuple((g, tuple(sorted(ms))) for g, ms in sorted(self.members.items()))
        return MembershipReport(self.domain, self.member_seq, time.time(), groups, self.incarnation)

    async def _sync_loop(self) -> None:
        """Every sync period: advance the world one step and, while the root is connected, report link state
        and membership (full state)."""
        while not self.stopped.is_set():
            self.sim.step()
            root = self.root
            if root is not None and root.alive:
                root.spawn(root.send(self._report(), timeout_s=self.sync_period_s))
                root.spawn(root.send(self._membership(), timeout_s=self.sync_period_s))
            await asyncio.sleep(self.sync_period_s)

    async def _handle(self, ch: Channel, msg) -> None:
        if isinstance(msg, Hello):
            ch.peer = msg.name or msg.role
        elif isinstance(msg, GroupJoin):
            if msg.member not in self.nodes:
                await ch.send(ErrorReply(-1, f"AP {msg.member} is not in {self.name}"))
                return
            self.members.setdefault(msg.group, {})[msg.member] = time.monotonic() + msg.ttl_s
        elif isinstance(msg, GroupLeave):
            self.members.get(msg.group, {}).pop(msg.member, None)
        elif isinstance(msg, StateDigest):
            if self.digest is None or msg.version > self.digest.version:
                self.digest = msg
        elif isinstance(msg, Rejected):
            self.rejected += 1
        elif isinstance(msg, ViewQuery):
            d = self.digest
            gv = None
            if d is not None:
                gv = next((GroupView(g, v, mbd) for g, v, mbd in d.group_views if g == msg.group), None)
            rules = self.flow_tables.get(msg.group)
            n_rules = len(rules.group_mods) + len(rules.flow_mods) if rules else 0
            await ch.send(ViewReply(msg.request_id, self.name, d.version if d else 0, d.link_seqs if d else (), gv,
                                    n_rules, self.root_unreachable_s))
        elif isinstance(msg, SegmentRequest):
            await ch.send(self._segment(msg))
        elif isinstance(msg, TreeCommit):
            # install (here: compute and keep) this domain's share of the OpenFlow rules
            self.installed[msg.group] = msg
            self.flow_tables[msg.group] = tree_rules(self.topology, msg.edges, msg.source, msg.members, msg.group,
                                                     domain=self.domain)

    def domain_agent(self):
        """This domain's trained agent (loaded on first use: torch is imported only when needed)."""
        if self._domain_agent is None:
            from ..marl.serving import DomainAgent

            self._domain_agent = DomainAgent(self.topology, self.domain, self.marl_checkpoint)
        return self._domain_agent

    def _segment(self, req: SegmentRequest):
        if req.request_id in self.segments:  # idempotent under root retries
            return self.segments[req.request_id]
        # the state the root planned on when it is still kept, else the current one
        links = self.reported.get(req.link_seq) or link_tuples(self.topology, self.sim.snapshot, self.my_links)
        g = nx.Graph(graph_from_links(links).subgraph(self.nodes))
        g.add_nodes_from(self.nodes)
        try:
            if req.policy == "marl":
                from ..marl.serving import snapshot_from_links

                snap = snapshot_from_links(self.topology, links)
                tree = self.domain_agent().segment(snap, req.terminals, req.entries or None)
            else:
                tree = kmb_tree(g, req.terminals[0], list(req.terminals[1:]), check_weight(req.weight))
        except ValueError as exc:  # MulticastError or an unknown weight
            return ErrorReply(req.request_id, f"{self.name} cannot build its segment: {exc}")
        seg = TreeSegment(req.request_id, self.domain, tuple(tuple(e) for e in tree.edges))
        self.segments[req.request_id] = seg
        if len(self.segments) > 1024:  # keep recent answers only (retries come within seconds)
            self.segments.pop(next(iter(self.segments)))
        return seg


__all__ = ["ControlPlaneError", "DomainController"]
