"""Masked PPO actor-critics for :class:`~sdwn_multicast.marl.env.CrossDomainMulticastEnv`.

The actors score *candidates* (nodes for a domain agent, inter-domain links for the root) with one small
MLP shared across candidates, so one set of weights works for any domain size or number of crossings
(a domain controller's agent keeps working when its domain grows). The last logit of each actor is a
learned scalar for the ``NOOP`` / ``BACKTRACK`` action. Masked actions get a logit of ``-inf`` before the
softmax: their probability is exactly 0, so they can never be sampled (not merely discouraged).

Critics: :class:`CentralCritic` reads the environment's global ``state()`` (CTDE / MAPPO, the root's
view); :class:`LocalCritic` reads one domain agent's own observation (independent PPO, the paper's
released design, kept as an ablation).

Shapes (B = batch): domain observation ``links`` (B, F, n, n), ``nodes`` (B, n, C), ``action_mask``
(B, n + 1); root observation ``crossings`` (B, L, F + 3), ``domains`` (B, D, 4), ``action_mask`` (B, L + 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from .env import LINK_FIELDS, NODE_CHANNELS, ROOT_CROSSING_EXTRA, ROOT_DOMAIN_CHANNELS

_HEAD = NODE_CHANNELS.index("head")


def masked_categorical(logits: torch.Tensor, mask: torch.Tensor) -> Categorical:
    """Categorical over ``logits`` (B, A) with masked-out actions (``mask == 0``) at probability 0."""
    mask = mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("every row of the action mask needs at least one valid action")
    return Categorical(logits=logits.masked_fill(~mask, float("-inf")))


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


def _node_features(links: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Per-node inputs (B, n, C + 3F + C): own indicators, the link from the walk head to the node,
    mean and max of the node's incident links, and the mean indicators of its up neighbours."""
    up = links[:, LINK_FIELDS.index("up")]                       # (B, n, n)
    head = nodes[..., _HEAD]                                       # (B, n) one-hot or all zero
    from_head = torch.einsum("bi,bfij->bjf", head, links)         # (B, n, F)
    deg = up.sum(-1, keepdim=True).clamp(min=1.0)                  # (B, n, 1)
    mean_link = links.sum(-1).transpose(1, 2) / deg                # (B, n, F)
    max_link = links.amax(-1).transpose(1, 2)                      # (B, n, F)
    nbr = torch.bmm(up, nodes) / deg                               # (B, n, C)
    return torch.cat([nodes, from_head, mean_link, max_link, nbr], dim=-1)


class DomainActor(nn.Module):
    """Intra-domain actor: one score per AP of the domain (next hop) plus a NOOP logit."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        n_f, n_c = len(LINK_FIELDS), len(NODE_CHANNELS)
        self.scorer = _mlp(2 * n_c + 3 * n_f, hidden, 1)
        self.noop_logit = nn.Parameter(torch.zeros(1))

    def forward(self, links: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        scores = self.scorer(_node_features(links, nodes)).squeeze(-1)        # (B, n)
        return torch.cat([scores, self.noop_logit.expand(scores.shape[0], 1)], dim=-1)


class RootActor(nn.Module):
    """Inter-domain actor: one score per inter-domain link (crossing) plus a NOOP/BACKTRACK logit."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        n_in = len(LINK_FIELDS) + len(ROOT_CROSSING_EXTRA) + len(ROOT_DOMAIN_CHANNELS)
        self.scorer = _mlp(n_in, hidden, 1)
        self.noop_logit = nn.Parameter(torch.zeros(1))

    def forward(self, crossings: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        # every crossing also sees the plan summary (mean over domains), so scores depend on progress
        summary = domains.mean(dim=1, keepdim=True).expand(-1, crossings.shape[1], -1)
        scores = self.scorer(torch.cat([crossings, summary], dim=-1)).squeeze(-1)  # (B, L)
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

    def __init__(self, hidden: int = 64):
        super().__init__()
        n_f, n_c = len(LINK_FIELDS), len(NODE_CHANNELS)
        self.net = _mlp(2 * n_c + 3 * n_f, hidden, 1)

    def forward(self, links: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.net(_node_features(links, nodes).mean(dim=1)).squeeze(-1)


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
