"""Offline link-state datasets (the paper's "offline data"): seeded snapshot sequences on disk.

Layout of a dataset directory: ``snapshots.npz`` with one (T, E) array per snapshot field plus ``step``
and ``time_s`` (T,), and ``meta.json`` with the topology (nodes, edges, domains, positions), the simulator
configuration and the seed. :func:`load_dataset` rebuilds the topology and yields ``LinkStateSnapshot``s.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from .simulator import LinkStateSimulator, LinkStateSnapshot, SimulatorConfig
from .topology import MultiDomainTopology, load_topology

DATASET_FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete or of an unknown format."""


def _topology_to_json(topo: MultiDomainTopology) -> dict:
    return {
        "name": topo.name,
        "nodes": [[n, topo.domain_of[n], list(topo.positions_m[n])] for n in topo.nodes],
        "edges": [[u, v, topo.graph.edges[u, v]["distance_m"]] for u, v in topo.edges],
    }


def _topology_from_json(data: dict) -> MultiDomainTopology:
    g = nx.Graph()
    g.add_nodes_from(n for n, _, _ in data["nodes"])
    for u, v, d in data["edges"]:
        g.add_edge(u, v, distance_m=float(d))
    return MultiDomainTopology(name=data["name"], graph=g, domain_of={n: int(d) for n, d, _ in data["nodes"]},
                               positions_m={n: tuple(p) for n, _, p in data["nodes"]})


def generate_dataset(topology: MultiDomainTopology | str, n_snapshots: int, out_dir: str | Path,
                     seed: int = 0, config: SimulatorConfig | None = None, every_n_steps: int = 1,
                     progress: bool = False) -> Path:
    """Run the simulator for ``n_snapshots * every_n_steps`` steps and record every ``every_n_steps``-th."""
    topo = load_topology(topology) if isinstance(topology, str) else topology
    cfg = config or SimulatorConfig()
    sim = LinkStateSimulator(topo, cfg, seed=seed)
    fields = LinkStateSnapshot.FIELDS
    cols: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    steps, times = [], []
    it = range(n_snapshots * every_n_steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"dataset {topo.name}", unit="step")
    for i in it:
        snap = sim.step()
        if i % every_n_steps:
            continue
        for f in fields:
            cols[f].append(getattr(snap, f))
        steps.append(snap.step)
        times.append(snap.time_s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "snapshots.npz", step=np.array(steps), time_s=np.array(times),
                        **{f: np.stack(v) for f, v in cols.items()})
    cfg_json = dataclasses.asdict(cfg)
    meta = {"format_version": DATASET_FORMAT_VERSION, "seed": seed, "n_snapshots": n_snapshots,
            "every_n_steps": every_n_steps, "config": cfg_json, "topology": _topology_to_json(topo),
            "fields": list(fields)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


@dataclass(frozen=True, eq=False)
class SnapshotDataset:
    """A loaded dataset: ``len(ds)`` snapshots, ``ds[i]`` -> :class:`LinkStateSnapshot`, ``ds.array(f)`` (T, E)."""

    topology: MultiDomainTopology
    arrays: dict
    meta: dict

    def __len__(self) -> int:
        return int(self.arrays["step"].shape[0])

    def __getitem__(self, i: int) -> LinkStateSnapshot:
        if not -len(self) <= i < len(self):
            raise IndexError(f"snapshot {i} out of range (dataset has {len(self)})")
        kw = {f: self.arrays[f][i] for f in LinkStateSnapshot.FIELDS}
        kw["up"] = kw["up"].astype(bool)
        return LinkStateSnapshot(topology=self.topology, step=int(self.arrays["step"][i]),
                                 time_s=float(self.arrays["time_s"][i]), **kw)

    def array(self, field: str) -> np.ndarray:
        return self.arrays[field]


def load_dataset(path: str | Path) -> SnapshotDataset:
    p = Path(path)
    if not (p / "meta.json").is_file() or not (p / "snapshots.npz").is_file():
        raise DatasetError(f"{p} is not a dataset directory (needs meta.json and snapshots.npz)")
    meta = json.loads((p / "meta.json").read_text())
    if meta.get("format_version") != DATASET_FORMAT_VERSION:
        raise DatasetError(f"{p}: unsupported dataset format {meta.get('format_version')!r}")
    with np.load(p / "snapshots.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return SnapshotDataset(topology=_topology_from_json(meta["topology"]), arrays=arrays, meta=meta)
