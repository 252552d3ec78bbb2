"""Control-plane building blocks: message encoding, versioned state, reliable channels over real sockets."""

import asyncio
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdwn_multicast.control.messages import (
    MESSAGE_TYPES,
    GroupView,
    LinkStateReport,
    ProtocolError,
    StateDigest,
    TreeCommit,
    ViewReply,
    decode_body,
    encode_frame,
)
from sdwn_multicast.control.state import VersionedStore
from sdwn_multicast.control.transport import (
    Channel,
    ChannelTiming,
    FaultConfig,
    PeerDeadError,
    open_channel,
)

ints = st.integers(-(2 ** 31), 2 ** 31)
link = st.tuples(st.integers(0, 300), st.integers(0, 300), st.floats(0, 30), st.floats(0, 100), st.floats(0, 1),
                 st.booleans())


@settings(max_examples=60)
@given(st.one_of(
    st.builds(LinkStateReport, domain=st.integers(0, 7), seq=ints, sent_at=st.floats(0, 2e9), step=ints,
              links=st.lists(link, max_size=20).map(tuple)),
    st.builds(TreeCommit, request_id=ints, version=ints, group=ints, source=ints,
              edges=st.lists(st.tuples(ints, ints), max_size=10).map(tuple)),
    st.builds(ViewReply, request_id=ints, controller=st.text(max_size=10), version=ints,
              link_seqs=st.lists(st.tuples(ints, ints), max_size=4).map(tuple),
              group_view=st.none() | st.builds(GroupView, group=ints, version=ints, members_by_domain=st.lists(
                  st.tuples(ints, st.lists(ints, max_size=3).map(tuple)), max_size=3).map(tuple))),
    st.builds(StateDigest, version=ints, sent_at=st.floats(0, 2e9), link_seqs=st.just(((0, 1),)),
              group_views=st.just(((1, 2, ((0, (3, 4)),)),))),
))
def test_every_message_survives_the_wire_unchanged(msg):
    frame = encode_frame(7, msg)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_body(frame[4:]) == (7, msg)


def test_unknown_message_types_are_a_protocol_error():
    import msgpack
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_body(msgpack.packb({"id": 1, "m": {"t": "Bogus", "b": {}}}))
    assert "TreeRequest" in MESSAGE_TYPES


deliveries = st.lists(st.tuples(st.integers(1, 30), st.floats(0, 10)), max_size=60)


@settings(max_examples=200)
@given(deliveries=deliveries)
def test_versioned_store_keeps_the_newest_fresh_update_under_reordering_and_duplicates(deliveries):
    """Deliveries arrive in any order, possibly duplicated; each has (seq, age at arrival in s)."""
    store = VersionedStore(staleness_bound_s=5.0)
    now = 1000.0
    accepted = []
    for i, (seq, age) in enumerate(deliveries):
        if store.offer("d0", seq, now - age, i, now) is None:
            accepted.append(i)
    seqs = [deliveries[i][0] for i in accepted]
    assert seqs == sorted(set(seqs)), "accepted sequence numbers strictly increase"
    assert all(deliveries[i][1] <= 5.0 for i in accepted), "stale updates are never accepted"
    assert store.version == len(accepted)
    fresh = [seq for seq, age in deliveries if age <= 5.0]
    if fresh:
        assert store.get("d0").seq == max(fresh), "the newest fresh update always wins"
    else:
        assert store.get("d0") is None


def test_versioned_store_reports_why_it_rejects():
    store = VersionedStore(staleness_bound_s=1.0)
    assert store.offer(0, 5, 100.0, "x", 100.2) is None
    assert "seq 5 <= current 5" in store.offer(0, 5, 100.1, "dup", 100.2)
    assert "old" in store.offer(0, 9, 90.0, "ancient", 100.2)
    assert store.get(0).value == "x"
    assert not store.is_fresh(0, 102.0)


async def _pair(faults, timing, inbox):
    accepted = asyncio.get_running_loop().create_future()

    async def on_server_msg(ch, msg):
        inbox.append(msg)

    async def on_connect(reader, writer):
        accepted.set_result(Channel(reader, writer, "server", "client", on_server_msg, faults, timing))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def ignore(ch, msg):
        return None
    client = await open_channel("127.0.0.1", port, "client", "server", ignore, faults, timing)
    return server, client, await accepted


def test_reliable_channel_delivers_exactly_once_despite_drops_duplicates_and_delays():
    async def main():
        inbox = []
        faults = FaultConfig(drop_prob=0.3, dup_prob=0.3, max_delay_ms=15, seed=1)
        server, client, peer = await _pair(faults, ChannelTiming(rto_s=0.03, send_timeout_s=5.0), inbox)
        msgs = [LinkStateReport(0, i, time.time(), i, ()) for i in range(60)]
        await asyncio.gather(*(client.send(m) for m in msgs))
        await asyncio.sleep(0.1)
        stats = dict(client.stats)
        await client.close()
        await peer.close()
        server.close()
        return inbox, stats, peer.stats
    inbox, stats, peer_stats = asyncio.run(main())
    assert sorted(m.seq for m in inbox) == list(range(60))
    assert stats["dropped"] > 0 and stats["duplicated"] > 0 and stats["retransmitted"] > 0
    assert peer_stats["dup_received"] > 0


def test_send_to_a_closed_peer_raises_an_error_naming_it():
    async def main():
        server, client, peer = await _pair(FaultConfig(), ChannelTiming(rto_s=0.02, send_timeout_s=1.0), [])
        await peer.close()
        server.close()
        await asyncio.sleep(0.2)
        with pytest.raises(PeerDeadError, match="peer server"):
            await client.send(LinkStateReport(0, 1, 0.0, 0, ()))
    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_silent_peer_is_declared_dead_within_the_deadline():
    async def main():
        async def mute(reader, writer):  # accepts, never speaks, never acks
            await asyncio.sleep(30)
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def ignore(ch, msg):
            return None
        timing = ChannelTiming(rto_s=0.05, send_timeout_s=5.0, heartbeat_s=0.05, dead_after_s=0.5)
        ch = await open_channel("127.0.0.1", port, "client", "mute-root", ignore, FaultConfig(), timing)
        with pytest.raises(PeerDeadError, match="mute-root") as info:
            await ch.send(LinkStateReport(0, 1, 0.0, 0, ()))
        server.close()
        return info.value
    err = asyncio.run(asyncio.wait_for(main(), 10))
    # declared dead by silence (dead_after_s = 0.5 s) long before the 5 s send deadline could expire
    assert type(err) is PeerDeadError and "silent for" in str(err)


def test_connecting_to_nobody_fails_with_the_peer_name():
    with socket.socket() as sock:  # a port that was just free and that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main():
        async def ignore(ch, msg):
            return None
        with pytest.raises(PeerDeadError, match=f"root is dead: cannot connect to 127.0.0.1:{port}"):
            await open_channel("127.0.0.1", port, "client", "root", ignore, connect_timeout_s=0.3)
    asyncio.run(main())
