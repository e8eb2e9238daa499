"""Install mode (``--install-dir D``) against a real PostgreSQL and a 0644 kubelet secret.

The secret is mounted the kubelet's way at mode 0644 without an fsGroup (root:root 0644):
PostgreSQL refuses such a key.  certreload, running as postgres, copies each valid set into
D (key 0600, owned by postgres) in the kubelet's own layout, and the server reads D.  Every
wait polls for a logged event or for what the server presents (``openssl s_client``).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.issue6_helpers import (
    Secret,
    daemon,
    file_digests,
    http_get,
    postgres_dir,
    postgres_ids,
    require_pg,
    run_certreload,
    serves,
    sha,
    wait_until,
    workspace,
)
from tests.support import certs
from tests.support.pgserver import PgServer, PgServerError, free_port

pytestmark = pytest.mark.pg
GENERATION = re.compile(r"\.\.certreload-\d+")
REJECTED = "certificate set rejected; the server keeps its current certificate"


@dataclass
class Rig:
    """A 0644 secret, an install folder D owned by postgres, and a server configured on D."""

    base: Path
    secret: Secret
    install_dir: Path
    server: PgServer

    def args(self, *extra: str) -> list[str]:
        """The daemon's flags: the secret, the server, and --install-dir D."""
        return self.secret.daemon_args(self.server, "--install-dir", str(self.install_dir), *extra)

    def publish_0644(
        self,
        leaf: certs.Issued | None = None,
        *,
        key: bytes | None = None,
        cert_pem: bytes | None = None,
    ) -> certs.Issued:
        """A kubelet generation at mode 0644, root:root (no fsGroup)."""
        return self.secret.publish(
            leaf, key=key, cert_pem=cert_pem, mode=0o644, postgres_group=False
        )

    def generations(self) -> list[str]:
        """The ..certreload-* folders in D."""
        return sorted(p.name for p in self.install_dir.iterdir() if GENERATION.fullmatch(p.name))


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A fresh rig; the server is configured on D but not started."""
    require_pg()
    with workspace("certreload-install-") as base:
        secret = Secret(base)
        install_dir = postgres_dir(base / "installed")
        server = PgServer(
            install_dir / "tls.crt", install_dir / "tls.key", install_dir / "ca.crt",
            base_dir=postgres_dir(base / "pg"),
        )  # fmt: skip
        try:
            yield Rig(base, secret, install_dir, server)
        finally:
            server.cleanup()


def assert_installed(rig: Rig, leaf: certs.Issued) -> None:
    """D holds exactly this set, in the kubelet's layout, with the key 0600 owned by postgres."""
    d = rig.install_dir
    uid, _ = postgres_ids()
    target = os.readlink(d / "..data")
    assert GENERATION.fullmatch(target), target
    assert rig.generations() == [target]  # older generations are removed
    for name in ("tls.crt", "tls.key", "ca.crt"):
        assert os.readlink(d / name) == f"..data/{name}"
    key = (d / "tls.key").stat()
    assert key.st_mode & 0o777 == 0o600
    assert key.st_uid == uid
    assert file_digests(d) == {
        "tls.crt": sha(leaf.cert_pem),
        "tls.key": sha(leaf.key_pem),
        "ca.crt": sha(rig.secret.ca.cert_pem),
    }


def test_the_server_refuses_the_0644_secret_when_pointed_at_it_directly(rig: Rig) -> None:
    """Control for install mode: the 0644 root-owned key the kubelet mounts is refused by
    PostgreSQL itself, so the server cannot start on the secret's own files.
    """
    rig.publish_0644()
    direct = PgServer(
        rig.secret.path / "tls.crt", rig.secret.path / "tls.key", rig.secret.path / "ca.crt",
        base_dir=postgres_dir(rig.base / "pg-direct"),
    )  # fmt: skip
    try:
        with pytest.raises(PgServerError, match="group or world access"):
            direct.start()
    finally:
        direct.cleanup()


def test_installs_before_the_server_starts_and_the_server_starts_on_it(rig: Rig) -> None:
    """With the server down, the daemon logs 'unreachable' but installs the set; /readyz turns
    200; D has the kubelet layout, the key 0600 owned by postgres; then the server starts on
    D and presents the secret's leaf.
    """
    leaf = rig.publish_0644()
    assert not (rig.install_dir / "..data").exists()
    port = free_port()
    with daemon(rig.args("--listen", f"127.0.0.1:{port}")) as d:
        first = d.wait_for("the first cycle", "cycle failed", trigger="start")
        assert first["outcome"] == "unreachable"
        assert first["installed"] is True
        assert first["level"] == "error"
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "/readyz 200")
        assert_installed(rig, leaf)

        rig.server.start()
        wait_until(lambda: serves(rig.server, leaf), "the server started on the installed set")
        d.signal(signal.SIGHUP)
        seen = d.wait_for(
            "a cycle that finds the leaf served",
            "server presents the files' certificate",
            trigger="signal",
        )
        assert seen["outcome"] == "unchanged"
        assert seen["files_sha256"] == leaf.fingerprint_sha256
        assert d.stop() == 0


def test_three_kubelet_rotations_are_each_installed_and_served(rig: Rig) -> None:
    """Three 0644 rotations in a row: each is installed into D (one generation left) and
    presented by the server, which reads only D.
    """
    rig.publish_0644()
    port = free_port()
    with daemon(rig.args("--listen", f"127.0.0.1:{port}")) as d:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "installed")
        rig.server.start()
        for turn in range(3):
            leaf = rig.publish_0644()
            event = d.wait_for(
                f"rotation {turn + 1} reloaded",
                "certificate reloaded",
                files_sha256=leaf.fingerprint_sha256,
            )
            assert event["outcome"] == "reloaded"
            assert event["served_after_sha256"] == leaf.fingerprint_sha256
            assert event["installed"] is True
            assert serves(rig.server, leaf)  # openssl agrees
            assert_installed(rig, leaf)
        assert d.stop() == 0


def test_a_bad_set_leaves_the_install_dir_byte_identical(rig: Rig) -> None:
    """A key mismatch, then a truncated tls.crt: each rejected, D byte-identical (files,
    ..data target, folder listing), the server on its last good certificate even after a
    reload and a restart; a good rotation afterwards is installed and served (the control).
    """
    good = rig.publish_0644()
    with daemon(rig.args()) as d:
        d.wait_for("the first install", "cycle failed", outcome="unreachable", installed=True)
        rig.server.start()
        wait_until(lambda: serves(rig.server, good), "the server on the installed set")
        before = (
            file_digests(rig.install_dir),
            os.readlink(rig.install_dir / "..data"),
            sorted(os.listdir(rig.install_dir)),
        )
        other = rig.secret.new_leaf()
        rig.publish_0644(good, key=other.key_pem)  # the key of another certificate
        mismatch = d.wait_for("the key mismatch rejected", REJECTED, count=1)
        assert mismatch["installed"] is False
        assert any("does not belong to the certificate" in p for p in mismatch["problems"])
        rig.publish_0644(good, cert_pem=certs.truncated(good.cert_pem))
        d.wait_for("the truncated certificate rejected", REJECTED, count=2)
        after = (
            file_digests(rig.install_dir),
            os.readlink(rig.install_dir / "..data"),
            sorted(os.listdir(rig.install_dir)),
        )
        assert after == before
        rig.server.reload_and_wait()
        assert serves(rig.server, good)
        rig.server.restart()  # a restart (or failover) still finds a good set in D
        assert serves(rig.server, good)

        fixed = rig.publish_0644()
        d.wait_for("the good set after the bad ones", "certificate reloaded",
                   files_sha256=fixed.fingerprint_sha256)  # fmt: skip
        assert serves(rig.server, fixed)
        assert_installed(rig, fixed)
        assert d.stop() == 0


def test_readyz_waits_for_a_valid_set_in_install_mode(rig: Rig) -> None:
    """A rejected first set installs nothing: /readyz 503 while /healthz is 200 and D has no
    ..data; once a valid set arrives it is installed and /readyz turns 200.
    """
    good = rig.secret.new_leaf()
    rig.publish_0644(good, key=rig.secret.new_leaf().key_pem)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with daemon(rig.args("--listen", f"127.0.0.1:{port}")) as d:
        d.wait_for("the first set rejected", REJECTED)
        assert http_get(f"{base}/healthz")[0] == 200
        assert http_get(f"{base}/readyz")[0] == 503
        assert not (rig.install_dir / "..data").exists()
        rig.publish_0644(good)
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, "/readyz after a valid set")
        assert_installed(rig, good)
        assert d.stop() == 0


def test_check_with_install_dir_accepts_the_0644_source_key(rig: Rig) -> None:
    """Plain --check refuses the 0644 root-owned key (key-mode, CRITICAL); with --install-dir
    the same files are OK, since the server reads the 0600 copy.
    """
    rig.publish_0644()
    flags = [
        "--check",
        "--dir",
        str(rig.secret.path),
        "--san",
        "cluster-1",
        "--server-addr",
        "none",
    ]
    plain = run_certreload(flags)
    assert plain.returncode == 2, plain.stdout
    assert plain.stdout.startswith("CERTRELOAD CRITICAL")
    assert any(
        line.startswith("problem:") and "tls.key" in line and "0644" in line
        for line in plain.stdout.splitlines()
    ), plain.stdout
    plain_report = json.loads(run_certreload([*flags, "--json"]).stdout)
    assert [p["code"] for p in plain_report["problems"]] == ["key-mode"]

    installing = run_certreload([*flags, "--install-dir", str(rig.install_dir)])
    assert installing.returncode == 0, installing.stdout
    assert installing.stdout.startswith("CERTRELOAD OK")
    assert "problem:" not in installing.stdout
    report = json.loads(
        run_certreload([*flags, "--install-dir", str(rig.install_dir), "--json"]).stdout
    )
    assert report["problems"] == []
    assert report["valid"] is True


def test_readyz_after_a_restart_with_a_bad_secret_and_a_good_set_installed(rig: Rig) -> None:
    """certreload restarts (a sidecar container restart keeps D) while the secret holds a bad
    set: D still holds the last valid set, byte-identical, and the server can start on it.
    /readyz means 'a valid set is installed' (README), so it must answer 200 here; otherwise
    a native sidecar's startupProbe fails and the sidecar is restarted over and over.
    Control: the server does start on D.
    """
    good = rig.publish_0644()
    first = run_certreload(["--once", "--log-format", "json", *rig.args()])
    assert first.returncode == 3, first.stderr  # the server is down, but the set is installed
    assert_installed(rig, good)
    rig.publish_0644(good, key=rig.secret.new_leaf().key_pem)
    port = free_port()
    with daemon(rig.args("--listen", f"127.0.0.1:{port}")) as d:
        d.wait_for("the bad set rejected", REJECTED)
        assert_installed(rig, good)
        rig.server.start()
        assert serves(rig.server, good)  # the control: D is a good set to start on
        status = http_get(f"http://127.0.0.1:{port}/readyz")[0]
        assert status == 200, "/readyz says nothing valid is installed; D holds a valid set"
        assert d.stop() == 0
