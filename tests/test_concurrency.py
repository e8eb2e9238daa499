"""Concurrency: signal storms, events during a cycle, SIGTERM during a reload.

A real daemon (as postgres) beside a real server, watched through its metrics: no set is
reloaded twice, no change is lost, and every exit is clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import certs
from tests.support.kubelet import SecretVolume
from tests.support.pgserver import PgServer, free_port, pg_binaries_missing, world_traversable_dir
from tests.support.wait import eventually
from tests.test_metrics_notify import CERTRELOAD, as_postgres, get, value

pytestmark = pytest.mark.pg
WAIT = 30.0


class Rig:
    """A server on a kubelet-style secret, and a daemon with --listen."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.volume = SecretVolume(base / "secret")
        self.ca = certs.make_root_ca()
        self.gid = 0
        if os.geteuid() == 0:
            import pwd

            self.gid = pwd.getpwnam("postgres").pw_gid
        self.current = self.publish()
        secret = self.volume.path
        self.server = PgServer(secret / "tls.crt", secret / "tls.key", secret / "ca.crt")
        self.port = free_port()
        self.daemon: subprocess.Popen[str] | None = None

    def publish(self) -> certs.Issued:
        """A new valid leaf, published kubelet-style."""
        leaf = certs.make_leaf(self.ca, cn="cluster-1", dns_sans=["cluster-1"])
        self.volume.write(
            {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": self.ca.cert_pem},
            mode=0o640,
            gid=self.gid,
        )
        return leaf

    def start(self) -> None:
        """Start the daemon and wait for its first cycle."""
        argv = [CERTRELOAD, "--dir", str(self.volume.path), "--san", "cluster-1",
                "--dsn", self.server.superuser_dsn(), "--server-addr",
                f"127.0.0.1:{self.server.port}", "--listen", f"127.0.0.1:{self.port}",
                "--log-format", "json"]  # fmt: skip
        self.daemon = subprocess.Popen(
            as_postgres(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        eventually(lambda: get(self.url("/readyz"))[0] == 200, "/readyz")

    def url(self, path: str) -> str:
        """An endpoint of the daemon."""
        return f"http://127.0.0.1:{self.port}{path}"

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value (0 when absent)."""
        return value(get(self.url("/metrics"))[1], name, **labels) or 0.0

    def stop(self) -> tuple[int, str]:
        """SIGTERM; exit code and log."""
        assert self.daemon is not None
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
        _, err = self.daemon.communicate(timeout=WAIT)
        return self.daemon.returncode, err


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A fresh rig per test; the daemon stopped and everything removed afterwards."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    base = world_traversable_dir("certreload-conc-")
    r = Rig(base)
    try:
        r.server.start()
        r.start()
        yield r
    finally:
        if r.daemon is not None and r.daemon.poll() is None:
            r.daemon.kill()
            r.daemon.communicate()
        r.server.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_sighup_storm_reloads_nothing_and_loses_nothing(rig: Rig) -> None:
    """100 SIGHUPs at once: cycles run, nothing is reloaded; a rotation after is served."""
    assert rig.daemon is not None
    for _ in range(100):
        rig.daemon.send_signal(signal.SIGHUP)
    eventually(
        lambda: rig.metric("certreload_checks_total", trigger="signal") >= 1, "a signal cycle"
    )
    time.sleep(0.5)
    assert rig.metric("certreload_reloads_total") == 0
    assert rig.daemon.poll() is None
    leaf = rig.publish()
    eventually(
        lambda: rig.server.served_fingerprint() == leaf.fingerprint_sha256, "the rotation served"
    )
    assert rig.metric("certreload_reloads_total") == 1
    code, err = rig.stop()
    assert code == 0, err


def test_each_rotation_is_reloaded_once(rig: Rig) -> None:
    """N rotations, one after another: exactly N reloads (no set reloaded twice)."""
    for count in range(1, 6):
        wanted = rig.publish().fingerprint_sha256

        def served(wanted: str = wanted) -> bool:
            return rig.server.served_fingerprint() == wanted

        def counted(count: int = count) -> bool:
            return rig.metric("certreload_reloads_total") == count

        eventually(served, "served")
        eventually(counted, "counted")
    time.sleep(0.5)
    assert rig.metric("certreload_reloads_total") == 5
    assert rig.metric("certreload_reloads_failed_total") == 0
    assert rig.stop()[0] == 0
    # the daemon's probes (dozens here) leave no connection noise in the server's log
    log = rig.server.log_text()
    assert "could not receive data" not in log
    assert "incomplete startup packet" not in log
    assert "Connection reset" not in log


def test_events_during_a_cycle_lose_no_change(rig: Rig) -> None:
    """Three swaps in quick succession: the last set is served, and at most three reloads."""
    rig.publish()
    rig.publish()
    last = rig.publish()
    eventually(
        lambda: rig.server.served_fingerprint() == last.fingerprint_sha256, "the last set served"
    )
    # the server may present the set a moment before the daemon has confirmed and counted it
    eventually(lambda: rig.metric("certreload_reloads_total") >= 1, "the reload counted")
    time.sleep(0.5)
    assert rig.metric("certreload_served_matches_files") == 1
    assert rig.metric("certreload_reloads_total") <= 3
    assert rig.metric("certreload_reloads_failed_total") == 0
    assert rig.stop()[0] == 0


def test_sigterm_during_a_reload_exits_cleanly(rig: Rig) -> None:
    """SIGTERM right after a swap (while the cycle reloads and confirms): exit 0, no error."""
    assert rig.daemon is not None
    leaf = rig.publish()
    rig.daemon.send_signal(signal.SIGTERM)
    code, err = rig.stop()
    assert code == 0, err
    assert '"level": "error"' not in err
    assert '"event": "stopped"' in err
    served = rig.server.served_fingerprint()
    assert served in (leaf.fingerprint_sha256, rig.current.fingerprint_sha256)
