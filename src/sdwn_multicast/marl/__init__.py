"""MA-CDMR agents: the multi-agent environment (one inter-domain agent at the root, one intra-domain agent
per domain controller), its masked actor-critics (``marl.policy``) and multi-agent PPO training
(``marl.train``; imported on demand, as it pulls in torch)."""

from .env import (
    NODE_CHANNELS,
    CrossDomainMulticastEnv,
    InvalidActionError,
    MarlEnvConfig,
    domain_agent,
)

__all__ = ["NODE_CHANNELS", "CrossDomainMulticastEnv", "InvalidActionError", "MarlEnvConfig", "domain_agent"]
