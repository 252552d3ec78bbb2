"""Shared fixtures for the sdwn_multicast tests."""

import atexit
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from sdwn_multicast.simulator import LinkStateSimulator
from sdwn_multicast.topology import paper_topology

# the sdwn tests must not write .hypothesis/ into the working directory: no example database, and
# Hypothesis' other caches (e.g. its per-module constants) go to a temporary folder removed at exit
settings.register_profile("sdwn", database=None)
settings.load_profile("sdwn")
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="sdwn-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)


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


def _start_plane(**kw):
    from sdwn_multicast.control import ControlPlane

    plane = ControlPlane(**kw)
    plane.start()
    return plane


@pytest.fixture(scope="module")
def lossy_plane(request):
    """Root + 3 domain controller processes on 127.0.0.1 with 20 % drops, 10 % duplicates, <= 20 ms delays."""
    from sdwn_multicast.control import FaultConfig

    plane = _start_plane(topology="paper30", sync_period_s=1.0,
                         faults=FaultConfig(drop_prob=0.2, dup_prob=0.1, max_delay_ms=20, seed=5))
    request.addfinalizer(plane.close)
    return plane


@pytest.fixture
def fresh_plane(request):
    """A fault-free control plane per test, for tests that kill controllers."""
    from sdwn_multicast.control import ChannelTiming

    plane = _start_plane(topology="paper30", sync_period_s=0.5,
                         timing=ChannelTiming(rto_s=0.05, send_timeout_s=2.0, heartbeat_s=0.1, dead_after_s=1.0))
    request.addfinalizer(plane.close)
    return plane
