"""Root controller message handling in-process (fake channels): who may report, restarts, bad requests."""

import asyncio
import time

import pytest

from sdwn_multicast.control import ControlPlane
from sdwn_multicast.control.links import graph_from_links, link_tuples
from sdwn_multicast.control.messages import (
    ErrorReply,
    Hello,
    LinkStateReport,
    MembershipReport,
    Rejected,
    TreeRequest,
)
from sdwn_multicast.control.root import RootController
from sdwn_multicast.control.state import VersionedStore
from sdwn_multicast.control.transport import Channel, ChannelTiming, FaultConfig, open_channel
from sdwn_multicast.simulator import WEIGHTS
from sdwn_multicast.topology import paper_topology


class FakeChannel:
    def __init__(self, peer):
        self.peer, self.alive, self.sent = peer, True, []

    async def send(self, msg, timeout_s=None):
        self.sent.append(msg)

    def spawn(self, coro):
        return asyncio.ensure_future(coro)


def _root():
    return RootController(paper_topology(), sync_period_s=0.5, staleness_bound_s=2.0, faults=FaultConfig(),
                          timing=ChannelTiming())


def _report(domain, seq, incarnation, sent_at=None):
    return LinkStateReport(domain, seq, time.time() if sent_at is None else sent_at, 0, ((1, 2, 5.0, 1.0, 0.0, True),),
                           incarnation)


def _run(coro):
    return asyncio.run(coro)


def test_a_client_injected_report_is_dropped_and_does_not_poison_the_view():
    async def main():
        root = _root()
        dom, client = FakeChannel("d0"), FakeChannel("client")
        await root._handle(dom, Hello("domain", 0, "domain D1", incarnation=7))
        await root._handle(client, Hello("client", -1, "evil"))
        await root._handle(client, _report(0, 10 ** 9, 7))  # a huge seq from a non-domain channel
        await root._handle(client, MembershipReport(0, 10 ** 9, time.time(), ((1, (3,)),), 7))
        assert root.link_state.get(0) is None and root.membership.get(0) is None
        assert all(isinstance(m, Rejected) and "controller connection" in m.reason for m in client.sent)
        await root._handle(dom, _report(0, 1, 7))  # the real controller's first report is accepted
        assert root.link_state.get(0).seq == 1 and not dom.sent
        # a domain controller may not report for another domain either
        await root._handle(dom, _report(1, 5, 7))
        assert root.link_state.get(1) is None and isinstance(dom.sent[-1], Rejected)
    _run(main())


def test_a_restarted_domain_controller_supersedes_its_previous_incarnation():
    async def main():
        root = _root()
        old, new = FakeChannel("old"), FakeChannel("new")
        await root._handle(old, Hello("domain", 0, "domain D1", incarnation=100))
        await root._handle(old, _report(0, 500, 100))
        await root._handle(new, Hello("domain", 0, "domain D1", incarnation=200))  # restart: seq back to 1
        await root._handle(new, _report(0, 1, 200))
        assert (root.link_state.get(0).incarnation, root.link_state.get(0).seq) == (200, 1) and not new.sent
        await root._handle(old, _report(0, 501, 100))  # the old life's connection is no longer bound
        assert root.link_state.get(0).seq == 1 and isinstance(old.sent[-1], Rejected)
    _run(main())


def test_an_unknown_weight_is_answered_with_an_error_naming_it():
    async def main():
        root = _root()
        client = FakeChannel("client")
        await root._handle(client, TreeRequest(3, group=1, source=1, weight="bogus"))
        (reply,) = client.sent
        assert isinstance(reply, ErrorReply) and reply.request_id == 3
        assert "unknown weight 'bogus'" in reply.reason and "delay_ms" in reply.reason
    _run(main())


def test_store_accepts_a_lower_seq_once_the_stored_entry_is_stale():
    store = VersionedStore(staleness_bound_s=1.0)
    assert store.offer(0, 10 ** 9, 100.0, "bogus", 100.0) is None
    assert "seq 1 <= current" in store.offer(0, 1, 100.5, "real", 100.5)  # still fresh: refused
    assert store.offer(0, 2, 101.5, "real", 101.5) is None  # bogus entry aged out: accepted
    assert store.get(0).value == "real"
    assert store.offer(0, 1, 101.6, "restart", 101.6, incarnation=5) is None  # newer incarnation wins
    assert "incarnation 0 < current 5" in store.offer(0, 9, 101.7, "old life", 101.7)


def test_handler_failures_become_error_replies_not_timeouts():
    """An unexpected exception in any handler reaches the requester as an ErrorReply naming it."""
    async def main():
        async def broken(ch, msg):
            raise KeyError("boom")

        async def on_connect(reader, writer):
            Channel(reader, writer, "server", "client", broken)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got = asyncio.get_running_loop().create_future()

        async def collect(ch, msg):
            if not got.done():
                got.set_result(msg)
        ch = await open_channel("127.0.0.1", port, "client", "server", collect)
        await ch.send(TreeRequest(42, 1, 1))
        reply = await asyncio.wait_for(got, 10)
        await ch.close()
        server.close()
        return reply
    reply = _run(main())
    assert isinstance(reply, ErrorReply) and reply.request_id == 42
    assert "KeyError" in reply.reason and "boom" in reply.reason and "TreeRequest" in reply.reason


def test_reported_links_give_the_snapshot_graph_weights(paper_snapshot):
    topo = paper_snapshot.topology
    g = graph_from_links(link_tuples(topo, paper_snapshot, range(len(topo.edges))))
    ref = paper_snapshot.to_graph()
    assert set(map(frozenset, g.edges)) == set(map(frozenset, ref.edges))
    for u, v, attrs in g.edges(data=True):
        for w in WEIGHTS:
            assert attrs[w] == pytest.approx(ref.edges[u, v][w])


def test_control_plane_removes_its_temporary_log_dir_but_keeps_a_given_one(tmp_path):
    plane = ControlPlane("paper9")
    tmp_logs = plane.log_dir
    assert tmp_logs.is_dir()
    plane.close()
    assert not tmp_logs.exists()
    kept = ControlPlane("paper9", log_dir=tmp_path / "logs")
    kept.close()
    assert (tmp_path / "logs").is_dir()
