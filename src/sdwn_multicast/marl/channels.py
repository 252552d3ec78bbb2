"""Names shared by the MA-CDMR environment, its actors and its re-entry planning: the agents, the
observation channels and the objectives (:mod:`sdwn_multicast.marl.env` re-exports them)."""

ROOT = "root"
#: Per-link fields an agent observes and their scale (value / scale is what it sees).
LINK_FIELDS: tuple[str, ...] = ("free_bw_mbps", "delay_ms", "loss", "up")
#: Per-node indicator channels of the ``"nodes"`` observation.
NODE_CHANNELS: tuple[str, ...] = ("in_tree", "on_walk", "head", "pending", "member", "entry", "exit",
                                   "seg_bw", "seg_reach")
ROOT_CROSSING_EXTRA: tuple[str, ...] = ("touches_plan", "inside_plan", "chosen", "exit_bw", "entry_bw", "transit_bw")
ROOT_DOMAIN_CHANNELS: tuple[str, ...] = ("in_plan", "needed", "has_members", "source_domain")
#: episode reward emphasis (module docstring); "bandwidth" is the original, committed-checkpoint one
OBJECTIVES: tuple[str, ...] = ("bandwidth", "delay", "loss", "cost")
