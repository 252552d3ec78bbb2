"""Multi-agent PPO for MA-CDMR (arXiv 2409.05888), CleanRL style: config, networks, rollout, update, logging.

Agents: one :class:`RootActor` (the root controller's inter-domain agent) and one :class:`DomainActor` per
domain controller, each with its own weights, acting in :class:`CrossDomainMulticastEnv`.

Critic (``TrainConfig.critic``):

* ``"central"`` — CTDE / MAPPO: one :class:`CentralCritic` reads the root's global ``env.state()``; every
  agent's advantage is computed from it. Execution stays decentralised (actors see only their own obs).
* ``"local"`` — the paper's independent per-domain PPO, kept as an ablation: each domain agent has its own
  :class:`LocalCritic` on its own observation; the root has a :class:`RootLocalCritic` on its own.

Credit assignment with a shared team reward: each agent's trajectory is the list of steps at which it acted
(the root acts in the inter phase, domain agents in the intra phase). The reward of one of its transitions
is the team reward summed until its next action (or the episode end), so the final tree reward reaches
every agent's last transition; GAE runs over each agent's own transitions.

Snapshot sources (``TrainConfig.source``): ``"offline"`` replays recorded link-state snapshots (a dataset
directory written by ``sdwn-mcast dataset``, or ``n_snapshots`` recorded from a simulator seeded with
``seed + TRAIN_SIM_SEED_OFFSET``) — the offline pre-training of issue 8; ``"online"`` steps a live
:class:`LinkStateSimulator` (same seeding) ``steps_between`` steps before each episode — online fine-tuning
against the changing network. ``init_from`` starts from another run's weights (offline -> online).

Outputs of :func:`train` in ``out_dir``: ``checkpoint.pt`` (state dicts), ``config.json``, ``train_log.csv``
(one row per episode) and ``convergence.png``.

Behaviour cloning (``bc_episodes > 0``): before PPO, the actors are warm-started on an expert's moves.
``TrainConfig.expert``: ``"widest"`` (default) is the objective's own grafting expert
(:func:`~sdwn_multicast.marl.env.expert_action_for`: widest-path grafting for ``objective="bandwidth"``,
cheapest-path grafting for ``"delay"``, ``"loss"`` and ``"cost"``); ``"composed-kmb"`` follows the composed-KMB tree
(inter-domain plan + delay-weighted KMB inside each domain); the observations summarise bandwidth, not
delay, towards the segment, so its clone stays well above that expert's cost (docs/sdwn_multicast.md).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from torch import nn

from ..simulator import LinkStateSimulator, LinkStateSnapshot
from ..topology import load_topology
from .env import OBJECTIVES, ROOT, CrossDomainMulticastEnv, MarlEnvConfig, expert_action_for
from .policy import (
    CentralCritic,
    DomainActor,
    LocalCritic,
    RootActor,
    RootLocalCritic,
    domain_action_and_logprob,
    obs_to_tensors,
    root_action_and_logprob,
)

CRITICS = ("central", "local")
#: training simulators run with seed + this, so the networks agents train on never coincide with the
#: evaluation's (seeds 0..few thousand): evaluation snapshots are held out
TRAIN_SIM_SEED_OFFSET = 100_000
EXPERTS = ("widest", "composed-kmb")
SOURCES = ("offline", "online")
LOG_FIELDS = ("episode", "update", "return", "valid", "cost", "bottleneck_bw_mbps", "tree_length", "steps",
              "backtracks", "policy_loss", "value_loss", "entropy", "seconds")


class TrainConfigError(ValueError):
    """A training configuration value is out of range or names an unknown option."""


@dataclass(frozen=True)
class TrainConfig:
    topology: str = "paper30"
    n_domains: int | None = None       # for partitioned real/synthetic topologies; None for paper30/paper9
    seed: int = 0
    episodes: int = 400
    episodes_per_update: int = 8       # episodes collected per PPO update (the rollout)
    update_epochs: int = 4
    lr: float = 3e-4
    clip: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    critic: str = "central"            # "central" (MAPPO, CTDE) | "local" (independent PPO ablation)
    source: str = "offline"            # "offline" (replay recorded snapshots) | "online" (live simulator)
    dataset_dir: str | None = None     # offline: a dataset written by ``sdwn-mcast dataset`` (its topology wins)
    n_snapshots: int = 16              # offline without dataset_dir: record this many snapshots
    steps_between: int = 30            # simulator steps between recorded / online snapshots
    bc_episodes: int = 0               # behaviour-cloning warm start: expert (composed-KMB) episodes
    bc_epochs: int = 20                # passes over the expert transitions
    expert: str = "widest"             # behaviour-cloning teacher: "widest" | "composed-kmb"
    init_from: str | None = None       # start from this training output's actors (offline -> online fine-tuning)
    objective: str = "bandwidth"       # reward emphasis (MarlEnvConfig.objective): "bandwidth" | "delay" | "loss" | "cost"
    cost_offset: float = 0.0           # cost objectives: MarlEnvConfig.cost_offset (summaries and expert)
    reentry: bool = False              # the root may enter a domain more than once (MarlEnvConfig.reentry)

    def env_config(self) -> MarlEnvConfig:
        """The environment configuration this run trains (and its checkpoint is served) with."""
        return MarlEnvConfig(objective=self.objective, cost_offset=self.cost_offset, reentry=self.reentry)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TrainConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.cost_offset < 0 or (self.cost_offset and self.objective == "bandwidth"):
            raise TrainConfigError("cost_offset must be non-negative and is only used by the delay / loss objectives")
        if self.cost_offset and self.objective == "cost":
            raise TrainConfigError("the cost objective grafts by the plain link cost (cost_offset 0, Takahashi-Matsuyama)")
        if self.critic not in CRITICS:
            raise TrainConfigError(f"critic must be one of {CRITICS}, got {self.critic!r}")
        if self.expert not in EXPERTS:
            raise TrainConfigError(f"expert must be one of {EXPERTS}, got {self.expert!r}")
        if self.source not in SOURCES:
            raise TrainConfigError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.dataset_dir is not None and self.source != "offline":
            raise TrainConfigError("dataset_dir is only used with source='offline'")
        for name in ("episodes", "episodes_per_update", "update_epochs", "hidden", "n_snapshots",
                     "steps_between", "bc_epochs"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.bc_episodes < 0:
            raise TrainConfigError(f"bc_episodes must be non-negative, got {self.bc_episodes}")
        if not (self.lr > 0 and self.clip > 0 and self.max_grad_norm > 0):
            raise TrainConfigError("lr, clip and max_grad_norm must be positive")
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise TrainConfigError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, "
                                   f"{self.gae_lambda}")
        if self.ent_coef < 0 or self.vf_coef < 0:
            raise TrainConfigError("ent_coef and vf_coef must be non-negative")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"{path}: unknown config keys {unknown}")
        return cls(**data)


#: ``sdwn-mcast train --preset``: tiny is a smoke run (seconds); paper30 and geant are the committed
#: checkpoints' runs (BC from the widest-path expert on recorded snapshots, then offline MAPPO; ~1 min).
PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(topology="paper9", episodes=12, episodes_per_update=4, update_epochs=2, hidden=32,
                        n_snapshots=4),
    "paper30": TrainConfig(topology="paper30", episodes=800, episodes_per_update=16, n_snapshots=128,
                           bc_episodes=1024, bc_epochs=60, reentry=True),
    "geant": TrainConfig(topology="geant", n_domains=3, episodes=800, episodes_per_update=16, n_snapshots=128,
                         bc_episodes=1024, bc_epochs=60, reentry=True),
}
# the delay- and loss-weighted variants (cheapest-path grafting expert, cost summaries) and the cost-minimising
# one (reward -tree cost, the ILP's objective; pure Takahashi-Matsuyama expert, offset 0), for paper30 and
# GEANT; like the bandwidth presets, their root may re-enter domains (MarlEnvConfig.reentry)
for _topo, _k in (("paper30", None), ("geant", 3)):
    for _obj, _off in (("delay", 0.1), ("loss", 0.05), ("cost", 0.0)):
        PRESETS[f"{_topo}-{_obj}"] = TrainConfig(
            topology=_topo, n_domains=_k, episodes=800, episodes_per_update=16, n_snapshots=128,
            bc_episodes=1024, bc_epochs=60, objective=_obj, cost_offset=_off, reentry=True)


# ---- networks ----
class MultiAgentPolicy(nn.Module):
    """All actors and critics of one training run, in one module so one state dict checkpoints them."""

    def __init__(self, n_domains: int, state_dim: int, critic: str = "central", hidden: int = 64,
                 objective: str = "bandwidth"):
        super().__init__()
        if critic not in CRITICS:
            raise TrainConfigError(f"critic must be one of {CRITICS}, got {critic!r}")
        self.critic_kind = critic
        self.objective = objective
        self.root_actor = RootActor(hidden, objective)
        self.domain_actors = nn.ModuleList(DomainActor(hidden, objective) for _ in range(n_domains))
        if critic == "central":
            self.central_critic = CentralCritic(state_dim, 2 * hidden)
        else:
            self.root_critic = RootLocalCritic(hidden)
            self.domain_critics = nn.ModuleList(LocalCritic(hidden, objective) for _ in range(n_domains))

    def act(self, agent: str, obs: dict[str, torch.Tensor], action: torch.Tensor | None = None):
        if agent == ROOT:
            return root_action_and_logprob(self.root_actor, obs, action)
        return domain_action_and_logprob(self.domain_actors[_domain_index(agent)], obs, action)

    def greedy(self, agent: str, obs: dict[str, torch.Tensor]) -> int:
        """The most probable unmasked action (argmax of the masked logits; no distribution is built)."""
        if agent == ROOT:
            logits = self.root_actor(obs["crossings"], obs["domains"])
        else:
            logits = self.domain_actors[_domain_index(agent)](obs["links"], obs["nodes"])
        return int(logits.masked_fill(obs["action_mask"] == 0, float("-inf")).argmax(-1))

    def value(self, agent: str, obs: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        if self.critic_kind == "central":
            return self.central_critic(state)
        if agent == ROOT:
            return self.root_critic(obs["crossings"], obs["domains"])
        return self.domain_critics[_domain_index(agent)](obs["links"], obs["nodes"])


def _domain_index(agent: str) -> int:
    return int(agent.removeprefix("domain_"))


# ---- snapshot sources ----
class OfflineSnapshots:
    """Replay recorded snapshots: the env draws one per episode (seeded)."""

    def __init__(self, snapshots: list[LinkStateSnapshot]):
        self.snapshots = snapshots

    def episode_snapshots(self) -> list[LinkStateSnapshot]:
        return self.snapshots


class OnlineSnapshots:
    """A live simulator stepped ``steps_between`` steps before each episode (online fine-tuning)."""

    def __init__(self, sim: LinkStateSimulator, steps_between: int):
        self.sim, self.steps_between = sim, steps_between

    def episode_snapshots(self) -> list[LinkStateSnapshot]:
        for _ in range(self.steps_between):
            snap = self.sim.step()
        return [snap]


def make_env(cfg: TrainConfig) -> tuple[CrossDomainMulticastEnv, OfflineSnapshots | OnlineSnapshots]:
    if cfg.dataset_dir is not None:
        from ..dataset import load_dataset

        ds = load_dataset(cfg.dataset_dir)
        source = OfflineSnapshots([ds[i] for i in range(len(ds))])
    else:
        topo = load_topology(cfg.topology, n_domains=cfg.n_domains, seed=cfg.seed)
        sim = LinkStateSimulator(topo, seed=cfg.seed + TRAIN_SIM_SEED_OFFSET)
        if cfg.source == "online":
            source = OnlineSnapshots(sim, cfg.steps_between)
        else:
            source = OfflineSnapshots([OnlineSnapshots(sim, cfg.steps_between).episode_snapshots()[0]
                                       for _ in range(cfg.n_snapshots)])
    return CrossDomainMulticastEnv(source.episode_snapshots(), cfg.env_config()), source


# ---- rollout ----
@dataclass
class AgentTransition:
    obs: dict[str, torch.Tensor]   # batch dimension 1
    state: torch.Tensor            # (1, state_dim)
    action: torch.Tensor           # (1,)
    logprob: float
    value: float
    reward: float = 0.0            # team reward from this action until the agent's next action
    advantage: float = 0.0
    ret: float = 0.0


def run_episode(env: CrossDomainMulticastEnv, policy: MultiAgentPolicy, seed: int, greedy: bool = False,
                options: dict | None = None) -> tuple[dict[str, list[AgentTransition]], float, dict]:
    """Play one episode; returns per-agent transitions, the team return and the final info."""
    obs, infos = env.reset(seed=seed, options=options)
    traj: dict[str, list[AgentTransition]] = {a: [] for a in env.possible_agents}
    total = 0.0
    while env.agents:
        state = None if greedy else torch.as_tensor(env.state()).unsqueeze(0)  # the critic's input only
        actions = {}
        with torch.inference_mode():
            for agent in env.agents:
                if not infos[agent]["active"]:
                    actions[agent] = len(obs[agent]["action_mask"]) - 1  # NOOP, the only unmasked move
                    continue
                t = obs_to_tensors(obs[agent])
                if greedy:
                    actions[agent] = policy.greedy(agent, t)
                    continue
                a, logp, _ = policy.act(agent, t)
                traj[agent].append(AgentTransition(t, state, a, float(logp), float(policy.value(agent, t, state))))
                actions[agent] = int(a)
        obs, rewards, _, _, infos = env.step(actions)
        r = next(iter(rewards.values()))
        total += r
        for ts in traj.values():  # the reward accrues to every agent's latest transition (module docstring)
            if ts:
                ts[-1].reward += r
    return traj, total, infos[ROOT]


def compute_gae(ts: list[AgentTransition], gamma: float, lam: float) -> None:
    """GAE over one agent's transitions; the episode ends (value 0) after its last one."""
    last = 0.0
    for k in reversed(range(len(ts))):
        next_value = ts[k + 1].value if k + 1 < len(ts) else 0.0
        delta = ts[k].reward + gamma * next_value - ts[k].value
        last = delta + gamma * lam * last
        ts[k].advantage, ts[k].ret = last, last + ts[k].value


# ---- behaviour-cloning warm start ----
EXPERT_METHOD = "composed-kmb"


def expert_action(env: CrossDomainMulticastEnv, agent: str, mask: np.ndarray, tree) -> int | None:
    """The move that follows the expert tree, or None when the tree does not say (off its path).

    Root: a valid crossing whose inter-domain link is a tree edge (a stuck root backtracks). Domain agent:
    the next hop on the tree path from the walk head towards the domain's entry; the domain part of a
    composed tree is connected and holds the entry, so that path reaches the segment inside the domain.
    """
    valid = np.flatnonzero(mask)
    if agent == ROOT:
        if len(valid) == 1 and valid[0] == len(mask) - 1:
            return int(valid[0])
        hits = [j for j in valid if j < len(mask) - 1 and tree.has_edge(*env.topology.inter_domain_links[j])]
        return int(hits[0]) if hits else None
    d = _domain_index(agent)
    head, entry = env.walk[d][-1], env.entry[d]
    if head not in tree or entry not in tree:
        return None
    path = nx.shortest_path(tree, head, entry)
    if len(path) < 2:
        return None
    a = env._local[d].get(path[1])
    return a if a is not None and mask[a] else None


def collect_expert_episodes(env: CrossDomainMulticastEnv, source, n_episodes: int, seed: int,
                            expert: str = "widest") -> list[tuple[str, dict[str, torch.Tensor], int]]:
    """Roll out the expert's moves; (agent, obs, expert action) for every labelled step.

    With ``"composed-kmb"``, unlabelled steps (the env drifted off the expert tree) take a random valid move
    and are not recorded; the ``"widest"`` expert labels every step.
    """
    from ..evaluation import build_tree

    rng = np.random.default_rng(seed)
    data = []
    for i in range(n_episodes):
        env.snapshots = source.episode_snapshots()
        obs, infos = env.reset(seed=seed + i)
        tree = None
        if expert == EXPERT_METHOD:
            tree = build_tree(EXPERT_METHOD, env.topology, env.graph, env.source, env.members, "delay_ms")
        while env.agents:
            actions = {}
            for agent in env.agents:
                mask = obs[agent]["action_mask"]
                if not infos[agent]["active"]:
                    actions[agent] = len(mask) - 1
                    continue
                a = expert_action(env, agent, mask, tree) if tree is not None else expert_action_for(env, agent)
                if a is None:
                    actions[agent] = int(rng.choice(np.flatnonzero(mask)))
                else:
                    data.append((agent, obs_to_tensors(obs[agent]), a))
                    actions[agent] = a
            obs, _, _, _, infos = env.step(actions)
    return data


def behaviour_cloning(policy: MultiAgentPolicy, data: list[tuple[str, dict[str, torch.Tensor], int]],
                      epochs: int, lr: float, batch_size: int = 256, seed: int = 0) -> list[float]:
    """Maximise the masked log-likelihood of the expert's moves (Adam, shuffled minibatches per agent);
    returns the mean loss per epoch."""
    by_agent: dict[str, list] = {}
    for agent, obs, a in data:
        by_agent.setdefault(agent, []).append((obs, a))
    stacked = {agent: ({k: torch.cat([o[k] for o, _ in items]) for k in items[0][0]},
                       torch.tensor([a for _, a in items])) for agent, items in by_agent.items()}
    actors = [p for n, p in policy.named_parameters() if "actor" in n]
    optimizer = torch.optim.Adam(actors, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        total, n = 0.0, 0
        for agent, (obs, action) in stacked.items():
            for idx in torch.randperm(len(action), generator=gen).split(batch_size):
                _, logp, _ = policy.act(agent, {k: v[idx] for k, v in obs.items()}, action[idx])
                loss = -logp.mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, n = total + loss.item() * len(idx), n + len(idx)
        losses.append(total / max(n, 1))
    return losses


# ---- update ----
def ppo_update(policy: MultiAgentPolicy, optimizer: torch.optim.Optimizer, batch: dict[str, list[AgentTransition]],
               cfg: TrainConfig) -> dict[str, float]:
    """Clipped PPO on each agent's batch (masked log-probs), one optimizer step per epoch over all agents."""
    stacked = {}
    for agent, ts in batch.items():
        if not ts:
            continue
        obs = {k: torch.cat([t.obs[k] for t in ts]) for k in ts[0].obs}
        adv = torch.tensor([t.advantage for t in ts])
        if len(ts) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        stacked[agent] = (obs, torch.cat([t.state for t in ts]), torch.cat([t.action for t in ts]),
                          torch.tensor([t.logprob for t in ts]), adv, torch.tensor([t.ret for t in ts]))
    stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0}
    if not stacked:  # no agent acted (cannot happen with a non-empty request, but never divide by zero)
        return stats
    for _ in range(cfg.update_epochs):
        pg_total, v_total, ent_total, n = 0.0, 0.0, 0.0, 0
        for agent, (obs, state, action, old_logp, adv, ret) in stacked.items():
            _, logp, ent = policy.act(agent, obs, action)
            ratio = (logp - old_logp).exp()
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).sum()
            v = ((policy.value(agent, obs, state) - ret) ** 2).sum() * 0.5
            pg_total, v_total, ent_total, n = pg_total + pg, v_total + v, ent_total + ent.sum(), n + len(ret)
        loss = (pg_total - cfg.ent_coef * ent_total + cfg.vf_coef * v_total) / n
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        stats = {"policy_loss": pg_total.item() / n, "value_loss": v_total.item() / n,
                 "entropy": ent_total.item() / n}
    return stats


# ---- checkpoints ----
def save_checkpoint(policy: MultiAgentPolicy, cfg: TrainConfig, out_dir: Path, n_domains: int,
                    state_dim: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    path = out_dir / "checkpoint.pt"
    torch.save({"policy": policy.state_dict(), "n_domains": n_domains, "state_dim": state_dim}, path)
    save_safetensors_policy(policy, out_dir, n_domains, state_dim)
    return path


SAFETENSORS_NAME = "policy.safetensors"


def save_safetensors_policy(policy: MultiAgentPolicy, out_dir: Path, n_domains: int, state_dim: int) -> Path:
    """The same weights as ``checkpoint.pt`` in safetensors (shipped as package data; no pickle on load)."""
    from safetensors.torch import save_file

    path = Path(out_dir) / SAFETENSORS_NAME
    tensors = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    save_file(tensors, str(path), metadata={"n_domains": str(n_domains), "state_dim": str(state_dim)})
    return path


def load_policy(out_dir: str | Path) -> tuple[MultiAgentPolicy, TrainConfig]:
    """Rebuild the trained policy (eval mode) and its config from a ``train`` output folder."""
    out_dir = Path(out_dir)
    has_pt, has_st = (out_dir / "checkpoint.pt").is_file(), (out_dir / SAFETENSORS_NAME).is_file()
    if not (has_pt or has_st) or not (out_dir / "config.json").is_file():
        raise FileNotFoundError(f"{out_dir} is not a training output (needs checkpoint.pt and config.json; "
                                f"{SAFETENSORS_NAME} may replace checkpoint.pt)")
    cfg = TrainConfig.from_json(out_dir / "config.json")
    if has_pt:
        ckpt = torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        state, n_domains, state_dim = ckpt["policy"], ckpt["n_domains"], ckpt["state_dim"]
    else:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(out_dir / SAFETENSORS_NAME), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(out_dir / SAFETENSORS_NAME))
        n_domains, state_dim = int(meta["n_domains"]), int(meta["state_dim"])
    policy = MultiAgentPolicy(n_domains, state_dim, cfg.critic, cfg.hidden, cfg.objective)
    policy.load_state_dict(state)
    policy.n_domains, policy.state_dim = n_domains, state_dim
    policy.env_config = cfg.env_config()
    return policy.eval(), cfg


# ---- plots ----
def plot_convergence(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.array([r["episode"] for r in rows])
    ret = np.array([r["return"] for r in rows], dtype=float)
    valid = np.array([r["valid"] for r in rows], dtype=float)
    w = max(1, len(rows) // 20)
    smooth = np.convolve(ret, np.ones(w) / w, mode="valid")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    ax1.plot(ep, ret, ".", alpha=0.3, label="episode return")
    ax1.plot(ep[w - 1:], smooth, "-", label=f"moving mean ({w})")
    ax1.set_ylabel("team return")
    ax1.legend(loc="lower right")
    ax1.set_title(title)
    ax2.plot(ep[w - 1:], np.convolve(valid, np.ones(w) / w, mode="valid"), "-")
    ax2.set_ylabel("valid-tree rate")
    ax2.set_xlabel("episode")
    ax2.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main loop ----
def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run PPO for ``cfg.episodes`` episodes; write checkpoint, config, CSV log and convergence plot."""
    torch.manual_seed(cfg.seed)
    env, source = make_env(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_domains, state_dim = env.topology.n_domains, env.state_space.shape[0]
    policy = MultiAgentPolicy(n_domains, state_dim, cfg.critic, cfg.hidden, cfg.objective)
    if cfg.init_from is not None:
        # offline -> online: start from a pre-trained run's weights (its critic too when the shapes agree)
        init, _ = load_policy(cfg.init_from)
        own = policy.state_dict()
        policy.load_state_dict({k: v for k, v in init.state_dict().items() if k in own and own[k].shape == v.shape},
                               strict=False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    bc_losses: list[float] = []
    if cfg.bc_episodes:
        data = collect_expert_episodes(env, source, cfg.bc_episodes, seed=cfg.seed * 1_000_003 + 10**9,
                                       expert=cfg.expert)
        bc_losses = behaviour_cloning(policy, data, cfg.bc_epochs, cfg.lr * 10, seed=cfg.seed)

    rows: list[dict] = []
    csv_path = out_dir / "train_log.csv"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.episodes, desc=f"train {cfg.topology} ({cfg.critic})", unit="ep")
    t0 = time.perf_counter()
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        episode, update = 0, 0
        while episode < cfg.episodes:
            # rollout: a batch of whole episodes
            batch: dict[str, list[AgentTransition]] = {a: [] for a in env.possible_agents}
            pending = []
            for _ in range(min(cfg.episodes_per_update, cfg.episodes - episode)):
                env.snapshots = source.episode_snapshots()
                policy.eval()
                traj, ret, info = run_episode(env, policy, seed=cfg.seed * 1_000_003 + episode)
                for agent, ts in traj.items():
                    compute_gae(ts, cfg.gamma, cfg.gae_lambda)
                    batch[agent].extend(ts)
                m = info["metrics"] or {}
                pending.append({"episode": episode, "update": update, "return": ret,
                                "valid": info["tree"] is not None, "cost": m.get("cost", math.nan),
                                "bottleneck_bw_mbps": m.get("bottleneck_bw_mbps", math.nan),
                                "tree_length": m.get("tree_length", math.nan), "steps": env.step_count,
                                "backtracks": info["backtracks"]})
                episode += 1
                if bar is not None:
                    bar.update(1)
            # update
            policy.train()
            stats = ppo_update(policy, optimizer, batch, cfg)
            update += 1
            for row in pending:
                row.update(stats, seconds=time.perf_counter() - t0)
                writer.writerow(row)
                rows.append(row)
            fh.flush()
            if bar is not None:
                recent = rows[-cfg.episodes_per_update:]
                bar.set_postfix(ret=f"{np.mean([r['return'] for r in recent]):.3f}",
                                valid=f"{np.mean([r['valid'] for r in recent]):.2f}")
    if bar is not None:
        bar.close()
    ckpt = save_checkpoint(policy, cfg, out_dir, n_domains, state_dim)
    png = out_dir / "convergence.png"
    plot_convergence(rows, png, f"MAPPO on {env.topology.name} ({cfg.critic} critic, {cfg.source})")
    returns = [r["return"] for r in rows]
    k = max(1, len(rows) // 5)
    return {"checkpoint": ckpt, "csv": csv_path, "png": png, "config": out_dir / "config.json",
            "episodes": len(rows), "valid_rate": float(np.mean([r["valid"] for r in rows])),
            "first_return": float(np.mean(returns[:k])), "last_return": float(np.mean(returns[-k:])),
            "bc_losses": bc_losses, "seconds": time.perf_counter() - t0}
