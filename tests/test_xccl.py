"""XCCL p2p across real processes: shared memory on one host, gloo across simulated hosts."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdeepserve.api.launch import free_port
from xdeepserve.xccl.region import list_segments

from .xccl_workers import worker


class Cluster:
    """``world`` worker processes in one XCCL group, driven through queues."""

    def __init__(self, hosts: list[str], **config) -> None:
        ctx = mp.get_context("spawn")
        self.world = len(hosts)
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in hosts]
        port = free_port()
        self.procs = [
            ctx.Process(target=worker, args=(r, self.world, port, h, config, self.commands[r], self.results), daemon=True)
            for r, h in enumerate(hosts)
        ]
        for p in self.procs:
            p.start()
        ready = self.collect(timeout_s=120)
        assert all(kind == "ready" for kind, _ in ready.values()), ready
        self.info = {r: v for r, (_, v) in ready.items()}

    def collect(self, ranks=None, timeout_s: float = 60) -> dict[int, tuple[str, object]]:
        ranks = set(range(self.world) if ranks is None else ranks)
        out: dict[int, tuple[str, object]] = {}
        deadline = time.monotonic() + timeout_s
        while ranks - out.keys():
            rank, kind, value = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            out[rank] = (kind, value)
        return out

    def all(self, cmd: str, arg) -> dict[int, tuple[str, object]]:
        for q in self.commands:
            q.put((cmd, arg))
        return self.collect()

    def stop(self) -> None:
        for r, p in enumerate(self.procs):
            if p.is_alive():
                self.commands[r].put(("stop", None))
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def same_host():
    c = Cluster(["h0"] * 4, lanes=2, slots=2, slot_bytes=4096, timeout_s=10.0)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def two_hosts():
    c = Cluster(["h0", "h0", "h1", "h1"], lanes=3, slots=3, slot_bytes=1024, timeout_s=10.0)
    yield c
    c.stop()


@pytest.fixture(scope="module", autouse=True)
def no_leaked_segments():
    yield
    leaked = list_segments()
    assert not leaked, f"shared-memory segments left behind: {leaked}"


transfer = st.tuples(
    st.integers(0, 3), st.integers(0, 3), st.integers(0, 20_000), st.sampled_from(["float32", "int64", "uint8", "bfloat16"])
).filter(lambda t: t[0] != t[1])


def _as_transfers(specs) -> list[tuple[int, int, int, str, int]]:
    return [(s, d, n, dt, 1000 + i) for i, (s, d, n, dt) in enumerate(specs)]


def test_transports_follow_declared_hosts(same_host, two_hosts):
    assert all(t == "shm" for info in same_host.info.values() for t in info["transports"].values())
    t = two_hosts.info[0]["transports"]
    assert t == {1: "shm", 2: "gloo", 3: "gloo"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(transfer, min_size=1, max_size=12))
def test_random_p2p_traffic_is_delivered_exactly_on_one_host(same_host, specs):
    results = same_host.all("transfers", _as_transfers(specs))
    assert all(kind == "ok" and all(v) for kind, v in results.values()), results


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(transfer, min_size=1, max_size=10))
def test_mixed_same_host_and_cross_host_groups_deliver_the_same_bytes(two_hosts, specs):
    results = two_hosts.all("transfers", _as_transfers(specs))
    assert all(kind == "ok" and all(v) for kind, v in results.values()), results


def test_blocking_and_non_blocking_sends_to_one_peer_keep_program_order():
    c = Cluster(["h0", "h0"], lanes=2, slots=2, slot_bytes=4096, timeout_s=10.0)
    try:
        for q in c.commands:
            q.put(("mixed_order", None))
        res = c.collect()
        assert res[0] == ("ok", True) and res[1] == ("ok", True), res
    finally:
        c.stop()


def test_messages_larger_than_the_ring_stream_through_it(same_host):
    big = 4 * 4096 * 2 * 10 + 123  # many times the 2 lanes x 2 slots x 4 KiB ring
    results = same_host.all("transfers", [(0, 3, big, "uint8", 1), (3, 0, big // 2, "float32", 2)])
    assert all(kind == "ok" and all(v) for kind, v in results.values()), results


def test_event_mismatch_and_oversize_messages_raise_specific_errors():
    c = Cluster(["h0", "h0"], lanes=1, slots=2, slot_bytes=1024, timeout_s=2.0)
    try:
        c.commands[0].put(("send", (1, 16, 5)))
        c.commands[1].put(("recv", (0, 16, 6)))
        res = c.collect()
        assert res[1][0] == "xccl_error" and res[1][1][0] == "EventMismatchError" and res[1][1][1] == 0
        assert "expected event 6" in res[1][1][2] and "found event 5" in res[1][1][2]
        assert res[0][0] == "xccl_error" and res[0][1][0] == "XcclTimeoutError"  # never acknowledged
    finally:
        c.stop()
    c = Cluster(["h0", "h0"], lanes=1, slots=2, slot_bytes=1024, timeout_s=2.0)
    try:
        c.commands[0].put(("send", (1, 1000, 9)))
        c.commands[1].put(("recv", (0, 10, 9)))
        res = c.collect()
        assert res[1][1][0] == "MessageSizeError" and "4000 bytes" in res[1][1][2]
    finally:
        c.stop()


@pytest.mark.parametrize("hosts", [["h0", "h0"], ["h0", "h1"]])
def test_killed_peer_is_named_within_the_deadline_and_its_segment_removed(hosts):
    c = Cluster(hosts, lanes=2, slots=2, slot_bytes=1024, timeout_s=5.0)
    try:
        c.commands[0].put(("recv", (1, 64, 1)))  # waits for a message that never comes
        time.sleep(0.3)
        os.kill(c.info[1]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        res = c.collect([0], timeout_s=30)
        elapsed = time.monotonic() - t0
        kind, (name, peer, message) = res[0]
        assert kind == "xccl_error" and peer == 1 and "rank 1" in message, res
        if hosts[0] == hosts[1]:
            assert name == "PeerDeadError" and elapsed < 1.0  # shared memory: liveness polled every 10 ms
        else:
            assert name in ("PeerDeadError", "XcclTimeoutError") and elapsed < 6.0  # gloo: its own timeout
        assert not any(f"_1_{c.info[1]['pid']}" in s for s in list_segments())
    finally:
        c.stop()


ep_case = st.fixed_dictionaries({
    "seed": st.integers(1, 10_000),
    "tokens": st.lists(st.integers(0, 24), min_size=4, max_size=4),
    "k": st.integers(1, 4),
    "experts": st.sampled_from([4, 8]),
    "hidden": st.sampled_from([6, 8, 32]),
    "int8": st.booleans(),
    "dtype": st.sampled_from(["float32", "bfloat16"]),
})


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 9), hidden=st.integers(1, 40), int8=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 1000))
def test_records_round_trip_rows_and_expert_ids_for_any_row_width(n, hidden, int8, dtype, seed):
    from xdeepserve.xccl.ep import pack_records, record_views

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, hidden, generator=g).to(dtype)
    index = torch.randint(0, 12, (n,), generator=g)
    ids = torch.randint(0, 64, (n,), generator=g)
    records = pack_records(x, index, ids, int8)
    got_ids, rows = record_views(records.reshape(-1), hidden, dtype, int8)
    assert got_ids.tolist() == ids.tolist()
    want = x[index].float()
    if not int8:
        assert torch.equal(rows, x[index])
        return
    # half a quantisation step of the row's max, plus the rounding back to a 16-bit dtype
    step = want.abs().amax(dim=1, keepdim=True) / 127
    rounding = want.abs() * (2**-7 if dtype != torch.float32 else 0)
    assert bool(((rows.float() - want).abs() <= step * 0.51 + rounding + 1e-6).all())


def _ep_tolerance(case) -> float:
    # outputs reach |w| * |x| * experts; int8 rounding costs 1/254 of a row's max, bf16 1/256 relative
    scale = case["k"] * (case["experts"] + 1) * 4.0
    return scale * ((1 / 100 if case["int8"] else 0) + (1 / 128 if case["dtype"] == "bfloat16" else 1e-6))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ep_case)
def test_dispatch_and_combine_equal_the_local_moe_reference(same_host, case):
    results = same_host.all("ep", case)
    assert all(kind == "ok" for kind, _ in results.values()), results
    assert max(err for _, err in results.values()) <= _ep_tolerance(case), (case, results)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ep_case)
def test_dispatch_and_combine_across_simulated_hosts_give_the_same_results(two_hosts, case):
    results = two_hosts.all("ep", case)
    assert all(kind == "ok" for kind, _ in results.values()), results
    assert max(err for _, err in results.values()) <= _ep_tolerance(case), (case, results)


@pytest.fixture(scope="module")
def seven_ranks():
    c = Cluster(["h0"] * 7, lanes=1, slots=2, slot_bytes=4096, timeout_s=10.0)
    yield c
    c.stop()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(1, 10_000), tokens=st.integers(0, 16), k=st.integers(1, 3), int8=st.booleans(),
       trampolines=st.booleans())
def test_a2e_e2a_between_3_attention_and_4_expert_ranks_equal_the_reference(seven_ranks, seed, tokens, k, int8,
                                                                           trampolines):
    # 3 attention < 4 expert ranks: the first 3 expert ranks are trampolines. The direct variant uses
    # 3 attention and 3 expert ranks (rank 6 idles), where no trampoline is needed.
    experts = [3, 4, 5, 6] if trampolines else [3, 4, 5]
    case = dict(seed=seed, attention=[0, 1, 2], experts=experts, tokens=tokens, k=k,
                num_experts=12, hidden=16, int8=int8)
    results = seven_ranks.all("afd", case)
    assert all(kind == "ok" for kind, _ in results.values()), results
    errors = [results[r][1] for r in (0, 1, 2)]
    tolerance = k * 13 * 4.0 * (1 / 100 if int8 else 1e-6)
    assert max(errors) <= tolerance, (case, errors)


def test_afd_layout_pairs_each_attention_rank_with_one_trampoline():
    from xdeepserve.xccl.afd import AfdLayout

    layout = AfdLayout((4, 5, 6), (0, 1, 2, 3), 8)
    assert layout.uses_trampolines and layout.trampolines == (0, 1, 2)
    assert [layout.trampoline_of(a) for a in (4, 5, 6)] == [0, 1, 2]
    assert layout.placement.owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="both an attention and an expert rank"):
        AfdLayout((0, 1), (1, 2), 4)
