"""Masked PPO actor-critics for :class:`~sdwn_multicast.marl.env.CrossDomainMulticastEnv`.

The actors score *candidates* (nodes for a domain agent, inter-domain links for the root) with one small
MLP shared across candidates, so one set of weights works for any domain size or number of crossings
(a domain controller's agent keeps working when its domain grows). The last logit of each actor is a
learned scalar for the ``NOOP`` / ``BACKTRACK`` action. Masked actions get a logit of ``-inf`` before the
softmax: their probability is exactly 0, so they can never be sampled (not merely discouraged).

Critics: :class:`CentralCritic` reads the environment's global ``state()`` (CTDE / MAPPO, the root's
view); :class:`LocalCritic` reads one domain agent's own observation (independent PPO, the paper's
released design, kept as an ablation).

Objectives (``MarlEnvConfig.objective``): for "delay" / "loss" the env's bandwidth summaries hold cost
closeness values instead (same shapes), so the actors combine them differently: a domain candidate's
"via" value is its ``seg_bw`` channel itself (the env already adds the link from the head) instead of
min(link bandwidth, ``seg_bw``), and a crossing's end-to-end value is exit x max(entry, transit) closeness
instead of the bottleneck. The weights' shapes are the same; the objective is a constructor argument.

Shapes (B = batch): domain observation ``links`` (B, F, n, n), ``nodes`` (B, n, C), ``action_mask``
(B, n + 1); root observation ``crossings`` (B, L, F + 6), ``domains`` (B, D, 4), ``action_mask`` (B, L + 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from .env import LINK_FIELDS, NODE_CHANNELS, ROOT_CROSSING_EXTRA, ROOT_DOMAIN_CHANNELS

_HEAD = NODE_CHANNELS.index("head")
_SEG_BW, _SEG_REACH = NODE_CHANNELS.index("seg_bw"), NODE_CHANNELS.index("seg_reach")
_BW, _UP = LINK_FIELDS.index("free_bw_mbps"), LINK_FIELDS.index("up")
_X = len(LINK_FIELDS)  # root crossing columns: link fields, then ROOT_CROSSING_EXTRA
_X_TOUCHES, _X_INSIDE, _X_EXIT, _X_ENTRY, _X_TRANSIT = (_X + ROOT_CROSSING_EXTRA.index(c) for c in (
    "touches_plan", "inside_plan", "exit_bw", "entry_bw", "transit_bw"))
#: width of :func:`_node_features`' output
NODE_FEATURES = 2 * len(NODE_CHANNELS) + 3 * len(LINK_FIELDS) + 4
#: relative features are differences of quantities scaled to [0, 1]; this gain makes 1 Mb/s of a 40 Mb/s
#: reference (0.025) a 0.25 step, which a tanh MLP separates easily
_REL_GAIN = 10.0


def masked_categorical(logits: torch.Tensor, mask: torch.Tensor) -> Categorical:
    """Categorical over ``logits`` (B, A) with masked-out actions (``mask == 0``) at probability 0."""
    mask = mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("every row of the action mask needs at least one valid action")
    return Categorical(logits=logits.masked_fill(~mask, float("-inf")))


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


def _node_features(links: torch.Tensor, nodes: torch.Tensor, cost: bool = False) -> torch.Tensor:
    """Per-node inputs (B, n, NODE_FEATURES): own indicators, the link from the walk head to the node,
    mean and max of the node's incident links, the mean indicators of its up neighbours, and what moving
    to the node would give: min(link bandwidth from the head, the node's ``seg_bw``) and ``seg_reach``
    over that link (both 0 for a node that is not the head's neighbour), also relative to the best
    candidate. ``cost``: the cost objectives' ``seg_bw`` channel (a closeness through the head's link) is
    the via value itself."""
    up = links[:, _UP]                                             # (B, n, n)
    head = nodes[..., _HEAD]                                       # (B, n) one-hot or all zero
    from_head = torch.einsum("bi,bfij->bjf", head, links)         # (B, n, F)
    deg = up.sum(-1, keepdim=True).clamp(min=1.0)                  # (B, n, 1)
    mean_link = links.sum(-1).transpose(1, 2) / deg                # (B, n, F)
    max_link = links.amax(-1).transpose(1, 2)                      # (B, n, F)
    nbr = torch.bmm(up, nodes) / deg                               # (B, n, C)
    if cost:
        via_bw = nodes[..., _SEG_BW] * from_head[..., _UP]
    else:
        via_bw = torch.minimum(from_head[..., _BW], nodes[..., _SEG_BW]) * from_head[..., _UP]
    via_reach = nodes[..., _SEG_REACH] * from_head[..., _UP]
    # the same two relative to the best candidate (a neighbour that still reaches the segment): a ranking
    # among next hops is what the actor outputs, and raw values differ little between candidates
    cand = via_reach > 0
    best_bw = via_bw.masked_fill(~cand, -1.0).amax(-1, keepdim=True).clamp(min=0.0)
    best_reach = via_reach.amax(-1, keepdim=True)
    rel_bw = ((via_bw - best_bw) * _REL_GAIN).masked_fill(~cand, -1.0)
    rel_reach = ((via_reach - best_reach) * _REL_GAIN).masked_fill(~cand, -1.0)
    extra = torch.stack([via_bw, via_reach, rel_bw, rel_reach], dim=-1)
    return torch.cat([nodes, from_head, mean_link, max_link, nbr, extra], dim=-1)


class DomainActor(nn.Module):
    """Intra-domain actor: one score per AP of the domain (next hop) plus a NOOP logit."""

    def __init__(self, hidden: int = 64, objective: str = "bandwidth"):
        super().__init__()
        self.cost = objective != "bandwidth"
        self.scorer = _mlp(NODE_FEATURES, hidden, 1)
        self.noop_logit = nn.Parameter(torch.zeros(1))

    def forward(self, links: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        scores = self.scorer(_node_features(links, nodes, self.cost)).squeeze(-1)        # (B, n)
        return torch.cat([scores, self.noop_logit.expand(scores.shape[0], 1)], dim=-1)


class RootActor(nn.Module):
    """Inter-domain actor: one score per inter-domain link (crossing) plus a NOOP/BACKTRACK logit."""

    def __init__(self, hidden: int = 64, objective: str = "bandwidth"):
        super().__init__()
        self.cost = objective != "bandwidth"
        n_in = len(LINK_FIELDS) + len(ROOT_CROSSING_EXTRA) + len(ROOT_DOMAIN_CHANNELS) + 2
        self.scorer = _mlp(n_in, hidden, 1)
        self.noop_logit = nn.Parameter(torch.zeros(1))

    def forward(self, crossings: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        # every crossing also sees the plan summary (mean over domains), so scores depend on progress, and
        # its end-to-end bottleneck min(exit_bw, link, max(entry_bw, transit_bw)), also relative to the best
        # candidate
        summary = domains.mean(dim=1, keepdim=True).expand(-1, crossings.shape[1], -1)
        onward = torch.maximum(crossings[..., _X_ENTRY], crossings[..., _X_TRANSIT])
        if self.cost:
            cross_bw = crossings[..., _X_EXIT] * onward
        else:
            cross_bw = torch.minimum(torch.minimum(crossings[..., _X_EXIT], crossings[..., _BW]), onward)
        cand = (crossings[..., _X_TOUCHES] > 0) & (crossings[..., _X_INSIDE] == 0)
        best = cross_bw.masked_fill(~cand, -1.0).amax(-1, keepdim=True).clamp(min=0.0)
        rel = ((cross_bw - best) * _REL_GAIN).masked_fill(~cand, -1.0)
        x = torch.cat([crossings, summary, cross_bw[..., None], rel[..., None]], dim=-1)
        scores = self.scorer(x).squeeze(-1)  # (B, L)
        return torch.cat([scores, self.noop_logit.expand(scores.shape[0], 1)], dim=-1)


class CentralCritic(nn.Module):
    """V(s) from the global state vector (``env.state()``, size ``env.state_space.shape[0]``)."""

    def __init__(self, state_dim: int, hidden: int = 128):
        super().__init__()
        self.net = _mlp(state_dim, hidden, 1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).squeeze(-1)


class LocalCritic(nn.Module):
    """V(o) from one domain agent's own observation (mean-pooled node features): independent PPO."""

    def __init__(self, hidden: int = 64, objective: str = "bandwidth"):
        super().__init__()
        self.cost = objective != "bandwidth"
        self.net = _mlp(NODE_FEATURES, hidden, 1)

    def forward(self, links: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.net(_node_features(links, nodes, self.cost).mean(dim=1)).squeeze(-1)


class RootLocalCritic(nn.Module):
    """V(o) of the root from its own observation (crossings and domains mean-pooled): independent PPO."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = _mlp(len(LINK_FIELDS) + len(ROOT_CROSSING_EXTRA) + len(ROOT_DOMAIN_CHANNELS), hidden, 1)

    def forward(self, crossings: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([crossings.mean(dim=1), domains.mean(dim=1)], dim=-1)).squeeze(-1)


def obs_to_tensors(obs: dict[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One agent's observation dict -> float tensors with a batch dimension of 1."""
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device).unsqueeze(0)
            for k, v in obs.items()}


def domain_action_and_logprob(actor: DomainActor, obs: dict[str, torch.Tensor],
                              action: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CleanRL-style ``get_action``: sample (or score a given) action; returns action, log-prob, entropy."""
    dist = masked_categorical(actor(obs["links"], obs["nodes"]), obs["action_mask"])
    if action is None:
        action = dist.sample()
    return action, dist.log_prob(action), dist.entropy()


def root_action_and_logprob(actor: RootActor, obs: dict[str, torch.Tensor], action: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dist = masked_categorical(actor(obs["crossings"], obs["domains"]), obs["action_mask"])
    if action is None:
        action = dist.sample()
    return action, dist.log_prob(action), dist.entropy()
