"""Root controller: global link-state and group views, inter-domain planning, tree composition.

Follows the paper's hierarchy (Section III): local (domain) controllers report link state and group
membership to the root; the root holds the processed global state (the "knowledge plane"), decides the
inter-domain part of a tree (domain tree + boundary crossings) and asks each domain controller for its
intra-domain segment, then validates and commits the composed tree.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import networkx as nx

from ..topology import MultiDomainTopology
from ..trees import plan_inter_domain, prune_tree, validate_tree
from .links import check_weight, domain_label, graph_from_links
from .messages import (
    BoundaryInfo,
    ErrorReply,
    GroupView,
    Hello,
    LinkStateReport,
    MembershipReport,
    Rejected,
    SegmentRequest,
    StateDigest,
    TreeCommit,
    TreeRequest,
    TreeSegment,
    ViewQuery,
    ViewReply,
)
from .state import VersionedStore
from .transport import Channel, ChannelTiming, ControlPlaneError, FaultConfig

log = logging.getLogger(__name__)


class RootController:
    def __init__(self, topology: MultiDomainTopology, sync_period_s: float, staleness_bound_s: float,
                 faults: FaultConfig, timing: ChannelTiming, segment_timeout_s: float = 2.0,
                 marl_checkpoint: str | None = None, preload_marl: bool = False):
        self.topology = topology
        self.marl_checkpoint = marl_checkpoint
        self._root_agent = None
        if preload_marl:
            self.root_agent()
        self.sync_period_s = sync_period_s
        self.faults, self.timing = faults, timing
        self.segment_timeout_s = segment_timeout_s
        self.link_state = VersionedStore(staleness_bound_s)
        self.membership = VersionedStore(staleness_bound_s)
        self.boundary: dict[int, BoundaryInfo] = {}
        self.domains: dict[int, Channel] = {}  # domain -> the channel its controller said Hello on
        self.incarnations: dict[int, int] = {}  # domain -> incarnation of the bound controller
        self.channels: set[Channel] = set()
        self.group_views: dict[int, GroupView] = {}
        self.commits = itertools.count(1)
        self._segments: dict[tuple[int, int], asyncio.Future] = {}
        self._conn_ids = itertools.count(1)
        # segment ids are the root's own: clients number their requests independently
        self._segment_ids = itertools.count(1)

    def root_agent(self):
        """The trained inter-domain agent (loaded on first use: torch is imported only when needed)."""
        if self._root_agent is None:
            from ..marl.serving import RootAgent

            self._root_agent = RootAgent(self.topology, self.marl_checkpoint)
        return self._root_agent

    @property
    def version(self) -> int:
        return self.link_state.version + self.membership.version

    async def serve(self, port: int) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._on_connect, "127.0.0.1", port)
        asyncio.get_running_loop().create_task(self._digest_loop())
        return server

    async def _on_connect(self, reader, writer) -> None:
        ch = Channel(reader, writer, "root", f"conn{next(self._conn_ids)}", self._handle, self.faults, self.timing)
        self.channels.add(ch)
        ch.on_dead = self._on_dead

    def _on_dead(self, ch: Channel) -> None:
        self.channels.discard(ch)
        for d, c in list(self.domains.items()):
            if c is ch:
                del self.domains[d]
                log.warning("root: domain controller %s disconnected (%s)", domain_label(d), ch.dead_reason)
                for (_rid, dd), fut in self._segments.items():
                    if dd == d and not fut.done():
                        fut.set_exception(ControlPlaneError(f"domain {domain_label(d)} controller disconnected"))

    # ---- message handling ----
    def _bind_domain(self, ch: Channel, msg: Hello) -> None:
        d = msg.domain
        if d not in range(self.topology.n_domains):
            log.error("root: %s says Hello as unknown domain %s; not bound", ch.peer, d)
            return
        cur = self.domains.get(d)
        if cur is not None and cur is not ch and cur.alive and msg.incarnation < self.incarnations.get(d, 0):
            log.error("root: Hello for %s from an older incarnation (%d < %d) while the current controller is "
                      "connected; not bound", domain_label(d), msg.incarnation, self.incarnations[d])
            return
        if cur is not None and cur is not ch:
            log.warning("root: %s controller reconnected (incarnation %d, was %d)", domain_label(d),
                        msg.incarnation, self.incarnations.get(d, 0))
        ch.peer = f"domain {domain_label(d)}"
        self.domains[d] = ch
        self.incarnations[d] = msg.incarnation

    def _from_domain(self, ch: Channel, domain: int, what: str) -> bool:
        """True iff ``ch`` is the connection bound to ``domain`` (else the message is logged and dropped)."""
        if self.domains.get(domain) is ch:
            return True
        log.warning("root: dropping %s for %s from %s: not that domain's controller connection", what,
                    domain_label(domain), ch.peer)
        return False

    async def _handle(self, ch: Channel, msg) -> None:
        now = time.time()
        if isinstance(msg, Hello):
            if msg.role == "domain":
                self._bind_domain(ch, msg)
            else:
                ch.peer = msg.name or msg.role
        elif isinstance(msg, BoundaryInfo):
            if not self._from_domain(ch, msg.domain, "BoundaryInfo"):
                return
            expected = self.topology.boundary_nodes(msg.domain)
            if set(msg.boundary_nodes) != expected:
                log.error("root: %s reports boundary %s, topology says %s", domain_label(msg.domain),
                          sorted(msg.boundary_nodes), sorted(expected))
            self.boundary[msg.domain] = msg
        elif isinstance(msg, (LinkStateReport, MembershipReport)):
            kind = "link_state" if isinstance(msg, LinkStateReport) else "membership"
            if not self._from_domain(ch, msg.domain, f"{kind} report seq {msg.seq}"):
                await ch.send(Rejected(kind, msg.domain, msg.seq,
                                       f"not from {domain_label(msg.domain)}'s controller connection"))
                return
            if msg.incarnation != self.incarnations.get(msg.domain, 0):
                reason = (f"incarnation {msg.incarnation} is not the bound controller's "
                          f"{self.incarnations.get(msg.domain, 0)}")
            else:
                store = self.link_state if kind == "link_state" else self.membership
                value = msg.links if kind == "link_state" else msg.groups
                reason = store.offer(msg.domain, msg.seq, msg.sent_at, value, now, msg.incarnation)
            if reason:
                log.info("root: rejected %s report %s seq %d: %s", kind, domain_label(msg.domain), msg.seq, reason)
                await ch.send(Rejected(kind, msg.domain, msg.seq, reason))
            elif kind == "membership":
                self._rebuild_group_views(now)
        elif isinstance(msg, ViewQuery):
            self._rebuild_group_views(now)
            await ch.send(ViewReply(msg.request_id, "root", self.version, self._link_seqs(),
                                    self.group_views.get(msg.group)))
        elif isinstance(msg, TreeSegment):
            if not self._from_domain(ch, msg.domain, f"TreeSegment {msg.request_id}"):
                return
            fut = self._segments.get((msg.request_id, msg.domain))
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, ErrorReply):
            for (rid, d), fut in self._segments.items():
                if rid == msg.request_id and self.domains.get(d) is ch and not fut.done():
                    fut.set_exception(ControlPlaneError(msg.reason))
        elif isinstance(msg, TreeRequest):
            await self._serve_tree(ch, msg)

    def _link_seqs(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self.link_state.seqs().items()))

    def _rebuild_group_views(self, now: float) -> None:
        """Group views from fresh membership reports only: a silent domain's members expire with it."""
        by_group: dict[int, dict[int, tuple[int, ...]]] = {}
        for d in range(self.topology.n_domains):
            if not self.membership.is_fresh(d, now):
                continue
            for group, members in self.membership.get(d).value:
                if members:
                    by_group.setdefault(group, {})[d] = tuple(sorted(members))
        for group in set(by_group) | set(self.group_views):
            mbd = tuple(sorted(by_group.get(group, {}).items()))
            old = self.group_views.get(group)
            if old is None or old.members_by_domain != mbd:
                self.group_views[group] = GroupView(group, (old.version + 1) if old else 1, mbd)

    async def _digest_loop(self) -> None:
        """Push the global view to every domain twice per sync period (reliable sends, in parallel)."""
        while True:
            await asyncio.sleep(self.sync_period_s / 2)
            self._rebuild_group_views(time.time())
            digest = StateDigest(self.version, time.time(), self._link_seqs(),
                                 tuple((g, v.version, v.members_by_domain) for g, v in sorted(self.group_views.items())))
            for ch in list(self.domains.values()):
                ch.spawn(ch.send(digest, timeout_s=self.sync_period_s))

    # ---- trees ----
    async def _serve_tree(self, ch: Channel, req: TreeRequest) -> None:
        try:
            check_weight(req.weight)
            commit = await self._build_tree(req)
        except (ControlPlaneError, ValueError, asyncio.TimeoutError) as exc:
            await ch.send(ErrorReply(req.request_id, str(exc) or type(exc).__name__))
            return
        await ch.send(commit)
        for d in {self.topology.domain_of[n] for e in commit.edges for n in e}:
            dch = self.domains.get(d)
            if dch is not None:
                dch.spawn(dch.send(commit))

    async def _build_tree(self, req: TreeRequest) -> TreeCommit:
        now = time.time()
        self._rebuild_group_views(now)
        view = self.group_views.get(req.group)
        if view is None or not view.members:
            raise ControlPlaneError(f"group {req.group} has no members")
        dom = self.topology.domain_of
        if req.source not in dom:
            raise ControlPlaneError(f"source {req.source} is not an AP of this network")
        members = [m for m in view.members if m != req.source]
        # a domain whose link state is older than the staleness bound can neither serve nor transit a tree
        fresh = {d for d in range(self.topology.n_domains) if self.link_state.is_fresh(d, now)}
        for d in sorted({dom[req.source], *(dom[m] for m in members)} - fresh):
            e = self.link_state.get(d)
            age = "never reported" if e is None else f"last report {now - e.sent_at:.2f} s ago"
            raise ControlPlaneError(f"link state of domain {domain_label(d)} is stale ({age})")
        links = [lk for d in sorted(fresh) for lk in self.link_state.get(d).value
                 if dom[lk[0]] in fresh and dom[lk[1]] in fresh]
        graph = graph_from_links(links)
        graph.add_nodes_from(self.topology.nodes)
        if req.policy == "marl":
            from ..marl.serving import snapshot_from_links

            plan = self.root_agent().plan(snapshot_from_links(self.topology, links, now), req.source, members)
        elif req.policy == "kmb":
            plan = plan_inter_domain(self.topology, graph, req.source, members, req.weight)
        else:
            raise ControlPlaneError(f"unknown tree policy {req.policy!r}: expected 'kmb' or 'marl'")
        reentry = not hasattr(plan, "terminals")  # a ReentryPlan: several entries per domain may overlap
        if reentry:
            requests = {d: (terms, entries) for d, (entries, terms) in plan.segments.items() if terms}
            crossings = plan.crossings
        else:
            requests = {d: (tuple(terms), ()) for d, terms in plan.terminals.items() if len(terms) >= 2}
            crossings = tuple(plan.crossings.values())
        waits = {}
        sid = next(self._segment_ids)
        for d, (terms, entries) in requests.items():
            dch = self.domains.get(d)
            if dch is None or not dch.alive:
                raise ControlPlaneError(f"domain {domain_label(d)} controller is not connected")
            fut = asyncio.get_running_loop().create_future()
            self._segments[(sid, d)] = fut
            entry = self.link_state.get(d)  # the report the plan used: the segment is built on the same state
            link_seq = entry.seq if entry is not None else 0
            dch.spawn(dch.send(SegmentRequest(sid, d, terms, req.weight, req.policy, entries, link_seq),
                               timeout_s=self.segment_timeout_s))
            waits[d] = fut
        try:
            tree = nx.Graph()
            tree.add_node(req.source)
            for d, fut in waits.items():
                try:
                    seg = await asyncio.wait_for(fut, self.segment_timeout_s)
                except asyncio.TimeoutError:
                    raise ControlPlaneError(f"domain {domain_label(d)} controller did not return its segment "
                                            f"within {self.segment_timeout_s:.1f} s") from None
                tree.add_edges_from(seg.edges)
            tree.add_edges_from(crossings)
        finally:
            for d in waits:
                self._segments.pop((sid, d), None)
        if reentry:  # the union may hold cycles: its cheapest spanning tree, pruned
            missing = [e for e in tree.edges if not graph.has_edge(*e)]
            if missing:
                raise ControlPlaneError(f"segments use links that are not up: {missing[:3]}")
            from ..marl.reentry import reduce_union  # no torch: the graph code only

            tree = reduce_union(graph, tree, (req.source, *members), plan.objective)
        else:
            tree = prune_tree(tree, (req.source, *members))
        validate_tree(graph, tree, req.source, members)
        edges = tuple(sorted(tuple(sorted(e)) for e in tree.edges))
        return TreeCommit(req.request_id, next(self.commits), req.group, req.source, edges, tuple(members))
