"""Link-state simulator: wireless links, gravity-model background traffic, mobility drift, failures.

One :class:`LinkStateSimulator` steps a :class:`~sdwn_multicast.topology.MultiDomainTopology` forward in
fixed intervals (10 s, the paper's recording period) and emits immutable :class:`LinkStateSnapshot`
records. Per link it models

* capacity = min(configured AP-AP bandwidth, 802.11g goodput at the link's SNR) (paper: 5-40 Mb/s
  configured, log-distance path loss with exponent 4.5);
* used bandwidth = background traffic from 24 hourly gravity matrices (mean 200, peak/mean 2,
  trough/mean 0.2; per-AP totals held at the 30-AP level), routed on hop-shortest paths; traffic is
  elastic (TCP-like), so the carried load saturates at ``max_utilisation`` of capacity;
* delay = 1 ms per-hop processing (paper) + 802.11 channel access + propagation + transmission +
  M/M/1 queueing;
* loss = 1 - (1 - base loss)(1 - frame error rate at the SNR)(1 - M/M/1/K overflow);
* drops = packets lost in the interval; distance from the (drifting) AP positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from .topology import MultiDomainTopology, Node
from .wireless import WirelessModel

SPEED_OF_LIGHT_M_PER_MS = 299_792.458
PACKET_BITS = 1500 * 8

#: Additive link weightings used by every tree algorithm (edge attributes of ``LinkStateSnapshot.to_graph``).
#: ``loss_cost`` is -ln(1 - loss): summing it along a path gives -ln(path delivery probability).
WEIGHTS: tuple[str, ...] = ("inv_bw", "delay_ms", "loss_cost", "hops")


def link_weights(free_bw_mbps, delay_ms, loss, up) -> dict[str, np.ndarray]:
    """The additive weightings of :data:`WEIGHTS` for arrays of link states (inf on failed links).

    The single definition of the weights: snapshots (:meth:`LinkStateSnapshot.weight_arrays`) and the
    controllers' graphs of reported links both use it.
    """
    free_bw_mbps, delay_ms, loss = (np.asarray(a, dtype=float) for a in (free_bw_mbps, delay_ms, loss))
    up = np.asarray(up, dtype=bool)
    with np.errstate(divide="ignore"):
        inv_bw = np.where(up, 1.0 / np.maximum(free_bw_mbps, 1e-3), np.inf)
    return {
        "inv_bw": inv_bw,
        "delay_ms": np.where(up, delay_ms, np.inf),
        "loss_cost": np.where(up, -np.log1p(-np.minimum(loss, 0.999999)), np.inf),
        "hops": np.where(up, 1.0, np.inf),
    }


def diurnal_profile(peak_to_mean: float = 2.0, trough_to_mean: float = 0.2, peak_hour: int = 14
                    ) -> np.ndarray:
    """24 hourly modulation factors with mean exactly 1, maximum ``peak_to_mean``, minimum ``trough_to_mean``.

    p(h) = trough + (peak - trough) * s(h)^gamma with s a raised cosine peaking at ``peak_hour``; gamma
    is found by bisection so the mean is 1.
    """
    if not trough_to_mean < 1.0 < peak_to_mean:
        raise ValueError("need trough_to_mean < 1 < peak_to_mean")
    h = np.arange(24)
    s = (1.0 + np.cos(2 * np.pi * (h - peak_hour) / 24.0)) / 2.0
    target = (1.0 - trough_to_mean) / (peak_to_mean - trough_to_mean)
    lo, hi = 1e-3, 50.0
    for _ in range(200):
        gamma = math.sqrt(lo * hi)
        if np.mean(s ** gamma) > target:
            lo = gamma
        else:
            hi = gamma
    return trough_to_mean + (peak_to_mean - trough_to_mean) * s ** gamma


def gravity_traffic_matrices(n_nodes: int, rng: np.random.Generator, mean_demand: float = 200.0,
                             peak_to_mean: float = 2.0, trough_to_mean: float = 0.2,
                             mass_sigma: float = 0.5, hourly_noise_sigma: float = 0.1) -> np.ndarray:
    """24 modulated gravity traffic matrices, shape (24, N, N), zero diagonal, overall mean ``mean_demand``.

    Gravity model: T_ij proportional to m_i m_j with log-normal node masses m; hour h is scaled by the
    :func:`diurnal_profile` factor and a small log-normal perturbation per entry (modulated gravity
    matrices, as in the paper's background-traffic generator).
    """
    mass = rng.lognormal(0.0, mass_sigma, n_nodes)
    base = np.outer(mass, mass)
    np.fill_diagonal(base, 0.0)
    off = ~np.eye(n_nodes, dtype=bool)
    base = base / base[off].mean()
    prof = diurnal_profile(peak_to_mean, trough_to_mean)
    noise = rng.lognormal(-hourly_noise_sigma ** 2 / 2, hourly_noise_sigma, (24, n_nodes, n_nodes))
    mats = base[None] * prof[:, None, None] * noise
    mats[:, ~off] = 0.0
    # renormalise each hour so hour means follow the profile exactly and the overall mean is mean_demand
    mats *= (prof / mats[:, off].mean(axis=1))[:, None, None]
    return mats * mean_demand


@dataclass(frozen=True)
class SimulatorConfig:
    interval_s: float = 10.0
    start_hour: float = 0.0
    link_bw_range_mbps: tuple[float, float] = (5.0, 40.0)
    base_delay_ms: float = 1.0
    mac_access_delay_ms: float = 0.5  # mean 802.11 DCF contention (DIFS + backoff + ACK) with a few neighbours
    base_loss_range: tuple[float, float] = (0.0, 0.01)
    mean_demand: float = 200.0
    demand_unit_kbps: float = 0.5  # one unit of the gravity matrices in kb/s, for a 30-AP network
    # per-pair demand is scaled by (reference - 1) / (N - 1) so every AP sources as much traffic as in the
    # paper's 30-AP network, whatever N (otherwise total demand grows as N^2 and large graphs saturate)
    demand_reference_nodes: int = 30
    peak_to_mean: float = 2.0
    trough_to_mean: float = 0.2
    max_utilisation: float = 0.95
    buffer_packets: int = 50
    shadowing_corr: float = 0.9
    drift_speed_mps: float = 0.05
    drift_radius_m: float = 2.0
    link_fail_prob: float = 0.002  # per link per step
    link_recover_prob: float = 0.3  # per failed link per step
    wireless: WirelessModel = field(default_factory=WirelessModel)


@dataclass(frozen=True, eq=False)
class LinkStateSnapshot:
    """Per-link network state at one instant; arrays are indexed like ``topology.edges``.

    Units: bandwidths in Mb/s, delay in ms, loss as a probability, drops in packets per interval,
    distance in metres, SNR in dB. ``up`` is False for failed links (their free bandwidth is 0).
    """

    topology: MultiDomainTopology
    step: int
    time_s: float
    capacity_mbps: np.ndarray
    used_bw_mbps: np.ndarray
    free_bw_mbps: np.ndarray
    delay_ms: np.ndarray
    loss: np.ndarray
    drops: np.ndarray
    distance_m: np.ndarray
    snr_db: np.ndarray
    up: np.ndarray

    FIELDS = ("capacity_mbps", "used_bw_mbps", "free_bw_mbps", "delay_ms", "loss", "drops", "distance_m",
              "snr_db", "up")

    @property
    def hour(self) -> float:
        return (self.time_s / 3600.0) % 24.0

    def link(self, u: Node, v: Node) -> dict[str, float]:
        i = self.topology.edge_index[(u, v)]
        return {f: float(getattr(self, f)[i]) for f in self.FIELDS}

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """The additive weightings of :data:`WEIGHTS` per link (inf on failed links)."""
        return link_weights(self.free_bw_mbps, self.delay_ms, self.loss, self.up)

    def to_graph(self) -> nx.Graph:
        """The usable network: up links only, each with every field and every weighting as attributes."""
        g = nx.Graph()
        topo = self.topology
        g.add_nodes_from((n, {"domain": topo.domain_of[n]}) for n in topo.nodes)
        weights = self.weight_arrays()
        cols = {f: getattr(self, f) for f in self.FIELDS if f != "up"}
        for i, (u, v) in enumerate(topo.edges):
            if not self.up[i]:
                continue
            attrs = {f: float(a[i]) for f, a in cols.items()}
            attrs.update({w: float(a[i]) for w, a in weights.items()})
            g.add_edge(u, v, **attrs)
        return g

    def dense(self, values: np.ndarray | str, fill: float = 0.0) -> np.ndarray:
        """Symmetric (N, N) matrix of a per-link array (or field / weighting name) in ``topology.nodes`` order."""
        arr = self._resolve(values)
        n = len(self.topology.nodes)
        out = np.full((n, n), fill, dtype=float)
        u, v = self.topology.edge_endpoints
        out[u, v] = arr
        out[v, u] = arr
        return out

    def domain_dense(self, values: np.ndarray | str, domain: int, fill: float = 0.0) -> np.ndarray:
        """(n_d, n_d) block of :meth:`dense` for one domain: the per-domain matrices an agent observes."""
        idx = self._domain_rows[domain]
        return self.dense(values, fill)[np.ix_(idx, idx)]

    def feature_tensor(self, fields: tuple[str, ...] = ("free_bw_mbps", "delay_ms", "loss", "up"),
                       domain: int | None = None) -> np.ndarray:
        """(F, n, n) float32 stack of per-link fields / weightings as adjacency matrices (0 where no link).

        ``domain`` restricts rows and columns to that domain's APs (in ``topology.nodes`` order): the
        observation of one intra-domain agent. Failed links contribute 0 (``up`` is 0 there).
        """
        mats = []
        for f in fields:
            arr = self._resolve(f)
            arr = np.where(self.up, arr, 0.0) if f != "up" else arr
            mats.append(self.dense(arr) if domain is None else self.domain_dense(arr, domain))
        return np.stack(mats).astype(np.float32)

    @cached_property
    def _domain_rows(self) -> list[np.ndarray]:
        dom = self.topology.domain_array
        return [np.flatnonzero(dom == d) for d in range(self.topology.n_domains)]

    def _resolve(self, values: np.ndarray | str) -> np.ndarray:
        if isinstance(values, str):
            if values in self.FIELDS:
                return np.asarray(getattr(self, values), dtype=float)
            return self.weight_arrays()[values]
        return np.asarray(values, dtype=float)


class LinkStateSimulator:
    """Seeded, steppable network: ``sim.step()`` advances one interval and returns the new snapshot.

    Everything random is drawn from one ``numpy`` generator seeded with ``seed``, so two simulators built
    with the same topology, config and seed produce identical snapshot sequences (the control-plane
    processes rely on this to share one simulated world).
    """

    def __init__(self, topology: MultiDomainTopology, config: SimulatorConfig | None = None, seed: int = 0):
        self.topology = topology
        self.config = config or SimulatorConfig()
        self.rng = np.random.default_rng(seed)
        cfg = self.config
        n, e = len(topology.nodes), len(topology.edges)
        self.home_m = np.array([topology.positions_m[v] for v in topology.nodes], dtype=float)
        # link length at rest comes from the graph (real networks clip it to the AP range); drift adds to it
        self.rest_distance_m = np.array([topology.graph.edges[e]["distance_m"] for e in topology.edges])
        self.position_m = self.home_m.copy()
        self.heading = self.rng.uniform(0, 2 * np.pi, n)
        self.link_bw_mbps = self.rng.uniform(*cfg.link_bw_range_mbps, e)
        self.base_loss = self.rng.uniform(*cfg.base_loss_range, e)
        self.shadowing_db = self.rng.normal(0, cfg.wireless.shadowing_sigma_db, e)
        self.traffic = gravity_traffic_matrices(n, self.rng, cfg.mean_demand, cfg.peak_to_mean,
                                                cfg.trough_to_mean)
        self.up = np.ones(e, dtype=bool)
        self._forced_down: set[int] = set()
        self.step_index = -1
        self.time_s = cfg.start_hour * 3600.0 - cfg.interval_s
        self._routing_cache: dict[bytes, list] = {}
        self.snapshot: LinkStateSnapshot | None = None

    # ---- external events ----
    def fail_link(self, u: Node, v: Node) -> None:
        """Take a link down until :meth:`recover_link` (random failures never bring it back)."""
        i = self.topology.edge_index[(u, v)]
        self._forced_down.add(i)
        self.up[i] = False

    def recover_link(self, u: Node, v: Node) -> None:
        i = self.topology.edge_index[(u, v)]
        self._forced_down.discard(i)
        self.up[i] = True

    # ---- stepping ----
    def step(self) -> LinkStateSnapshot:
        cfg, rng = self.config, self.rng
        self.step_index += 1
        self.time_s += cfg.interval_s
        self._move_nodes()
        e = len(self.topology.edges)
        # failures and recoveries (two-state Markov chain per link)
        fail = rng.random(e) < cfg.link_fail_prob
        recover = rng.random(e) < cfg.link_recover_prob
        self.up = np.where(self.up, ~fail, recover)
        for i in self._forced_down:
            self.up[i] = False
        rho_s = cfg.shadowing_corr
        self.shadowing_db = rho_s * self.shadowing_db + math.sqrt(1 - rho_s ** 2) * rng.normal(
            0, cfg.wireless.shadowing_sigma_db, e)

        u, v = self.topology.edge_endpoints
        drift_m = (np.linalg.norm(self.position_m[u] - self.position_m[v], axis=1)
                   - np.linalg.norm(self.home_m[u] - self.home_m[v], axis=1))
        distance_m = np.maximum(self.rest_distance_m + drift_m, 1.0)
        snr_db = cfg.wireless.snr_db(distance_m, self.shadowing_db)
        capacity = np.minimum(self.link_bw_mbps, cfg.wireless.goodput_mbps(snr_db))
        self.up &= capacity > 0
        capacity = np.where(self.up, capacity, 0.0)

        offered = self._background_load_mbps()
        used = np.minimum(offered, cfg.max_utilisation * capacity)
        free = np.maximum(capacity - used, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(capacity > 0, used / capacity, 0.0)
            service_ms = np.where(capacity > 0, PACKET_BITS / (capacity * 1e3), 0.0)
        queue_ms = service_ms * rho / (1.0 - rho)
        delay = cfg.base_delay_ms + cfg.mac_access_delay_ms + distance_m / SPEED_OF_LIGHT_M_PER_MS + service_ms + queue_ms
        k = cfg.buffer_packets
        overflow = np.where(rho > 0, (1 - rho) * rho ** k / (1 - rho ** (k + 1)), 0.0)
        fer = cfg.wireless.frame_error_rate(snr_db)
        loss = 1.0 - (1.0 - self.base_loss) * (1.0 - fer) * (1.0 - overflow)
        loss = np.where(self.up, loss, 1.0)
        drops = np.round(loss * used * 1e6 * cfg.interval_s / PACKET_BITS)
        self.snapshot = LinkStateSnapshot(
            topology=self.topology, step=self.step_index, time_s=self.time_s, capacity_mbps=capacity,
            used_bw_mbps=used, free_bw_mbps=free, delay_ms=np.where(self.up, delay, np.inf), loss=loss,
            drops=drops, distance_m=distance_m, snr_db=snr_db, up=self.up.copy())
        return self.snapshot

    def run(self, n_steps: int):
        """Live stepping mode: yield ``n_steps`` consecutive snapshots."""
        for _ in range(n_steps):
            yield self.step()

    def _move_nodes(self) -> None:
        """Random-direction drift around each AP's home, reflecting at ``drift_radius_m``."""
        cfg = self.config
        self.heading += self.rng.normal(0, 0.5, len(self.heading))
        step_m = cfg.drift_speed_mps * cfg.interval_s
        new = self.position_m + step_m * np.stack([np.cos(self.heading), np.sin(self.heading)], axis=1)
        outside = np.linalg.norm(new - self.home_m, axis=1) > cfg.drift_radius_m
        self.heading[outside] += np.pi
        self.position_m = np.where(outside[:, None], self.position_m, new)

    def _background_load_mbps(self) -> np.ndarray:
        """Route the current hour's gravity matrix on hop-shortest paths over up links; load per link."""
        cfg = self.config
        hour = (self.time_s / 3600.0) % 24.0
        h0 = int(hour) % 24
        frac = hour - int(hour)
        demand = (1 - frac) * self.traffic[h0] + frac * self.traffic[(h0 + 1) % 24]
        n_nodes = demand.shape[0]
        per_ap_scale = (cfg.demand_reference_nodes - 1) / max(n_nodes - 1, 1)
        demand_mbps = demand * cfg.demand_unit_kbps * per_ap_scale / 1e3
        levels = self._routing()
        n = n_nodes
        # flow[dst, i]: traffic at node i heading to dst; push it one hop up dst's shortest-path tree per
        # level, farthest nodes first, so each link carries the sum over its subtree (all dsts at once)
        flow = demand_mbps.T.copy().ravel()
        load = np.zeros(len(self.topology.edges))
        for here, parent, edge in levels:
            f = flow[here]
            load += np.bincount(edge, weights=f, minlength=len(load))
            flow += np.bincount(parent, weights=f, minlength=n * n)
        return load

    @cached_property
    def _edge_lookup(self) -> np.ndarray:
        n = len(self.topology.nodes)
        lookup = np.full((n, n), -1, dtype=np.int64)
        u, v = self.topology.edge_endpoints
        lookup[u, v] = np.arange(len(u))
        lookup[v, u] = np.arange(len(u))
        return lookup

    def _routing(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per hop-distance level (farthest first): flat (dst, node) indices, (dst, next hop) indices, link ids.

        Cached per set of up links: routing only changes when a link fails or recovers.
        """
        key = np.packbits(self.up).tobytes()
        if key not in self._routing_cache:
            n = len(self.topology.nodes)
            u, v = self.topology.edge_endpoints
            m = csr_matrix((np.ones(int(self.up.sum())), (u[self.up], v[self.up])), shape=(n, n))
            dist, pred = shortest_path(m, directed=False, unweighted=True, return_predecessors=True)
            dist = np.where(np.isfinite(dist), dist, -1).astype(np.int64)
            levels = []
            for level in range(int(dist.max()), 0, -1):
                dst, node = np.nonzero(dist == level)
                nxt = pred[dst, node]
                levels.append((dst * n + node, dst * n + nxt, self._edge_lookup[node, nxt]))
            if len(self._routing_cache) > 64:
                self._routing_cache.clear()
            self._routing_cache[key] = levels
        return self._routing_cache[key]


def with_link_failed(snapshot: LinkStateSnapshot, u: Node, v: Node) -> LinkStateSnapshot:
    """A copy of ``snapshot`` in which link (u, v) is down (used to exercise tree repair)."""
    i = snapshot.topology.edge_index[(u, v)]
    up = snapshot.up.copy()
    up[i] = False
    free = snapshot.free_bw_mbps.copy()
    free[i] = 0.0
    return replace(snapshot, up=up, free_bw_mbps=free)
