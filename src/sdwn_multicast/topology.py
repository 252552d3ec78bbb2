"""Multi-domain topologies: the paper's 30-AP and 9-AP networks, real networks, synthetic graphs.

A :class:`MultiDomainTopology` is an undirected graph whose nodes are access points (APs) with planar
positions in metres, each assigned to one control domain. Boundary nodes and inter-domain links are
derived from the assignment, never stored separately, so they cannot disagree with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np
from scipy.spatial import Delaunay

Node = Hashable


class TopologyError(ValueError):
    """A topology could not be built or is inconsistent."""


class UnknownTopologyError(TopologyError, KeyError):
    """The requested topology name is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class MultiDomainTopology:
    """An AP graph partitioned into control domains.

    ``graph`` edges carry ``distance_m``; ``positions_m`` maps node -> (x, y) in metres;
    ``domain_of`` maps node -> domain index (0-based). Node order (``nodes``) fixes the row order of every
    per-node array and the edge order (``edges``) fixes every per-link array in snapshots.
    """

    name: str
    graph: nx.Graph
    domain_of: Mapping[Node, int]
    positions_m: Mapping[Node, tuple[float, float]]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [n for n in self.graph.nodes if n not in self.domain_of]
        if missing:
            raise TopologyError(f"{self.name}: nodes without a domain: {missing[:5]}")
        if not nx.is_connected(self.graph):
            raise TopologyError(f"{self.name}: graph is not connected")
        for d in range(self.n_domains):
            sub = self.graph.subgraph(self.domain_nodes(d))
            if sub.number_of_nodes() == 0 or not nx.is_connected(sub):
                raise TopologyError(f"{self.name}: domain {d} is empty or not connected")

    # ---- node / edge indexing (fixed orders used by snapshot arrays) ----
    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(sorted(self.graph.nodes, key=_sort_key))

    @cached_property
    def node_index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    @cached_property
    def edges(self) -> tuple[tuple[Node, Node], ...]:
        idx = self.node_index
        canon = [(u, v) if idx[u] < idx[v] else (v, u) for u, v in self.graph.edges]
        return tuple(sorted(canon, key=lambda e: (idx[e[0]], idx[e[1]])))

    @cached_property
    def edge_index(self) -> dict[tuple[Node, Node], int]:
        out: dict[tuple[Node, Node], int] = {}
        for i, (u, v) in enumerate(self.edges):
            out[(u, v)] = i
            out[(v, u)] = i
        return out

    @cached_property
    def edge_endpoints(self) -> tuple[np.ndarray, np.ndarray]:
        """Two int arrays (E,) of node indices: row/column of every link in dense matrices."""
        idx = self.node_index
        u = np.array([idx[a] for a, _ in self.edges], dtype=np.int64)
        v = np.array([idx[b] for _, b in self.edges], dtype=np.int64)
        return u, v

    @property
    def n_domains(self) -> int:
        return max(self.domain_of.values()) + 1

    @cached_property
    def domain_array(self) -> np.ndarray:
        """Domain index per node, in ``nodes`` order."""
        return np.array([self.domain_of[n] for n in self.nodes], dtype=np.int64)

    def domain_nodes(self, domain: int) -> tuple[Node, ...]:
        return tuple(n for n in sorted(self.graph.nodes, key=_sort_key) if self.domain_of[n] == domain)

    @cached_property
    def inter_domain_links(self) -> tuple[tuple[Node, Node], ...]:
        return tuple(e for e in self.edges if self.domain_of[e[0]] != self.domain_of[e[1]])

    def intra_domain_links(self, domain: int) -> tuple[tuple[Node, Node], ...]:
        return tuple(e for e in self.edges if self.domain_of[e[0]] == self.domain_of[e[1]] == domain)

    def boundary_nodes(self, domain: int) -> frozenset[Node]:
        """Nodes of ``domain`` with at least one link into another domain."""
        out = set()
        for u, v in self.inter_domain_links:
            for a in (u, v):
                if self.domain_of[a] == domain:
                    out.add(a)
        return frozenset(out)

    def domain_graph(self) -> nx.Graph:
        """Quotient graph: one node per domain, an edge where an inter-domain link exists.

        Edge attribute ``links`` lists the inter-domain links realising it.
        """
        g = nx.Graph()
        g.add_nodes_from(range(self.n_domains))
        for u, v in self.inter_domain_links:
            a, b = self.domain_of[u], self.domain_of[v]
            if g.has_edge(a, b):
                g.edges[a, b]["links"].append((u, v))
            else:
                g.add_edge(a, b, links=[(u, v)])
        return g


def _sort_key(n: Node):
    return (0, n, "") if isinstance(n, (int, np.integer)) else (1, 0, str(n))


# ---------------------------------------------------------------------------------------------------------
# The paper's 30-AP network (Section V of arXiv 2409.05888 and the authors' released Mininet-WiFi script).
# ---------------------------------------------------------------------------------------------------------

PAPER_INTER_DOMAIN_LINKS: tuple[tuple[int, int], ...] = (
    (7, 12), (8, 11), (10, 16),
    (17, 21), (17, 22), (18, 22), (18, 23), (19, 23), (19, 24), (20, 24),
)
PAPER_INTRA_LINK_COUNTS: tuple[int, int, int] = (15, 18, 15)

# AP home positions on a 40-unit lattice (scaled to 35 m), laid out so that the boundary APs face the neighbouring
# domain and the inter-domain links above are short: D1 on the left, D2 in the middle, D3 on the right.
_PAPER_AP_LATTICE_M: dict[int, tuple[float, float]] = {
    1: (0, 0), 2: (0, 40), 3: (0, 80), 4: (0, 120), 5: (40, 20), 6: (40, 60), 9: (40, 100),
    7: (80, 20), 8: (80, 60), 10: (80, 100),
    12: (120, 20), 11: (120, 60), 16: (120, 100), 13: (160, 0), 14: (160, 50), 15: (160, 100),
    17: (200, 0), 18: (200, 40), 19: (200, 80), 20: (200, 120),
    21: (240, -20), 22: (240, 20), 23: (240, 60), 24: (240, 100),
    25: (280, 0), 26: (280, 40), 27: (280, 80), 28: (280, 120), 29: (320, 30), 30: (320, 90),
}
_PAPER_LATTICE_SCALE = 0.875


def planar_domain_links(points_m: Mapping[Node, tuple[float, float]], n_links: int) -> list[tuple[Node, Node]]:
    """``n_links`` planar links over ``points_m``: the Euclidean MST, then the shortest other Delaunay edges.

    Every Euclidean MST is a subgraph of the Delaunay triangulation, so the result is connected and
    planar (no two links cross). Raises :class:`TopologyError` if the triangulation has too few edges.
    """
    nodes = list(points_m)
    n = len(nodes)
    if n_links < n - 1:
        raise TopologyError(f"{n_links} links cannot connect {n} nodes")
    pts = np.array([points_m[v] for v in nodes], dtype=float)
    cand: set[tuple[int, int]] = set()
    if n == 2:
        cand.add((0, 1))
    elif n >= 3:
        for simplex in Delaunay(pts).simplices:
            for a in range(3):
                i, j = sorted((int(simplex[a]), int(simplex[(a + 1) % 3])))
                cand.add((i, j))
    if len(cand) < n_links:
        raise TopologyError(f"Delaunay triangulation has only {len(cand)} edges, {n_links} requested")
    g = nx.Graph()
    for i, j in cand:
        g.add_edge(i, j, weight=float(np.linalg.norm(pts[i] - pts[j])))
    chosen = {tuple(sorted(e)) for e in nx.minimum_spanning_edges(g, data=False)}
    for i, j in sorted(cand, key=lambda e: (g.edges[e]["weight"], e)):
        if len(chosen) >= n_links:
            break
        chosen.add((i, j))
    return sorted((nodes[i], nodes[j]) for i, j in chosen)


def _distance_m(p: tuple[float, float], q: tuple[float, float]) -> float:
    return float(math.hypot(p[0] - q[0], p[1] - q[1]))


def _build(name: str, positions_m, domain_of, links, clip: bool = False) -> MultiDomainTopology:
    g = nx.Graph()
    g.add_nodes_from(positions_m)
    dist = _ap_distance_m if clip else _distance_m
    for u, v in links:
        g.add_edge(u, v, distance_m=dist(positions_m[u], positions_m[v]))
    return MultiDomainTopology(name=name, graph=g, domain_of=dict(domain_of), positions_m=dict(positions_m))


def paper_topology(seed: int = 7) -> MultiDomainTopology:
    """The paper's 30-AP / 3-domain network: 48 intra-domain links (15/18/15) + 10 inter-domain links.

    Inter-domain links are exactly those of the paper; intra-domain links are generated deterministically
    (the paper does not publish them) with :func:`planar_domain_links` over AP positions jittered by
    +-3 m around a 35 m lattice (``seed`` fixes the jitter), so link lengths stay within the paper's 20-60 m.
    """
    rng = np.random.default_rng(seed)
    pos = {ap: (x * _PAPER_LATTICE_SCALE + float(rng.uniform(-3, 3)), y * _PAPER_LATTICE_SCALE + float(rng.uniform(-3, 3)))
           for ap, (x, y) in sorted(_PAPER_AP_LATTICE_M.items())}
    domain_of = {ap: (ap - 1) // 10 for ap in pos}
    links: list[tuple[int, int]] = []
    for d, count in enumerate(PAPER_INTRA_LINK_COUNTS):
        links += planar_domain_links({ap: pos[ap] for ap in pos if domain_of[ap] == d}, count)
    links += list(PAPER_INTER_DOMAIN_LINKS)
    return _build("paper30", pos, domain_of, links)


def paper_topology_9ap() -> MultiDomainTopology:
    """The paper's small case: 3 domains x 3 APs, 15 links (3 triangles + 3 D1-D2 + 3 D2-D3 links)."""
    pos = {1: (0, 0), 2: (0, 40), 3: (35, 20), 4: (75, 0), 5: (75, 40), 6: (110, 20),
           7: (150, 0), 8: (150, 40), 9: (185, 20)}
    domain_of = {ap: (ap - 1) // 3 for ap in pos}
    links = [(1, 2), (1, 3), (2, 3), (4, 5), (4, 6), (5, 6), (7, 8), (7, 9), (8, 9),
             (3, 4), (3, 5), (2, 5), (6, 7), (6, 8), (5, 8)]
    return _build("paper9", pos, domain_of, links)


# ---------------------------------------------------------------------------------------------------------
# Partitioning a graph into k connected domains.
# ---------------------------------------------------------------------------------------------------------

def partition_domains(graph: nx.Graph, k: int, seed: int = 0) -> dict[Node, int]:
    """Split a connected graph into ``k`` connected, roughly balanced domains.

    Spectral seeding then region growing: the first ``k`` non-trivial eigenvectors of the normalised
    Laplacian embed the nodes, k-means (seeded) picks one seed node per cluster (the node nearest each
    centroid), and domains grow from their seeds by repeatedly giving the smallest domain one unassigned
    neighbour, preferring nodes whose spectral cluster matches the domain. Growth from a seed along edges
    keeps every domain connected by construction, so no fix-up pass can fail.
    """
    nodes = sorted(graph.nodes, key=_sort_key)
    n = len(nodes)
    if not 1 <= k <= n:
        raise TopologyError(f"cannot split {n} nodes into {k} domains")
    if not nx.is_connected(graph):
        raise TopologyError("cannot partition a disconnected graph into connected domains")
    if k == 1:
        return {v: 0 for v in nodes}
    from scipy.cluster.vq import kmeans2

    lap = nx.normalized_laplacian_matrix(graph, nodelist=nodes).toarray()
    _, vecs = np.linalg.eigh(lap)
    emb = vecs[:, 1:k + 1]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    centroids, labels = kmeans2(emb, k, seed=seed, minit="++")
    seeds: list[int] = []
    for c in range(k):
        order = np.argsort(np.linalg.norm(emb - centroids[c], axis=1))
        seeds.append(next(int(i) for i in order if int(i) not in seeds))
    index = {v: i for i, v in enumerate(nodes)}
    assign = {seeds[d]: d for d in range(k)}
    sizes = [1] * k
    while len(assign) < n:
        for d in sorted(range(k), key=lambda d: (sizes[d], d)):
            frontier = {index[w] for i, dd in assign.items() if dd == d for w in graph[nodes[i]]}
            frontier -= set(assign)
            if frontier:
                pick = min(frontier, key=lambda i: (labels[i] != d, i))
                assign[pick] = d
                sizes[d] += 1
                break
    return {nodes[i]: d for i, d in assign.items()}


def _scale_to_median_link(graph: nx.Graph, pos: dict, median_link_m: float) -> dict:
    lengths = [_distance_m(pos[u], pos[v]) for u, v in graph.edges]
    med = float(np.median(lengths)) if lengths else 1.0
    s = median_link_m / max(med, 1e-9)
    return {v: (p[0] * s, p[1] * s) for v, p in pos.items()}


AP_LINK_RANGE_M: tuple[float, float] = (20.0, 60.0)


def _ap_distance_m(p: tuple[float, float], q: tuple[float, float]) -> float:
    """Link length for rescaled real / synthetic graphs, clipped to the paper's AP-AP range (20-60 m)."""
    return float(np.clip(_distance_m(p, q), *AP_LINK_RANGE_M))


def _relabel_int(graph: nx.Graph, pos: dict) -> tuple[nx.Graph, dict, dict]:
    nodes = sorted(graph.nodes, key=_sort_key)
    mapping = {v: i for i, v in enumerate(nodes)}
    g = nx.relabel_nodes(graph, mapping)
    return g, {mapping[v]: pos[v] for v in nodes}, mapping


# ---------------------------------------------------------------------------------------------------------
# Real networks (Topology Zoo / SNDlib via topohub).
# ---------------------------------------------------------------------------------------------------------

ZOO_KEYS: dict[str, str] = {
    "geant": "topozoo/Geant2012",
    "abilene": "topozoo/Abilene",
    "germany50": "sndlib/germany50",
    "polska": "sndlib/polska",
    "nobel-eu": "sndlib/nobel-eu",
}


def zoo_topology(name: str, n_domains: int = 3, seed: int = 0, median_link_m: float = 40.0
                 ) -> MultiDomainTopology:
    """A Topology Zoo / SNDlib network (via ``topohub``) partitioned into ``n_domains`` domains.

    ``name`` is a short name from :data:`ZOO_KEYS` or a topohub key such as ``"sndlib/polska"``.
    Geographic positions (lon/lat) are projected equirectangularly and rescaled so the median link is
    ``median_link_m`` metres: the real network's shape drives an AP-scale wireless mesh. The original
    length is kept on each edge as ``length_km``.
    """
    import topohub

    key = ZOO_KEYS.get(name.lower(), name)
    try:
        data = topohub.get(key)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise UnknownTopologyError(
            f"unknown topology {name!r}; known short names: {sorted(ZOO_KEYS)} or a topohub key") from exc
    raw = nx.Graph(nx.node_link_graph(data, edges="edges"))
    raw.remove_edges_from(nx.selfloop_edges(raw))
    if not nx.is_connected(raw):
        raw = raw.subgraph(max(nx.connected_components(raw), key=len)).copy()
    lat0 = math.radians(float(np.mean([raw.nodes[v]["pos"][1] for v in raw])))
    pos = {v: (raw.nodes[v]["pos"][0] * math.cos(lat0) * 111.32, raw.nodes[v]["pos"][1] * 111.32)
           for v in raw}
    g0, pos, mapping = _relabel_int(raw, pos)
    pos = _scale_to_median_link(g0, pos, median_link_m)
    domain_of = partition_domains(g0, n_domains, seed=seed)
    g = nx.Graph()
    g.add_nodes_from(g0.nodes)
    for u, v, data_uv in g0.edges(data=True):
        g.add_edge(u, v, distance_m=_ap_distance_m(pos[u], pos[v]), length_km=float(data_uv.get("dist", 0.0)))
    for old, new in mapping.items():
        g.nodes[new]["name"] = raw.nodes[old].get("name", str(old))
    return MultiDomainTopology(name=f"{name.lower()}-k{n_domains}", graph=g, domain_of=domain_of,
                               positions_m=pos)


# ---------------------------------------------------------------------------------------------------------
# Synthetic graphs.
# ---------------------------------------------------------------------------------------------------------

def _connect_components(g: nx.Graph, pos: dict, nodes=None) -> None:
    """Join the components of ``g[nodes]`` by adding the shortest link between consecutive components."""
    sub_nodes = list(g.nodes) if nodes is None else list(nodes)
    while True:
        comps = sorted(nx.connected_components(g.subgraph(sub_nodes)), key=lambda c: min(c))
        if len(comps) <= 1:
            return
        a, rest = comps[0], set().union(*comps[1:])
        u, v = min(((x, y) for x in a for y in rest), key=lambda e: (_distance_m(pos[e[0]], pos[e[1]]), e))
        g.add_edge(u, v)


def waxman_topology(n_nodes: int = 100, n_domains: int = 4, seed: int = 0, alpha: float = 0.4,
                    beta: float | None = None, median_link_m: float = 40.0) -> MultiDomainTopology:
    """Waxman random graph (Waxman 1988) on the unit square, made connected, split by :func:`partition_domains`.

    ``beta`` defaults to ``10 / n_nodes`` so the mean degree stays near 4.5 whatever the size.
    """
    if n_nodes > 2000:
        raise TopologyError("waxman_topology supports at most 2000 nodes")
    beta = min(1.0, 10.0 / n_nodes) if beta is None else beta
    g = nx.waxman_graph(n_nodes, beta=beta, alpha=alpha, seed=seed)
    pos = {v: tuple(map(float, g.nodes[v]["pos"])) for v in g}
    _connect_components(g, pos)
    pos = _scale_to_median_link(g, pos, median_link_m)
    domain_of = partition_domains(g, n_domains, seed=seed)
    return _build(f"waxman{n_nodes}-k{n_domains}-s{seed}", pos, domain_of, list(g.edges), clip=True)


def sbm_topology(n_nodes: int = 100, n_domains: int = 4, seed: int = 0, mean_degree_in: float = 4.0,
                 mean_degree_out: float = 0.5, median_link_m: float = 40.0) -> MultiDomainTopology:
    """Stochastic block model: one block per domain; blocks are made connected, then the whole graph.

    Edge probabilities are set from the requested mean intra-block and inter-block degrees. Positions
    place each block around its own centre on a circle so the wireless model sees short intra-domain
    and longer inter-domain links.
    """
    rng = np.random.default_rng(seed)
    sizes = [n_nodes // n_domains + (1 if i < n_nodes % n_domains else 0) for i in range(n_domains)]
    p_in = min(1.0, mean_degree_in / max(min(sizes) - 1, 1))
    p_out = min(1.0, mean_degree_out / max(n_nodes - min(sizes), 1))
    probs = [[p_in if i == j else p_out for j in range(n_domains)] for i in range(n_domains)]
    g = nx.stochastic_block_model(sizes, probs, seed=seed)
    g = nx.Graph(g)
    block = {v: g.nodes[v]["block"] for v in g}
    pos = {}
    for v in g:
        ang = 2 * math.pi * block[v] / n_domains
        c = (3.0 * math.cos(ang), 3.0 * math.sin(ang)) if n_domains > 1 else (0.0, 0.0)
        pos[v] = (c[0] + float(rng.normal(0, 1)), c[1] + float(rng.normal(0, 1)))
    for d in range(n_domains):
        _connect_components(g, pos, [v for v in g if block[v] == d])
    _connect_components(g, pos)
    pos = _scale_to_median_link(g, pos, median_link_m)
    return _build(f"sbm{n_nodes}-k{n_domains}-s{seed}", pos, block, list(g.edges), clip=True)


# ---------------------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------------------

#: Topologies with a fixed domain partition (the paper's); ``n_domains`` does not apply to them.
FIXED_TOPOLOGIES: tuple[str, ...] = ("paper30", "paper9")
_FIXED_BUILDERS: dict[str, Callable[[], MultiDomainTopology]] = {
    "paper30": lambda: paper_topology(),
    "paper9": lambda: paper_topology_9ap(),
}


def load_topology(name: str, n_domains: int | None = None, seed: int = 0) -> MultiDomainTopology:
    """Build a topology by name.

    Names: ``paper30``, ``paper9``, ``waxman<N>``, ``sbm<N>``, or a real network (``geant``, ``abilene``,
    ``germany50``, ... or any topohub key). ``n_domains`` defaults to 3 (4 for synthetic graphs); it must
    be at least 1, and it must be left ``None`` for the paper topologies, whose domains are fixed
    (:data:`FIXED_TOPOLOGIES`): a :class:`TopologyError` says so rather than silently ignoring it.
    """
    low = name.lower()
    if n_domains is not None and n_domains < 1:
        raise TopologyError(f"the number of domains must be at least 1, got {n_domains}")
    if low in FIXED_TOPOLOGIES:
        if n_domains is not None:
            raise TopologyError(f"{name} has fixed domains (the paper's partition); the number of domains "
                                "applies only to partitioned real and synthetic topologies")
        return _FIXED_BUILDERS[low]()
    for prefix, fn in (("waxman", waxman_topology), ("sbm", sbm_topology)):
        if low.startswith(prefix):
            try:
                n = int(low[len(prefix):] or 100)
            except ValueError as exc:
                raise UnknownTopologyError(f"unknown topology {name!r}: expected e.g. {prefix}100") from exc
            return fn(n_nodes=n, n_domains=4 if n_domains is None else n_domains, seed=seed)
    return zoo_topology(name, n_domains=3 if n_domains is None else n_domains, seed=seed)
