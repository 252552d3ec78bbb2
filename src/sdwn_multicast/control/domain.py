"""Domain (local) controller: runs its domain's share of the simulated network, reports to the root,
keeps IGMP-like soft-state group membership and builds intra-domain tree segments on request.

Every domain process steps its own copy of the seeded simulator (same topology, config and seed), so
all controllers observe one consistent simulated world while each reports only its own links.
"""

from __future__ import annotations

import asyncio
import logging
import time

import networkx as nx

from ..baselines.steiner import kmb_tree
from ..simulator import LinkStateSimulator
from ..topology import MultiDomainTopology
from ..trees import MulticastError
from .messages import (
    BoundaryInfo,
    ErrorReply,
    GroupJoin,
    GroupLeave,
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
from .root import domain_label, graph_from_links
from .transport import Channel, ChannelTiming, ControlPlaneError, FaultConfig, open_channel

log = logging.getLogger(__name__)


class DomainController:
    def __init__(self, topology: MultiDomainTopology, domain: int, sync_period_s: float, faults: FaultConfig,
                 timing: ChannelTiming, seed: int = 0):
        self.topology, self.domain = topology, domain
        self.name = f"domain {domain_label(domain)}"
        self.sync_period_s = sync_period_s
        self.faults, self.timing = faults, timing
        self.sim = LinkStateSimulator(topology, seed=seed)
        self.nodes = set(topology.domain_nodes(domain))
        self.my_links = [i for i, (u, v) in enumerate(topology.edges) if u in self.nodes or v in self.nodes]
        self.link_seq = 0
        self.member_seq = 0
        self.members: dict[int, dict[int, float]] = {}  # group -> member -> expiry (monotonic s)
        self.digest: StateDigest | None = None
        self.rejected = 0
        self.segments: dict[int, TreeSegment] = {}
        self.installed: dict[int, TreeCommit] = {}
        self.flow_tables: dict[int, MulticastRules] = {}
        self.root: Channel | None = None
        self.stopped = asyncio.Event()

    async def start(self, root_port: int, host_port: int = 0) -> int:
        server = await asyncio.start_server(self._on_host, "127.0.0.1", host_port)
        self.server = server
        self.root = await open_channel("127.0.0.1", root_port, self.name, "root", self._handle, self.faults,
                                       self.timing)
        self.root.on_dead = lambda ch: self.stopped.set()
        await self.root.send(Hello("domain", self.domain, self.name))
        inter = tuple(e for e in self.topology.inter_domain_links if e[0] in self.nodes or e[1] in self.nodes)
        await self.root.send(BoundaryInfo(self.domain, tuple(sorted(self.topology.boundary_nodes(self.domain))),
                                          inter))
        asyncio.get_running_loop().create_task(self._sync_loop())
        return server.sockets[0].getsockname()[1]

    async def _on_host(self, reader, writer) -> None:
        Channel(reader, writer, self.name, "host", self._handle, self.faults, self.timing)

    def _report(self) -> LinkStateReport:
        snap = self.sim.snapshot
        edges = self.topology.edges
        links = tuple((edges[i][0], edges[i][1], float(snap.free_bw_mbps[i]), float(snap.delay_ms[i]),
                       float(snap.loss[i]), bool(snap.up[i])) for i in self.my_links)
        self.link_seq += 1
        return LinkStateReport(self.domain, self.link_seq, time.time(), snap.step, links)

    def _membership(self) -> MembershipReport:
        now = time.monotonic()
        for g in list(self.members):
            self.members[g] = {m: exp for m, exp in self.members[g].items() if exp > now}  # soft-state expiry
        self.member_seq += 1
        groups = tuple((g, tuple(sorted(ms))) for g, ms in sorted(self.members.items()))
        return MembershipReport(self.domain, self.member_seq, time.time(), groups)

    async def _sync_loop(self) -> None:
        """Every sync period: advance the world one step, report link state and membership (full state)."""
        while self.root.alive:
            self.sim.step()
            self.root.spawn(self.root.send(self._report(), timeout_s=self.sync_period_s))
            self.root.spawn(self.root.send(self._membership(), timeout_s=self.sync_period_s))
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
                from .messages import GroupView

                gv = next((GroupView(g, v, mbd) for g, v, mbd in d.group_views if g == msg.group), None)
            rules = self.flow_tables.get(msg.group)
            n_rules = len(rules.group_mods) + len(rules.flow_mods) if rules else 0
            await ch.send(ViewReply(msg.request_id, self.name, d.version if d else 0, d.link_seqs if d else (), gv,
                                    n_rules))
        elif isinstance(msg, SegmentRequest):
            await ch.send(self._segment(msg))
        elif isinstance(msg, TreeCommit):
            # install (here: compute and keep) this domain's share of the OpenFlow rules
            self.installed[msg.group] = msg
            self.flow_tables[msg.group] = tree_rules(self.topology, msg.edges, msg.source, msg.members, msg.group,
                                                     domain=self.domain)

    def _segment(self, req: SegmentRequest):
        if req.request_id in self.segments:  # idempotent under root retries
            return self.segments[req.request_id]
        snap = self.sim.snapshot
        edges = self.topology.edges
        links = [(edges[i][0], edges[i][1], float(snap.free_bw_mbps[i]), float(snap.delay_ms[i]),
                  float(snap.loss[i]), bool(snap.up[i])) for i in self.my_links]
        g = graph_from_links(links).subgraph(self.nodes)
        g = nx.Graph(g)
        g.add_nodes_from(self.nodes)
        try:
            tree = kmb_tree(g, req.terminals[0], list(req.terminals[1:]), req.weight)
        except MulticastError as exc:
            return ErrorReply(req.request_id, f"{self.name} cannot build its segment: {exc}")
        seg = TreeSegment(req.request_id, self.domain, tuple(tuple(e) for e in tree.edges))
        self.segments[req.request_id] = seg
        if len(self.segments) > 1024:  # keep recent answers only (retries come within seconds)
            self.segments.pop(next(iter(self.segments)))
        return seg


__all__ = ["ControlPlaneError", "DomainController"]
