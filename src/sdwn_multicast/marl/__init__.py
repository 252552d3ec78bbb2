"""MA-CDMR agents: the multi-agent environment (one inter-domain agent at the root, one intra-domain agent
per domain controller) and, later, the PPO actor-critics that act in it."""

from .env import (
    NODE_CHANNELS,
    CrossDomainMulticastEnv,
    InvalidActionError,
    MarlEnvConfig,
    domain_agent,
)

__all__ = ["NODE_CHANNELS", "CrossDomainMulticastEnv", "InvalidActionError", "MarlEnvConfig", "domain_agent"]
