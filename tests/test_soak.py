"""The soak (benchmarks/soak.py) at 200 rounds, as a test: nothing lost, nothing leaked.

Every good set is served, every bad set refused with the good certificate kept, the server
restarts 4 times, and the daemon's file descriptors, inotify watches and threads do not grow;
its RSS grows by at most 8 MB.  No timing is asserted.
"""

from __future__ import annotations

import pytest

from benchmarks.soak import soak
from tests.support.pgserver import pg_binaries_missing

pytestmark = pytest.mark.pg


def test_soak_of_200_rotations() -> None:
    """200 rounds: every 10th a bad set, every 50th a server restart."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    summary = soak(200)
    figures = summary.figures()
    assert summary.good_sets == 180
    assert summary.served == summary.good_sets, figures
    assert summary.bad_refused == summary.bad_sets == 20, figures
    assert summary.restarts == 4
    growth = figures["growth"]
    assert isinstance(growth, dict)
    assert growth["fds"] == 0, figures
    assert growth["inotify_watches"] == 0, figures
    assert growth["threads"] == 0, figures
    assert growth["rss_mb"] <= 8, figures
    assert summary.daemon_exit == 0
