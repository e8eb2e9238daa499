"""``--listen`` endpoints and systemd's notify protocol, with a real daemon and server.

The daemon runs as the postgres user beside its own PostgreSQL; the secret folder is updated
the kubelet's way; notify messages arrive on a real datagram socket of the test's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certreload.metrics import Health
from certreload.notify import Notifier
from tests.support import certs
from tests.support.kubelet import SecretVolume
from tests.support.pgserver import PgServer, free_port, pg_binaries_missing, world_traversable_dir
from tests.support.wait import eventually

pytestmark = pytest.mark.pg
CERTRELOAD = str(Path(sys.prefix) / "bin" / "certreload")
NAMES = ["cluster-1"]
WAIT = 30.0


@dataclass
class Rig:
    """A server, its secret folder and a CA."""

    server: PgServer
    volume: SecretVolume
    ca: certs.Issued
    base: Path

    def rotate(self, leaf: certs.Issued | None = None, key: bytes | None = None) -> certs.Issued:
        """Publish a new generation (a new valid leaf unless given), kubelet-style."""
        leaf = leaf or certs.make_leaf(self.ca, cn="cluster-1", dns_sans=NAMES)
        gid = os.stat(self.base).st_gid if os.geteuid() != 0 else _postgres_gid()
        self.volume.write(
            {"tls.crt": leaf.cert_pem, "tls.key": key or leaf.key_pem, "ca.crt": self.ca.cert_pem},
            mode=0o640,
            gid=gid,
        )
        return leaf


def _postgres_gid() -> int:
    import pwd

    return pwd.getpwnam("postgres").pw_gid


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """A fresh server reading a kubelet-style secret folder."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    base = world_traversable_dir("certreload-metrics-")
    volume = SecretVolume(base / "secret")
    r = Rig(
        PgServer(base / "secret/tls.crt", base / "secret/tls.key", base / "secret/ca.crt"),
        volume,
        certs.make_root_ca(),
        base,
    )
    r.rotate()
    try:
        r.server.start()
        yield r
    finally:
        r.server.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def as_postgres(argv: list[str]) -> list[str]:
    """Run argv as the postgres user (exec, so signals reach certreload itself)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def start_daemon(rig: Rig, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """certreload in the foreground, as postgres, logging JSON to a pipe."""
    argv = [CERTRELOAD, "--dir", str(rig.base / "secret"), "--san", "cluster-1",
            "--dsn", rig.server.superuser_dsn(), "--server-addr", f"127.0.0.1:{rig.server.port}",
            "--log-format", "json", *extra]  # fmt: skip
    return subprocess.Popen(
        as_postgres(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def stop_daemon(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT)
    return proc.returncode, err


def get(url: str) -> tuple[int, str]:
    """HTTP GET: status and body (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse the exposition: sample name -> [(labels, value)]."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, or None."""
    for got, v in samples(text).get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def test_metrics_and_probes_through_rotation_and_rejection(rig: Rig) -> None:
    """/healthz at once; metrics follow a rotation and a bad set; /healthz stays 200."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_daemon(rig, "--listen", f"127.0.0.1:{port}")
    try:
        eventually(lambda: get(base + "/healthz")[0] == 200, "/healthz 200")
        eventually(lambda: get(base + "/readyz")[0] == 200, "/readyz 200")
        assert get(base + "/nowhere")[0] == 404

        leaf = rig.rotate()
        eventually(
            lambda: value(get(base + "/metrics")[1], "certreload_reloads_total") == 1.0,
            "one reload",
        )
        text = get(base + "/metrics")[1]
        not_after = leaf.cert.not_valid_after_utc.timestamp()
        serial = format(leaf.cert.serial_number, "x")
        assert (
            value(
                text,
                "certreload_certificate_not_after_timestamp_seconds",
                source="file",
                serial=serial,
            )
            == not_after
        )
        eventually(
            lambda: (
                value(
                    get(base + "/metrics")[1],
                    "certreload_certificate_not_after_timestamp_seconds",
                    source="served",
                    serial=serial,
                )
                == not_after
            ),
            "served notAfter",
        )
        text = get(base + "/metrics")[1]
        assert value(text, "certreload_served_matches_files") == 1.0
        assert value(text, "certreload_last_reload_successful") == 1.0
        last = value(text, "certreload_last_reload_success_timestamp_seconds")
        assert last is not None
        assert abs(time.time() - last) < 600
        assert value(text, "certreload_info", version=__import__("certreload").__version__) == 1.0
        assert value(text, "process_resident_memory_bytes") is not None
        assert (value(text, "certreload_watch_events_total") or 0) > 0
        assert (value(text, "certreload_checks_total", trigger="watch") or 0) > 0
        # one file series and one served series, not one per certificate ever seen
        assert len(samples(text)["certreload_certificate_not_after_timestamp_seconds"]) == 2

        rejected_before = value(text, "certreload_rejected_total")
        rig.rotate(key=certs.make_leaf(rig.ca).key_pem)  # key mismatch
        eventually(
            lambda: (
                value(get(base + "/metrics")[1], "certreload_rejected_total")
                == (rejected_before or 0) + 1
            ),
            "a rejection",
        )
        text = get(base + "/metrics")[1]
        assert value(text, "certreload_reloads_failed_total") == 0.0
        assert get(base + "/healthz")[0] == 200
        assert rig.server.served_fingerprint() == leaf.fingerprint_sha256
        good = rig.rotate()
        eventually(
            lambda: rig.server.served_fingerprint() == good.fingerprint_sha256,
            "the good set served",
        )
    finally:
        code, err = stop_daemon(proc)
    assert code == 0, err


def test_ready_after_a_first_cycle_that_found_the_server_unreachable(rig: Rig) -> None:
    """/readyz means 'a first cycle finished', not 'the server is fine': with nothing
    listening at --server-addr the first cycle is 'unreachable', and both probes answer 200
    (a startup probe must not hold back the PostgreSQL container certreload waits for).
    The failure shows where it belongs: the reachability gauge and the log line.
    """
    port = free_port()
    closed = free_port()
    proc = start_daemon(rig, "--listen", f"127.0.0.1:{port}", "--server-addr",
                        f"127.0.0.1:{closed}")  # fmt: skip
    try:
        eventually(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "/readyz 200")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        text = get(f"http://127.0.0.1:{port}/metrics")[1]
        assert value(text, "certreload_served_matches_files") == 0
        assert value(text, "certreload_checks_total", trigger="start") == 1
    finally:
        code, err = stop_daemon(proc)
    assert code == 0, err
    assert '"outcome": "unreachable"' in err


def test_health_follows_the_loop() -> None:
    """Alive until twice the interval plus the margin passes without a cycle; ready after one."""
    now = [1000.0]
    health = Health(interval=10, clock=lambda: now[0])
    assert health.alive
    assert not health.ready
    health.cycle_done()
    assert health.ready
    now[0] += 20 + 59
    assert health.alive
    now[0] += 2
    assert not health.alive
    health.cycle_done()
    assert health.alive


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, reachable by the postgres user."""
    folder = world_traversable_dir("certreload-notify-")
    path = str(folder / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)  # noqa: S103 - the daemon under test runs as another user
    sock.settimeout(WAIT)
    try:
        yield sock, path
    finally:
        sock.close()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def receive_until(sock: socket.socket, wanted: str) -> list[str]:
    """Messages up to and including the first that holds ``wanted``."""
    seen = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.splitlines():
            return seen


def test_notifier_without_socket_does_nothing() -> None:
    """No NOTIFY_SOCKET: every call is a quiet no-op; with one, a datagram arrives."""
    assert not Notifier({}).ready()
    assert Notifier({}).watchdog_interval is None
    assert (
        Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval
        == 2.0
    )
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_notify_protocol_on_a_real_socket(
    rig: Rig, notify_socket: tuple[socket.socket, str]
) -> None:
    """READY=1 after the first cycle, WATCHDOG=1, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1."""
    sock, path = notify_socket
    proc = start_daemon(rig, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        first = receive_until(sock, "READY=1")
        assert any("STATUS=last check:" in m for m in first)
        receive_until(sock, "WATCHDOG=1")
        receive_until(sock, "WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        around = receive_until(sock, "READY=1")
        assert any(m.startswith("RELOADING=1") and "MONOTONIC_USEC=" in m for m in around)
    finally:
        code, err = stop_daemon(proc)
    assert code == 0, err
    assert "STOPPING=1" in receive_until(sock, "STOPPING=1")[-1]
    assert '"trigger": "signal"' in err
