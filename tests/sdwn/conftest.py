"""Shared fixtures for the sdwn_multicast tests."""

import pytest

from sdwn_multicast.simulator import LinkStateSimulator
from sdwn_multicast.topology import paper_topology


@pytest.fixture(scope="session")
def paper_snapshot():
    """A seeded mid-morning snapshot of the paper's 30-AP network."""
    sim = LinkStateSimulator(paper_topology(), seed=3)
    for _ in range(3600):
        snap = sim.step()
    return snap


@pytest.fixture(scope="session")
def paper_graph(paper_snapshot):
    return paper_snapshot.to_graph()
