"""PgBouncer as a second target: a real PgBouncer (as postgres) in front of a real server.

PgBouncer's ``client_tls_*`` name the kubelet secret's files (0640, root:postgres, which
PgBouncer can read).  certreload sends ``RELOAD`` on the admin console and confirms by
reading what PgBouncer presents (``certreload.served.read_served``: PgBouncer speaks the
same SSLRequest).  The server is judged by ``openssl s_client`` as well.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certreload import pg, reconcile, settings
from certreload.served import Served
from certreload.settings import Address
from tests.issue6_helpers import (
    PgBouncer,
    Secret,
    daemon,
    events,
    http_get,
    matching,
    metric,
    postgres_dir,
    require_pg,
    run_certreload,
    served_sha,
    serves,
    wait_until,
    workspace,
)
from tests.support import certs
from tests.support.pgserver import PgServer, free_port

GAUGE = "certreload_pgbouncer_served_matches_files"


@dataclass
class Rig:
    """A secret, a server reading it, and PgBouncer presenting the same files."""

    base: Path
    secret: Secret
    server: PgServer
    bouncer: PgBouncer

    def args(self, *extra: str) -> list[str]:
        """Daemon flags with PgBouncer as a target."""
        return self.secret.daemon_args(
            self.server,
            "--pgbouncer-dsn", self.bouncer.admin_dsn,
            "--pgbouncer-addr", self.bouncer.addr,
            *extra,
        )  # fmt: skip

    def both_present(self, leaf: certs.Issued) -> bool:
        """Do the server and PgBouncer both present this leaf (each read directly)?"""
        return (
            served_sha(self.server.port) == leaf.fingerprint_sha256
            and self.bouncer.presented() == leaf.fingerprint_sha256
        )


@pytest.fixture
def rig() -> Iterator[Rig]:
    """Server and PgBouncer started on the secret's first generation."""
    require_pg()
    with workspace("certreload-pgbouncer-") as base:
        secret = Secret(base)
        first = secret.publish()
        p = secret.path
        server = PgServer(
            p / "tls.crt", p / "tls.key", p / "ca.crt", base_dir=postgres_dir(base / "pg")
        )
        bouncer: PgBouncer | None = None
        try:
            server.start()
            bouncer = PgBouncer(base / "pgbouncer", server, p / "tls.crt", p / "tls.key",
                                p / "ca.crt")  # fmt: skip
            bouncer.start()
            r = Rig(base, secret, server, bouncer)
            assert r.both_present(first)
            yield r
        finally:
            if bouncer is not None:
                bouncer.stop()
            server.cleanup()


@pytest.mark.pg
def test_three_rotations_in_a_row_reach_the_server_and_pgbouncer(rig: Rig) -> None:
    """Each of 3 kubelet rotations is reloaded on both targets and confirmed by what each
    presents; a verify-ca client through PgBouncer accepts the last one.
    """
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    with daemon(rig.args("--listen", f"127.0.0.1:{port}")) as d:
        start = d.wait_for("the first cycle", "server presents the files' certificate")
        assert start["pgbouncer_outcome"] == "unchanged"
        for turn in range(3):
            leaf = rig.secret.publish()
            event = d.wait_for(
                f"rotation {turn + 1}", "certificate reloaded", files_sha256=leaf.fingerprint_sha256
            )
            assert event["outcome"] == "reloaded"
            assert event["pgbouncer_outcome"] == "reloaded"
            assert "pgbouncer_error" not in event
            assert rig.both_present(leaf)
            assert serves(rig.server, leaf)  # openssl agrees about the server
            wait_until(lambda: metric(http_get(metrics)[1], GAUGE) == 1.0, "PgBouncer gauge 1")
        assert d.find(level="error") == []
        assert d.stop() == 0
    with psycopg.connect(
        host="127.0.0.1", port=rig.bouncer.port, dbname="postgres", user="postgres",
        sslmode="verify-ca", sslrootcert=str(rig.secret.path / "ca.crt"), connect_timeout=10,
    ) as conn:  # fmt: skip
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.pg
def test_without_the_pgbouncer_flags_pgbouncer_stays_stale(rig: Rig) -> None:
    """Control: PgBouncer does not pick up a rotation by itself; the server does (reloaded by
    a daemon without --pgbouncer-*).  Then --once with the flags RELOADs PgBouncer: exit 0.
    """
    old = rig.secret.leaf
    assert old is not None
    with daemon(rig.secret.daemon_args(rig.server)) as d:
        d.wait_for("the first cycle", "server presents the files' certificate")
        leaf = rig.secret.publish()
        event = d.wait_for(
            "the rotation", "certificate reloaded", files_sha256=leaf.fingerprint_sha256
        )
        assert "pgbouncer_outcome" not in event
        assert d.stop() == 0
    assert served_sha(rig.server.port) == leaf.fingerprint_sha256
    assert rig.bouncer.presented() == old.fingerprint_sha256

    once = run_certreload(["--once", "--log-format", "json", *rig.args()])
    assert once.returncode == 0, once.stderr
    lines = matching(events(once.stderr), "PgBouncer reloaded")
    assert len(lines) == 1
    assert lines[0]["outcome"] == "unchanged"
    assert lines[0]["pgbouncer_outcome"] == "reloaded"
    assert rig.both_present(leaf)


@pytest.mark.pg
def test_pgbouncer_reading_other_files_is_an_error_and_once_exits_1(rig: Rig) -> None:
    """PgBouncer's client_tls_cert_file/key_file name other files: the daemon logs a
    PgBouncer error (pgbouncer_outcome reload_failed, gauge 0) and --once exits 1; pointed
    back at the secret, --once exits 0 (the control).
    """
    other_leaf = certs.make_leaf(rig.secret.ca, cn="elsewhere", dns_sans=["elsewhere"])
    other = postgres_dir(rig.base / "elsewhere")
    cert, key, ca = certs.install_tls_files(
        certs.TlsFiles(other_leaf.cert_pem, other_leaf.key_pem, rig.secret.ca.cert_pem), other
    )
    rig.bouncer.repoint(cert, key, ca)
    wait_until(
        lambda: rig.bouncer.presented() == other_leaf.fingerprint_sha256,
        "PgBouncer on the other files",
    )
    port = free_port()
    with daemon(rig.args("--listen", f"127.0.0.1:{port}")) as d:
        failed = d.wait_for("the PgBouncer error", "PgBouncer not updated")
        assert failed["level"] == "error"
        assert failed["pgbouncer_outcome"] == "reload_failed"
        assert failed["outcome"] == "unchanged"  # the server itself is fine
        assert "client_tls_cert_file" in failed["pgbouncer_error"]
        d.signal(signal.SIGHUP)  # a second cycle: the first one's metrics are surely observed
        d.wait_for("the second PgBouncer error", "PgBouncer not updated", count=2)
        assert metric(http_get(f"http://127.0.0.1:{port}/metrics")[1], GAUGE) == 0.0
        assert d.running()
        assert d.stop() == 0
    assert rig.bouncer.presented() == other_leaf.fingerprint_sha256

    once = run_certreload(["--once", "--log-format", "json", *rig.args()])
    assert once.returncode == 1, once.stderr
    assert matching(events(once.stderr), "PgBouncer not updated", pgbouncer_outcome="reload_failed")

    p = rig.secret.path
    rig.bouncer.repoint(p / "tls.crt", p / "tls.key", p / "ca.crt")
    assert rig.secret.leaf is not None
    wait_until(lambda: rig.both_present(rig.secret.leaf), "PgBouncer back on the secret")  # type: ignore[arg-type]
    again = run_certreload(["--once", "--log-format", "json", *rig.args()])
    assert again.returncode == 0, again.stderr


PASSWORD = "PgBouncer-Hook-Must-Not-See-6"


@pytest.mark.pg
def test_hook_sees_neither_dsn_with_pgbouncer_as_a_target(rig: Rig) -> None:
    """With both DSNs given in the environment (each with a password), the hook that runs
    after a change confirmed on both targets sees neither variable nor the password; it does
    see the daemon's other variables (the control).
    """
    record = postgres_dir(rig.base / "hook") / "env.txt"
    argv = [
        "--dir", str(rig.secret.path), "--san", "cluster-1",
        "--server-addr", f"127.0.0.1:{rig.server.port}", "--pgbouncer-addr", rig.bouncer.addr,
        "--on-change", f"env > {record}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "CERTRELOAD_DSN": f"{rig.server.superuser_dsn()} password={PASSWORD}",
        "CERTRELOAD_PGBOUNCER_DSN": f"{rig.bouncer.admin_dsn} password={PASSWORD}",
        "PGPASSWORD": PASSWORD,  # libpq's own variable, as a DSN without password= uses
        "ISSUE6_MARKER": "inherited",
    }
    with daemon(argv, env) as d:
        d.wait_for("the first cycle", "server presents the files' certificate")
        leaf = rig.secret.publish()
        event = d.wait_for(
            "the rotation", "certificate reloaded", files_sha256=leaf.fingerprint_sha256
        )
        assert event["pgbouncer_outcome"] == "reloaded"
        text = record.read_text()
        names = {line.partition("=")[0] for line in text.splitlines()}
        assert "CERTRELOAD_DSN" not in names
        assert "CERTRELOAD_PGBOUNCER_DSN" not in names
        assert "PGPASSWORD" not in names
        assert PASSWORD not in text
        assert "ISSUE6_MARKER=inherited" in text.splitlines()
        assert f"CERTRELOAD_FINGERPRINT_SHA256={leaf.fingerprint_sha256}" in text.splitlines()
        assert d.stop() == 0


@pytest.mark.pg
def test_hook_runs_for_a_set_once_pgbouncer_catches_up(rig: Rig) -> None:
    """A rotation reaches the server while PgBouncer reads other files (no hook yet: the
    change is not confirmed on both targets).  Once PgBouncer presents the set too, the set
    is applied everywhere, so its hook must run (README: once per applied set).
    """
    other_leaf = certs.make_leaf(rig.secret.ca, cn="elsewhere", dns_sans=["elsewhere"])
    other = postgres_dir(rig.base / "elsewhere")
    cert, key, ca = certs.install_tls_files(
        certs.TlsFiles(other_leaf.cert_pem, other_leaf.key_pem, rig.secret.ca.cert_pem), other
    )
    rig.bouncer.repoint(cert, key, ca)
    wait_until(lambda: rig.bouncer.presented() == other_leaf.fingerprint_sha256, "repointed")
    record = postgres_dir(rig.base / "hook") / "env.txt"
    with daemon(rig.args("--on-change", f"env > {record}")) as d:
        d.wait_for("the first cycle", "PgBouncer not updated")
        leaf = rig.secret.publish()
        event = d.wait_for(
            "the rotation", "certificate reloaded", files_sha256=leaf.fingerprint_sha256
        )
        assert event["pgbouncer_outcome"] == "reload_failed"
        assert not record.exists()

        p = rig.secret.path
        rig.bouncer.repoint(p / "tls.crt", p / "tls.key", p / "ca.crt")
        wait_until(lambda: rig.both_present(leaf), "PgBouncer caught up")
        d.signal(signal.SIGHUP)
        caught_up = d.wait_for(
            "a cycle with both current", "server presents the files' certificate", trigger="signal"
        )
        assert caught_up["pgbouncer_outcome"] == "unchanged"
        assert record.exists(), "the hook never ran for a set both targets now present"
        assert f"CERTRELOAD_FINGERPRINT_SHA256={leaf.fingerprint_sha256}" in record.read_text()
        assert d.stop() == 0


# --------------------------------------------------------------------------- in-process


SERVER_PORT, BOUNCER_PORT = 15432, 16432


def test_a_superseded_server_reload_is_not_a_pgbouncer_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The files change again while the server reload is confirmed (outcome superseded: the
    next cycle takes the newer set).  PgBouncer is left to that next cycle rather than
    confirmed against the superseded leaf, which it may never present (that was reported as
    reload_failed, 'PgBouncer not updated', gauge 0).  Control: the next cycle brings both
    targets to the newer set.

    The race cannot be forced with real processes, so the driver seam is patched: a fake
    server and PgBouncer that, like the real ones, read whatever the files hold on reload.
    """
    secret = Secret(tmp_path)
    a = secret.publish(mode=0o600, postgres_group=False)
    presented = {SERVER_PORT: a.cert_der, BOUNCER_PORT: a.cert_der}
    pending: list[certs.Issued] = []  # a rotation that lands just as the server reloads
    load_time = [datetime.now(UTC)]  # the server loaded its files after they were written

    def files_leaf() -> bytes:
        return x509.load_pem_x509_certificate((secret.path / "tls.crt").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )

    def fake_read_served(address: Address, timeout: float = 5.0) -> Served:
        return Served(presented[address.port])

    def fake_reload(dsn: str | None) -> pg.ReloadFacts:
        facts = pg.ReloadFacts(load_time[0], "", "", "")
        while pending:
            secret.publish(pending.pop(0), mode=0o600, postgres_group=False)
        presented[SERVER_PORT] = files_leaf()  # the server read the files as they are now
        load_time[0] += timedelta(seconds=1)
        return facts

    def fake_pgbouncer_reload(dsn: str) -> None:
        presented[BOUNCER_PORT] = files_leaf()

    monkeypatch.setattr(reconcile, "read_served", fake_read_served)
    monkeypatch.setattr(pg, "reload", fake_reload)
    monkeypatch.setattr(pg, "pgbouncer_reload", fake_pgbouncer_reload)
    monkeypatch.setattr(pg, "conf_load_time", lambda dsn: load_time[0])
    s = settings.load(
        [
            "--dir", str(secret.path), "--san", "cluster-1", "--dsn", "host=/fake",
            "--server-addr", f"127.0.0.1:{SERVER_PORT}",
            "--pgbouncer-dsn", "host=/fake dbname=pgbouncer",
            "--pgbouncer-addr", f"127.0.0.1:{BOUNCER_PORT}",
        ],
        environ={},
    )  # fmt: skip
    r = reconcile.Reconciler(s)
    assert r.cycle("start").outcome is reconcile.Outcome.UNCHANGED

    b = secret.publish(mode=0o600, postgres_group=False)
    c = secret.new_leaf()
    pending.append(c)
    raced = r.cycle("watch")
    assert raced.outcome is reconcile.Outcome.SUPERSEDED
    assert raced.verdict.leaf is not None
    assert raced.verdict.leaf.fingerprint_sha256 == b.fingerprint_sha256
    assert raced.pgbouncer is None, raced.pgbouncer_error
    assert presented[BOUNCER_PORT] == a.cert_der  # not touched in the superseded cycle

    nxt = r.cycle("watch")
    assert nxt.verdict.leaf is not None
    assert nxt.verdict.leaf.fingerprint_sha256 == c.fingerprint_sha256
    assert nxt.outcome is reconcile.Outcome.RELOADED
    assert nxt.pgbouncer is reconcile.Outcome.RELOADED
    assert presented[BOUNCER_PORT] == presented[SERVER_PORT] == c.cert_der
