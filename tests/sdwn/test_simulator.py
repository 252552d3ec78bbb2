"""Link-state simulator: the paper's value ranges, determinism, traffic profile, failures, datasets."""

import numpy as np
import pytest

from sdwn_multicast.dataset import DatasetError, generate_dataset, load_dataset
from sdwn_multicast.simulator import (
    WEIGHTS,
    LinkStateSimulator,
    diurnal_profile,
    gravity_traffic_matrices,
    with_link_failed,
)
from sdwn_multicast.topology import paper_topology
from sdwn_multicast.wireless import WirelessModel


@pytest.fixture(scope="module")
def day_of_snapshots():
    sim = LinkStateSimulator(paper_topology(), seed=1)
    return [s for i, s in enumerate(sim.run(8640)) if i % 20 == 0]


def test_diurnal_profile_has_mean_one_peak_two_trough_point_two():
    p = diurnal_profile()
    assert p.shape == (24,)
    assert p.mean() == pytest.approx(1.0, abs=1e-9)
    assert p.max() == pytest.approx(2.0) and p.min() == pytest.approx(0.2)


def test_gravity_matrices_have_mean_200_and_zero_diagonal():
    m = gravity_traffic_matrices(30, np.random.default_rng(0))
    off = ~np.eye(30, dtype=bool)
    assert m.shape == (24, 30, 30)
    assert m[:, off].mean() == pytest.approx(200.0)
    assert np.all(m[:, ~off] == 0)
    hourly = m[:, off].mean(axis=1)
    assert hourly.max() / hourly.mean() == pytest.approx(2.0) and hourly.min() / hourly.mean() == pytest.approx(0.2)


def test_path_loss_lowers_rate_with_distance():
    w = WirelessModel()
    rates = w.phy_rate_mbps(w.snr_db(np.array([20.0, 40.0, 60.0, 200.0])))
    assert list(rates) == sorted(rates, reverse=True)
    assert rates[0] == 54.0 and rates[-1] == 0.0


def test_snapshots_stay_in_the_papers_ranges(day_of_snapshots):
    up = [s.up for s in day_of_snapshots]
    free = np.concatenate([s.free_bw_mbps[u] for s, u in zip(day_of_snapshots, up)])
    delay = np.concatenate([s.delay_ms[u] for s, u in zip(day_of_snapshots, up)])
    loss = np.concatenate([s.loss[u] for s, u in zip(day_of_snapshots, up)])
    dist = np.concatenate([s.distance_m for s in day_of_snapshots])
    assert free.max() <= 30.0 and 15.0 <= np.median(free) <= 24.0
    assert 1.5 < np.median(delay) < 3.0
    assert loss.max() <= 0.22 and loss.min() >= 0.0
    assert dist.min() >= 20.0 and dist.max() <= 60.0
    used = np.concatenate([s.used_bw_mbps[u] for s, u in zip(day_of_snapshots, up)])
    cap = np.concatenate([s.capacity_mbps[u] for s, u in zip(day_of_snapshots, up)])
    assert np.allclose(used + free, cap)


def test_same_seed_gives_identical_snapshots_and_other_seed_differs():
    a = [s.free_bw_mbps for s in LinkStateSimulator(paper_topology(), seed=5).run(30)]
    b = [s.free_bw_mbps for s in LinkStateSimulator(paper_topology(), seed=5).run(30)]
    c = [s.free_bw_mbps for s in LinkStateSimulator(paper_topology(), seed=6).run(30)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_forced_link_failure_removes_the_link_until_recovery():
    sim = LinkStateSimulator(paper_topology(), seed=0)
    sim.fail_link(7, 12)
    for s in sim.run(5):
        assert not s.to_graph().has_edge(7, 12)
        assert s.link(7, 12)["free_bw_mbps"] == 0.0
    sim.recover_link(7, 12)
    assert sim.step().link(12, 7)["up"] == 1.0  # seeded: no random failure on this step


def test_to_graph_carries_every_weighting_and_failed_copy_drops_the_link():
    s = LinkStateSimulator(paper_topology(), seed=0).step()
    g = s.to_graph()
    for _, _, d in g.edges(data=True):
        assert all(w in d and d[w] > 0 for w in WEIGHTS)
        assert d["loss_cost"] == pytest.approx(-np.log(1 - d["loss"]))
    s2 = with_link_failed(s, 8, 11)
    assert g.has_edge(8, 11) and not s2.to_graph().has_edge(8, 11)


def test_domain_matrices_are_symmetric_blocks_of_the_dense_matrix():
    s = LinkStateSimulator(paper_topology(), seed=0).step()
    full = s.dense("free_bw_mbps")
    assert np.allclose(full, full.T)
    d2 = s.domain_dense("delay_ms", 1)
    assert d2.shape == (10, 10)
    i, j = s.topology.node_index[11], s.topology.node_index[12]
    if s.topology.graph.has_edge(11, 12):
        assert d2[0, 1] == s.dense("delay_ms")[i, j]
    assert np.count_nonzero(s.domain_dense("hops", 1, fill=0.0)) == 2 * 18 - 2 * int(
        (~s.up[[s.topology.edge_index[e] for e in s.topology.intra_domain_links(1)]]).sum())


def test_dataset_round_trip(tmp_path):
    out = generate_dataset("paper9", 12, tmp_path / "ds", seed=4)
    ds = load_dataset(out)
    assert len(ds) == 12 and ds.array("free_bw_mbps").shape == (12, 15)
    live = list(LinkStateSimulator(ds.topology, seed=4).run(12))
    assert np.allclose(ds[5].delay_ms, live[5].delay_ms)
    assert ds[5].to_graph().number_of_edges() == live[5].to_graph().number_of_edges()


def test_loading_a_non_dataset_directory_fails_clearly(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset directory"):
        load_dataset(tmp_path)


def test_feature_tensor_gives_each_domain_agent_its_own_block():
    s = LinkStateSimulator(paper_topology(), seed=0).step()
    full = s.feature_tensor()
    assert full.shape == (4, 30, 30) and full.dtype == np.float32
    d3 = s.feature_tensor(("free_bw_mbps", "inv_bw"), domain=2)
    assert d3.shape == (2, 10, 10)
    assert np.allclose(d3[0], full[0][20:, 20:])
    assert np.isfinite(d3).all()
