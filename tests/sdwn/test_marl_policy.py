"""Masked actor-critics: masked actions are never sampled, one set of weights fits any domain size."""

import numpy as np
import pytest
import torch

from sdwn_multicast.marl import CrossDomainMulticastEnv, domain_agent
from sdwn_multicast.marl.env import ROOT
from sdwn_multicast.marl.policy import (
    CentralCritic,
    DomainActor,
    LocalCritic,
    RootActor,
    domain_action_and_logprob,
    masked_categorical,
    obs_to_tensors,
    root_action_and_logprob,
)
from sdwn_multicast.trees import validate_tree


@pytest.fixture(scope="module")
def env():
    return CrossDomainMulticastEnv.from_topology("geant", n_snapshots=2, seed=0, n_domains=3)


def test_masked_actions_have_zero_probability_and_are_never_sampled():
    torch.manual_seed(0)
    logits = torch.randn(64, 9) * 5
    mask = torch.rand(64, 9) < 0.3
    mask[torch.arange(64), torch.randint(0, 9, (64,))] = True
    dist = masked_categorical(logits, mask)
    assert torch.all(dist.probs[~mask] == 0)
    samples = dist.sample((200,))
    assert bool(mask.gather(1, samples.T).all())
    assert torch.isfinite(dist.entropy()).all()


def test_an_all_masked_row_is_rejected():
    with pytest.raises(ValueError, match="at least one valid action"):
        masked_categorical(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_policy_driven_episode_respects_masks_and_builds_a_valid_tree(env):
    torch.manual_seed(1)
    domain_actor, root_actor = DomainActor(), RootActor()
    critic = CentralCritic(env.state_space.shape[0])
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        while env.agents:
            actions = {}
            with torch.no_grad():
                value = critic(torch.as_tensor(env.state()).unsqueeze(0))
                assert value.shape == (1,)
                for agent in env.agents:
                    t = obs_to_tensors(obs[agent])
                    fn = root_action_and_logprob if agent == ROOT else domain_action_and_logprob
                    a, logp, _ = fn(root_actor if agent == ROOT else domain_actor, t)
                    assert obs[agent]["action_mask"][int(a)] == 1 and torch.isfinite(logp).all()
                    actions[agent] = int(a)
            obs, _, _, _, infos = env.step(actions)
        assert infos[ROOT]["failure"] is None
        validate_tree(env.graph, infos[ROOT]["tree"], env.source, env.members)


def test_one_domain_actor_serves_domains_of_different_sizes_and_gets_gradients(env):
    obs, _ = env.reset(seed=3)
    actor, local = DomainActor(), LocalCritic()
    sizes = set()
    loss = torch.zeros(())
    for d in range(env.topology.n_domains):
        t = obs_to_tensors(obs[domain_agent(d)])
        logits = actor(t["links"], t["nodes"])
        n = len(env.topology.domain_nodes(d))
        sizes.add(n)
        assert logits.shape == (1, n + 1)
        _, logp, ent = domain_action_and_logprob(actor, t)
        loss = loss - logp.sum() - ent.sum() + local(t["links"], t["nodes"]).sum()
    assert len(sizes) > 1
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in actor.scorer.parameters())


def test_scoring_a_given_action_matches_its_sampling_log_prob(env):
    obs, _ = env.reset(seed=2, options={"source": env.topology.nodes[0], "members": list(env.topology.nodes[-3:])})
    torch.manual_seed(4)
    actor = RootActor()
    t = obs_to_tensors(obs[ROOT])
    with torch.no_grad():
        a, logp, _ = root_action_and_logprob(actor, t)
        _, logp2, _ = root_action_and_logprob(actor, t, action=a)
        probs = torch.softmax(actor(t["crossings"], t["domains"]).masked_fill(t["action_mask"] == 0, float("-inf")), -1)
    assert torch.allclose(logp, logp2)
    assert np.isclose(float(logp.exp()), float(probs[0, a]))
