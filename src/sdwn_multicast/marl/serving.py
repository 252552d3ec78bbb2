"""The trained agents inside the controllers (MA-CDMR's knowledge plane, arXiv 2409.05888 Sec. III).

* :class:`RootAgent` runs in the root controller. From the link state the domains reported it plays the
  inter-domain phase of :class:`~sdwn_multicast.marl.env.CrossDomainMulticastEnv` with the root actor:
  the crossings (boundary AP pairs) and, per domain, the terminals of its segment (entry first, then its
  local members and exits).
* :class:`DomainAgent` runs in a domain controller. From its own links it grafts the segment's terminals
  onto the entry with its domain actor, hop by hop — an episode whose request lies inside one domain, so
  the root phase is skipped and only this domain's agent acts.

Both play greedily (argmax of the masked actors) with torch on one thread, so a controller answers within
milliseconds and the masks make an invalid move impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from ..simulator import LinkStateSnapshot
from ..topology import MultiDomainTopology, Node
from ..trees import CrossDomainPlan, DecompositionError, MulticastError
from .env import ROOT, CrossDomainMulticastEnv, domain_agent
from .policy import obs_to_tensors
from .train import load_policy


def snapshot_from_links(topology: MultiDomainTopology, links, time_s: float = 0.0) -> LinkStateSnapshot:
    """A snapshot from reported links ``(u, v, free_bw_mbps, delay_ms, loss, up)``; links nobody reported
    are down. Fields the reports do not carry (capacity, drops, distance, SNR) are 0: agents do not read
    them."""
    n = len(topology.edges)
    free, delay, loss = np.zeros(n), np.zeros(n), np.zeros(n)
    up = np.zeros(n, dtype=bool)
    for u, v, f, d, lo, is_up in links:
        i = topology.edge_index[(u, v)]
        free[i], delay[i], loss[i], up[i] = f, d, lo, bool(is_up)
    free = np.where(up, free, 0.0)
    zeros = np.zeros(n)
    return LinkStateSnapshot(topology, step=0, time_s=time_s, capacity_mbps=zeros, used_bw_mbps=zeros,
                             free_bw_mbps=free, delay_ms=delay, loss=loss, drops=zeros, distance_m=zeros,
                             snr_db=zeros, up=up)


def _load(topology: MultiDomainTopology, checkpoint_dir: str | Path | None):
    from ..evaluation import committed_checkpoint_for

    torch.set_num_threads(1)  # tiny MLPs: intra-op threads only add synchronisation (see MarlRouter)
    path = Path(checkpoint_dir) if checkpoint_dir is not None else committed_checkpoint_for(topology)
    policy, _ = load_policy(path)
    if policy.n_domains != topology.n_domains:
        raise MulticastError(f"marl checkpoint {path} has {policy.n_domains} domain agents; {topology.name} "
                             f"has {topology.n_domains} domains")
    return policy, path


def _greedy(policy, agent: str, obs: dict) -> int:
    with torch.inference_mode():
        return policy.greedy(agent, obs_to_tensors(obs[agent]))


@dataclass(frozen=True)
class ReentryPlan:
    """A re-entry root plan (``MarlEnvConfig.reentry``): the crossings in plan order and, per domain, its
    entries ``(node, rank)`` and terminals ``(node, bound)`` (an exit attaches to components of rank <
    bound, a member, bound 0, to any). The domains' components and the crossings may overlap; the root
    reduces their union with :func:`~sdwn_multicast.marl.reentry.reduce_union` for ``objective``."""

    crossings: tuple[tuple[Node, Node], ...]
    segments: dict
    #: the agents' objective (``MarlEnvConfig.objective``): how the union is reduced to a tree
    objective: str = "bandwidth"


class RootAgent:
    def __init__(self, topology: MultiDomainTopology, checkpoint_dir: str | Path | None = None):
        self.topology = topology
        self.policy, self.checkpoint_dir = _load(topology, checkpoint_dir)

    @property
    def reentry(self) -> bool:
        return self.policy.env_config.reentry

    def plan(self, snapshot: LinkStateSnapshot, source: Node, members) -> CrossDomainPlan | ReentryPlan:
        """The root actor's inter-domain plan, in the contract of :func:`~sdwn_multicast.trees.plan_inter_domain`
        (crossings per entered domain, entries, each domain's terminals with the entry first), or a
        :class:`ReentryPlan` for a re-entry checkpoint."""
        env = CrossDomainMulticastEnv(snapshot, self.policy.env_config)
        obs, _ = env.reset(seed=0, options={"source": source, "members": list(members)})
        while env.phase == "inter" and env.agents:
            actions = {a: len(obs[a]["action_mask"]) - 1 for a in env.agents}
            actions[ROOT] = _greedy(self.policy, ROOT, obs)
            obs, *_ = env.step(actions)
        if env.failure is not None:
            raise DecompositionError(f"root agent: {env.failure}")
        if self.reentry:
            return ReentryPlan(crossings=tuple((bp, bc) for _, bp, bc in env.plan), segments=env.segment_plan(),
                               objective=env.config.objective)
        terminals = {}
        for d, entry in env.entry.items():
            rest = [t for t in dict.fromkeys([*env.local_members[d], *env.exits[d]]) if t != entry]
            terminals[d] = (entry, *rest)
        dom = self.topology.domain_of
        return CrossDomainPlan(source_domain=dom[source], domain_parent=dict(env.parent),
                               crossings={dom[bc]: (bp, bc) for _, bp, bc in env.plan}, entry=dict(env.entry),
                               terminals=terminals)


class DomainAgent:
    def __init__(self, topology: MultiDomainTopology, domain: int, checkpoint_dir: str | Path | None = None):
        self.topology, self.domain = topology, domain
        self.policy, self.checkpoint_dir = _load(topology, checkpoint_dir)

    def segment(self, snapshot: LinkStateSnapshot, terminals, entries=None) -> nx.Graph:
        """The intra-domain tree spanning ``terminals`` (entry first), grafted by this domain's agent.

        Re-entry checkpoint: ``entries`` are ``(node, rank)`` pairs and ``terminals`` ``(node, bound)`` pairs
        (:class:`ReentryPlan`); the result is the forest of this domain's components."""
        if entries is not None:
            return self._components(snapshot, entries, terminals)
        entry, *rest = terminals
        if any(self.topology.domain_of[t] != self.domain for t in terminals):
            raise MulticastError(f"segment terminals {list(terminals)} are not all in domain {self.domain}")
        seg = nx.Graph()
        seg.add_node(entry)
        if not rest:
            return seg
        return self._play(snapshot, {"source": entry, "members": rest})

    def _components(self, snapshot: LinkStateSnapshot, entries, terminals) -> nx.Graph:
        if not self.policy.env_config.reentry:
            raise MulticastError(f"domain agent {self.domain}: its checkpoint {self.checkpoint_dir} does not plan "
                                 "re-entry, but the root sent several entries")
        spec = {"domain": self.domain, "entries": dict(entries), "terminals": dict(terminals)}
        return self._play(snapshot, {"segments": spec})

    def _play(self, snapshot: LinkStateSnapshot, options: dict) -> nx.Graph:
        """One episode in which only this domain's agent acts (greedily); the graph it built."""
        env = CrossDomainMulticastEnv(snapshot, self.policy.env_config)
        obs, infos = env.reset(seed=0, options=options)
        me = domain_agent(self.domain)
        while env.agents:
            actions = {a: len(obs[a]["action_mask"]) - 1 for a in env.agents}
            if infos[me]["active"]:
                actions[me] = _greedy(self.policy, me, obs)
            obs, _, _, _, infos = env.step(actions)
        if infos[ROOT]["tree"] is None:
            raise MulticastError(f"domain agent {self.domain}: {infos[ROOT]['failure']}")
        return infos[ROOT]["tree"]
