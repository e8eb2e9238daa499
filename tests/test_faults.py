"""The daemon against a real server in trouble: every failure keeps the last good
certificate served, the daemon up, and says what is wrong.

Each test runs certreload as the postgres user (``--once`` or the foreground daemon) beside
its own PostgreSQL, with the secret updated the kubelet's (or certbot's) way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import certs
from tests.support.kubelet import SecretVolume
from tests.support.pgserver import PgServer, pg_binaries_missing, world_traversable_dir
from tests.support.wait import eventually
from tests.test_metrics_notify import CERTRELOAD, as_postgres

pytestmark = pytest.mark.pg
WAIT = 30.0
PASSWORD = "Sup3r-Secret-DSN-Pw"


def events(log: str) -> list[dict[str, object]]:
    """The JSON log lines."""
    found = []
    for line in log.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


class Rig:
    """A server on a kubelet-style secret, optionally the CA in a second secret."""

    def __init__(self, base: Path, *, split_ca: bool = False) -> None:
        self.base = base
        self.split_ca = split_ca
        self.volume = SecretVolume(base / "secret")
        self.ca_volume = SecretVolume(base / "ca-secret") if split_ca else None
        self.ca = certs.make_root_ca()
        self.gid = 0
        if os.geteuid() == 0:
            import pwd

            self.gid = pwd.getpwnam("postgres").pw_gid
        self.current = self.publish()
        self.server = PgServer(self.cert, self.key, self.ca_path)
        self.daemon: subprocess.Popen[str] | None = None

    @property
    def cert(self) -> Path:
        return self.volume.path / "tls.crt"

    @property
    def key(self) -> Path:
        return self.volume.path / "tls.key"

    @property
    def ca_path(self) -> Path:
        return (self.ca_volume.path if self.ca_volume else self.volume.path) / "ca.crt"

    def publish(self, leaf: certs.Issued | None = None, key: bytes | None = None,
                ca: certs.Issued | None = None) -> certs.Issued:  # fmt: skip
        """Publish a set (a new valid leaf unless given), kubelet-style."""
        ca = ca or self.ca
        leaf = leaf or certs.make_leaf(ca, cn="cluster-1", dns_sans=["cluster-1"])
        files = {"tls.crt": leaf.cert_pem, "tls.key": key or leaf.key_pem}
        if self.ca_volume is not None:
            self.ca_volume.write({"ca.crt": ca.cert_pem}, mode=0o644, gid=self.gid)
        else:
            files["ca.crt"] = ca.cert_pem
        self.volume.write(files, mode=0o640, gid=self.gid)
        return leaf

    def argv(self, *extra: str, dsn: str | None = None) -> list[str]:
        """certreload's command line for this rig."""
        return as_postgres(
            [CERTRELOAD, "--cert", str(self.cert), "--key", str(self.key),
             "--ca", str(self.ca_path), "--san", "cluster-1",
             "--dsn", dsn or self.server.superuser_dsn(),
             "--server-addr", f"127.0.0.1:{self.server.port}", "--log-format", "json", *extra]
        )  # fmt: skip

    def once(self, *extra: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
        """certreload --once."""
        return subprocess.run(
            self.argv("--once", *extra, dsn=dsn), capture_output=True, text=True, check=False
        )

    def start(self, *extra: str) -> None:
        """The daemon in the foreground."""
        self.daemon = subprocess.Popen(
            self.argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stop(self) -> tuple[int, str]:
        """SIGTERM; exit code and log."""
        assert self.daemon is not None
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
        _, err = self.daemon.communicate(timeout=WAIT)
        return self.daemon.returncode, err

    def serves(self, leaf: certs.Issued) -> bool:
        """Does the server present this leaf?"""
        return self.server.served_fingerprint() == leaf.fingerprint_sha256


def make_rig(split_ca: bool = False) -> Iterator[Rig]:
    """A rig; everything stopped and removed afterwards."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    base = world_traversable_dir("certreload-faults-")
    rig = Rig(base, split_ca=split_ca)
    try:
        yield rig
    finally:
        if rig.daemon is not None and rig.daemon.poll() is None:
            rig.daemon.kill()
            rig.daemon.communicate()
        rig.server.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A rig with the CA in the same secret."""
    yield from make_rig()


@pytest.fixture
def split_rig() -> Iterator[Rig]:
    """A rig with the CA in a second secret (the CPO docs' second option)."""
    yield from make_rig(split_ca=True)


def test_once_exit_codes_served_and_reloaded(rig: Rig) -> None:
    """--once: 0 when already served; after a rotation 0 again, now by reloading."""
    rig.server.start()
    first = rig.once()
    assert first.returncode == 0, first.stderr
    assert any(e.get("outcome") == "unchanged" for e in events(first.stderr))
    leaf = rig.publish()
    second = rig.once()
    assert second.returncode == 0, second.stderr
    assert any(e.get("outcome") == "reloaded" for e in events(second.stderr))
    assert rig.serves(leaf)


def test_once_exit_2_for_a_rejected_set(rig: Rig) -> None:
    """A key mismatch: --once exits 2 and names tls.key; the server keeps its certificate."""
    rig.server.start()
    rig.publish(key=certs.make_leaf(rig.ca).key_pem)
    result = rig.once()
    assert result.returncode == 2
    rejected = [e for e in events(result.stderr) if e.get("outcome") == "rejected"]
    assert rejected
    assert rejected[0]["level"] == "error"
    assert any("tls.key" in str(p) for p in rejected[0]["problems"])  # type: ignore[attr-defined]
    assert rig.serves(rig.current)


def test_permission_denied_exits_3_and_says_how_to_grant(rig: Rig) -> None:
    """A role without EXECUTE on pg_reload_conf(): exit 3, 'permission', the GRANT; granted: 0."""
    rig.server.start()
    with rig.server.connect() as conn:
        conn.execute(f"CREATE ROLE certreload LOGIN PASSWORD '{PASSWORD}'")
    dsn = (f"host=127.0.0.1 port={rig.server.port} dbname=postgres user=certreload "
           f"password={PASSWORD} sslmode=disable")  # fmt: skip
    leaf = rig.publish()
    denied = rig.once(dsn=dsn)
    assert denied.returncode == 3
    assert "permission" in denied.stderr
    assert "GRANT EXECUTE ON FUNCTION pg_reload_conf()" in denied.stderr
    assert PASSWORD not in denied.stderr + denied.stdout
    assert not rig.serves(leaf)
    with rig.server.connect() as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO certreload")
    granted = rig.once(dsn=dsn)
    assert granted.returncode == 0, granted.stderr
    assert rig.serves(leaf)
    assert PASSWORD not in granted.stderr


def test_server_reading_other_files_exits_1_and_says_so(rig: Rig) -> None:
    """The server configured with other files: --once exits 1 naming ssl_cert_file."""
    other = rig.base / "other"
    leaf = certs.make_leaf(rig.ca, cn="cluster-1", dns_sans=["cluster-1"])
    other_files = certs.TlsFiles(leaf.cert_pem, leaf.key_pem, rig.ca.cert_pem)
    cert, key, ca = certs.install_tls_files(other_files, other)
    rig.server.start()
    rig.server.set_ssl_files(cert, key, ca)
    rig.server.reload_and_wait()
    result = rig.once()
    assert result.returncode == 1
    failed = [e for e in events(result.stderr) if e.get("outcome") == "reload_failed"]
    assert failed
    assert str(cert) in str(failed[0]["error"])
    rig.server.set_ssl_files(rig.cert, rig.key, rig.ca_path)
    rig.server.reload_and_wait()
    assert rig.once().returncode == 0


def test_server_down_at_start_then_up(rig: Rig) -> None:
    """Started while the server is down: it keeps running, and serves once the server is up."""
    rig.start()
    time.sleep(1.5)
    assert rig.daemon is not None
    assert rig.daemon.poll() is None
    rig.server.start()
    leaf = rig.publish()
    eventually(lambda: rig.serves(leaf), "the new set served after the server came up")
    code, err = rig.stop()
    assert code == 0, err
    assert any(e.get("outcome") == "unreachable" for e in events(err))


def test_server_stopped_rotated_started(rig: Rig) -> None:
    """Stop the server, rotate, start it: it loads the files itself, the daemon carries on."""
    rig.server.start()
    rig.start()
    eventually(lambda: rig.serves(rig.current), "the first set")
    rig.server.stop()
    leaf = rig.publish()
    time.sleep(1.0)
    rig.server.start()
    eventually(lambda: rig.serves(leaf), "the new set after the restart")
    later = rig.publish()
    eventually(lambda: rig.serves(later), "a rotation after the restart")
    code, err = rig.stop()
    assert code == 0, err


def test_ca_in_a_second_folder(split_rig: Rig) -> None:
    """tls.crt/tls.key in one secret, ca.crt in another: rotations of both are served."""
    rig = split_rig
    rig.server.start()
    rig.start()
    leaf = rig.publish()
    eventually(lambda: rig.serves(leaf), "a leaf rotation")
    new_ca = certs.make_root_ca(cn="second root")
    rotated = rig.publish(
        certs.make_leaf(new_ca, cn="cluster-1", dns_sans=["cluster-1"]), ca=new_ca
    )
    eventually(lambda: rig.serves(rotated), "a CA and leaf rotation across two folders")
    code, err = rig.stop()
    assert code == 0, err


def test_certbot_style_non_atomic_update_is_served_not_rejected(rig: Rig) -> None:
    """live/ links switched one by one: the set is served, never reported rejected."""
    live, archive = rig.base / "live", rig.base / "archive"
    from tests.support.kubelet import certbot_style_update

    leaf = rig.current
    files = {"cert.pem": leaf.cert_pem, "privkey.pem": leaf.key_pem, "chain.pem": rig.ca.cert_pem}
    certbot_style_update(live, archive, files, pause=0.0, modes={"privkey.pem": 0o600})
    subprocess.run(["chown", "-R", "postgres:postgres", str(live), str(archive)], check=True)
    rig.server.start()
    rig.server.set_ssl_files(live / "cert.pem", live / "privkey.pem", live / "chain.pem")
    rig.server.reload_and_wait()
    argv = as_postgres(
        [CERTRELOAD, "--cert", str(live / "cert.pem"), "--key", str(live / "privkey.pem"),
         "--ca", str(live / "chain.pem"), "--san", "cluster-1", "--dsn", rig.server.superuser_dsn(),
         "--server-addr", f"127.0.0.1:{rig.server.port}", "--log-format", "json"]
    )  # fmt: skip
    rig.daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    for _ in range(3):
        new = certs.make_leaf(rig.ca, cn="cluster-1", dns_sans=["cluster-1"])
        files = {"cert.pem": new.cert_pem, "privkey.pem": new.key_pem, "chain.pem": rig.ca.cert_pem}
        certbot_style_update(live, archive, files, pause=0.2, modes={"privkey.pem": 0o600})
        subprocess.run(["chown", "-R", "postgres:postgres", str(live), str(archive)], check=True)
        eventually(lambda new=new: rig.serves(new), "a certbot renewal served")  # type: ignore[misc]
    code, err = rig.stop()
    assert code == 0, err
    assert not [e for e in events(err) if e.get("level") == "error"], err


def test_sigterm_exits_0_and_sighup_runs_a_cycle(rig: Rig) -> None:
    """SIGHUP: a cycle with trigger 'signal'; SIGTERM: exit 0 and 'stopped'."""
    from tests.support.pgserver import free_port
    from tests.test_metrics_notify import get

    rig.server.start()
    port = free_port()
    rig.start("--listen", f"127.0.0.1:{port}")
    # the first cycle has run, so the signal handlers are in place
    eventually(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "the first cycle")
    assert rig.daemon is not None
    rig.daemon.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    code, err = rig.stop()
    assert code == 0
    assert any(e.get("trigger") == "signal" for e in events(err))
    assert events(err)[-1]["event"] == "stopped"
