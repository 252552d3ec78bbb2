"""The MA-CDMR PettingZoo environment: API conformance, masks, valid trees, determinism, failures."""

import networkx as nx
import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from sdwn_multicast.marl import CrossDomainMulticastEnv, InvalidActionError, MarlEnvConfig, domain_agent
from sdwn_multicast.marl.env import ROOT
from sdwn_multicast.simulator import LinkStateSimulator, with_link_failed
from sdwn_multicast.topology import UnknownTopologyError, paper_topology
from sdwn_multicast.trees import DecompositionError, MulticastError, UnknownNodeError, validate_tree


@pytest.fixture(scope="module")
def paper_env():
    return CrossDomainMulticastEnv.from_topology("paper30", n_snapshots=3, seed=1)


@pytest.fixture(scope="module")
def geant_env():
    return CrossDomainMulticastEnv.from_topology("geant", n_snapshots=3, seed=0, n_domains=3)


def _check_masks(env, obs):
    """Every allowed move is a neighbour over an up link and revisits nothing."""
    dom = env.topology.domain_of
    for d in range(env.topology.n_domains):
        mask = obs[domain_agent(d)]["action_mask"]
        allowed = np.flatnonzero(mask[:-1])
        walk = env.walk.get(d) or []
        if not walk:
            assert not allowed.size and mask[-1] == 1
            continue
        assert mask[-1] == 0, "an active domain agent must move"
        head = walk[-1]
        for i in allowed:
            nxt = env.topology.domain_nodes(d)[i]
            assert env.graph.has_edge(head, nxt), f"{nxt} is not an up neighbour of {head}"
            assert dom[nxt] == d
            assert nxt not in walk, f"{nxt} revisits the walk {walk}"
    root_mask = obs[ROOT]["action_mask"]
    for j in np.flatnonzero(root_mask[:-1]):
        u, v = env.topology.inter_domain_links[j]
        assert env.phase == "inter"
        assert env.graph.has_edge(u, v), "root may not cross a failed link"
        assert (dom[u] in env.entry) != (dom[v] in env.entry), "each domain is entered exactly once"


def _run_random_episode(env, seed, rng, options=None, check=True):
    obs, infos = env.reset(seed=seed, options=options)
    steps = 0
    while env.agents:
        if check:
            _check_masks(env, obs)
        actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
        obs, rewards, terms, truncs, infos = env.step(actions)
        steps += 1
    return obs, rewards, terms, truncs, infos, steps


def test_pettingzoo_parallel_api_test_passes(paper_env):
    parallel_api_test(paper_env, num_cycles=200)


def test_observations_and_state_lie_in_their_spaces(paper_env):
    obs, _ = paper_env.reset(seed=4)
    for agent in paper_env.possible_agents:
        assert paper_env.observation_space(agent).contains(obs[agent]), agent
        assert obs[agent]["action_mask"].shape == (paper_env.action_space(agent).n,)
    assert paper_env.state_space.contains(paper_env.state())


@pytest.mark.parametrize("env_name", ["paper_env", "geant_env"])
def test_random_masked_agents_always_build_valid_trees(env_name, request):
    env = request.getfixturevalue(env_name)
    rng = np.random.default_rng(11)
    for seed in range(40):
        _, rewards, terms, truncs, infos, _ = _run_random_episode(env, seed, rng)
        info = infos[ROOT]
        assert info["failure"] is None, info["failure"]
        assert all(terms.values()) and not any(truncs.values())
        validate_tree(env.graph, info["tree"], env.source, env.members)
        assert len(set(rewards.values())) == 1, "the reward is shared"


def test_final_reward_follows_the_documented_formula(paper_env):
    rng = np.random.default_rng(0)
    _, rewards, _, _, infos, _ = _run_random_episode(paper_env, 7, rng, check=False)
    m, cfg = infos[ROOT]["metrics"], paper_env.config
    expected = (m["bottleneck_bw_mbps"] / cfg.bw_ref_mbps - m["mean_link_delay_ms"] / cfg.delay_ref_ms
                - m["mean_link_loss"] / cfg.loss_ref - cfg.length_coef * m["tree_length"] / len(paper_env.members))
    assert infos[ROOT]["backtracks"] == 0
    assert rewards[ROOT] == pytest.approx(expected)


def test_episodes_are_deterministic_for_a_seed():
    def trace(seed):
        env = CrossDomainMulticastEnv.from_topology("paper30", n_snapshots=3, seed=1)
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        out = [(env.source, env.members, env.snapshot.step)]
        while env.agents:
            actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
            obs, rewards, *_ , infos = env.step(actions)
            out.append((tuple(sorted(actions.items())), env.state().tobytes(), rewards[ROOT]))
        out.append(sorted(map(sorted, infos[ROOT]["tree"].edges)))
        return out

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_fixed_request_is_served_and_members_in_one_domain_skip_the_root(paper_env):
    obs, infos = paper_env.reset(seed=0, options={"source": 1, "members": [3, 9]})
    assert paper_env.phase == "intra" and not infos[ROOT]["active"]
    assert obs[ROOT]["action_mask"].tolist() == [0] * len(paper_env.topology.inter_domain_links) + [1]
    rng = np.random.default_rng(1)
    *_, infos, _ = _run_random_episode(paper_env, 0, rng, options={"source": 1, "members": [3, 9]})
    tree = infos[ROOT]["tree"]
    validate_tree(paper_env.graph, tree, 1, (3, 9))
    assert all(paper_env.topology.domain_of[n] == 0 for n in tree)


def test_a_domain_that_would_need_two_entries_ends_with_a_reported_failure():
    # isolate AP 16 inside domain 1: it stays reachable from domain 0 over (10, 16), and AP 11 over (8, 11),
    # but no single entry into domain 1 reaches both members inside the domain
    topo = paper_topology()
    snap = LinkStateSimulator(topo, seed=2).step()
    for u, v in topo.intra_domain_links(1):
        if 16 in (u, v):
            snap = with_link_failed(snap, u, v)
    env = CrossDomainMulticastEnv(snap)
    rng = np.random.default_rng(0)
    _, rewards, terms, _, infos, steps = _run_random_episode(env, 0, rng, options={"source": 1, "members": [11, 16]})
    assert infos[ROOT]["failure"].startswith("no cross-domain plan")
    assert infos[ROOT]["tree"] is None and all(terms.values())
    assert rewards[ROOT] < -env.config.failure_penalty + 1e-9
    assert steps == 1  # BACKTRACK with an empty plan is the only move


def test_bad_inputs_raise_specific_errors(paper_env):
    with pytest.raises(UnknownTopologyError):
        CrossDomainMulticastEnv.from_topology("no-such-net")
    with pytest.raises(UnknownNodeError):
        paper_env.reset(seed=0, options={"source": 1, "members": [999]})
    with pytest.raises(MulticastError, match="both"):
        paper_env.reset(seed=0, options={"source": 1})
    with pytest.raises(MulticastError):
        paper_env.reset(seed=0, options={"source": 1, "members": [1]})
    with pytest.raises(ValueError, match="group_size"):
        MarlEnvConfig(group_size=(4, 2))
    with pytest.raises(ValueError, match="at least one"):
        CrossDomainMulticastEnv([])
    obs, _ = paper_env.reset(seed=0, options={"source": 1, "members": [25]})
    bad = int(np.flatnonzero(obs[ROOT]["action_mask"] == 0)[0])
    with pytest.raises(InvalidActionError, match="masked out"):
        paper_env.step({ROOT: bad})
    with pytest.raises(InvalidActionError, match="must act"):
        paper_env.step({})


def test_source_domain_split_from_its_members_is_a_decomposition_error():
    # AP 16 cut off inside domain 1 but reachable through domain 0: the flat request is fine, the
    # decomposition is not, since the source's domain cannot be entered a second time
    topo = paper_topology()
    snap = LinkStateSimulator(topo, seed=2).step()
    for u, v in topo.intra_domain_links(1):
        if 16 in (u, v):
            snap = with_link_failed(snap, u, v)
    assert nx.has_path(snap.to_graph(), 11, 16)
    env = CrossDomainMulticastEnv(snap)
    with pytest.raises(DecompositionError, match="inside its"):
        env.reset(seed=0, options={"source": 11, "members": [16]})
