"""``certreload --check`` against a live PostgreSQL: each exit code of the Nagios contract.

0 OK (valid and served), 1 WARNING (expiring, or valid but not yet served), 2 CRITICAL (not
valid), 3 UNKNOWN (server unreachable, usage error).  Each status has its own test, and
each runs the real CLI: in-process through ``main`` and, once, as a subprocess as postgres.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certreload.cli import main
from tests.support import certs
from tests.support.certs import TlsFiles, install_tls_files
from tests.support.pgserver import PgServer, as_server_user, free_port, world_traversable_dir

pytestmark = pytest.mark.pg
NAMES = ["cluster-1", "cluster-1-repl", "cluster-1-pooler", "cluster-1-pooler-repl"]


def run_check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """certreload --check in-process, as if the server's user ran it."""
    code = main(["--check", "--pg-user", "postgres", *args])
    out = capsys.readouterr().out
    assert out.strip(), "--check printed nothing"
    return code, out


@contextmanager
def serving(server: PgServer, live: Path, files: TlsFiles, good: TlsFiles) -> Iterator[None]:
    """Make the server serve ``files`` for the duration; then the known good set again."""
    install_tls_files(files, live)
    server.reload_and_wait()
    try:
        yield
    finally:
        install_tls_files(good, live)
        server.reload_and_wait()


def sans(*names: str) -> list[str]:
    """--san flags."""
    return [arg for name in names for arg in ("--san", name)]


@pytest.fixture(scope="module")
def pki() -> certs.Issued:
    """A CA for the variants."""
    return certs.make_root_ca()


def files_for(ca: certs.Issued, **leaf_options: object) -> tuple[TlsFiles, certs.Issued]:
    """A valid set for the docs' names, with leaf options."""
    leaf = certs.make_leaf(ca, cn="cluster-1", dns_sans=NAMES, **leaf_options)  # type: ignore[arg-type]
    return TlsFiles(leaf.cert_pem, leaf.key_pem, ca.cert_pem), leaf


def test_ok_when_valid_and_served(
    pg_server: PgServer, pg_live_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs' set, served by the server: 0 and an OK line naming the server."""
    code, out = run_check(
        ["--dir", str(pg_live_dir), *sans(*NAMES), "--server-addr", f"127.0.0.1:{pg_server.port}"],
        capsys,
    )
    assert code == 0, out
    assert out.startswith("CERTRELOAD OK - ")
    assert f"127.0.0.1:{pg_server.port}" in out


def test_warning_when_expiring_in_3_days(
    pg_server: PgServer,
    pg_live_dir: Path,
    good_tls_files: TlsFiles,
    pki: certs.Issued,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A served set 3 days from notAfter: 1; the same set with a 2-day window: 0."""
    files, _ = files_for(pki, not_after=datetime.now(UTC) + timedelta(days=3))
    with serving(pg_server, pg_live_dir, files, good_tls_files):
        args = [
            "--dir",
            str(pg_live_dir),
            *sans(*NAMES),
            "--server-addr",
            f"127.0.0.1:{pg_server.port}",
        ]
        code, out = run_check(args, capsys)
        assert code == 1, out
        assert out.startswith("CERTRELOAD WARNING - ")
        assert "expires" in out.splitlines()[0]
        code, out = run_check([*args, "--expiry-warning", "2"], capsys)
        assert code == 0, out


def test_warning_when_valid_files_are_not_served(
    pg_server: PgServer, tls_workspace: Path, pki: certs.Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid set the server does not present yet: 1, a reload is pending."""
    files, _ = files_for(pki)
    folder = tls_workspace / "pending"
    install_tls_files(files, folder)
    code, out = run_check(
        ["--dir", str(folder), *sans(*NAMES), "--server-addr", f"127.0.0.1:{pg_server.port}"],
        capsys,
    )
    assert code == 1, out
    assert "not yet served" in out.splitlines()[0]
    code, out = run_check(["--dir", str(folder), *sans(*NAMES), "--server-addr", "none"], capsys)
    assert code == 0, out


def test_critical_when_a_name_is_not_covered(
    pg_server: PgServer, pg_live_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name clients use that the certificate lacks: 2, naming the name and tls.crt."""
    args = ["--dir", str(pg_live_dir), "--server-addr", f"127.0.0.1:{pg_server.port}"]
    code, out = run_check([*args, *sans("cluster-1", "db.other.example")], capsys)
    assert code == 2, out
    first = out.splitlines()[0]
    assert first.startswith("CERTRELOAD CRITICAL - ")
    assert "db.other.example" in first
    assert "tls.crt" in first


def test_critical_on_key_mismatch(
    pg_server: PgServer, tls_workspace: Path, pki: certs.Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that belongs to another certificate: 2, naming tls.key; its own key: 1 (not served)."""
    files, _ = files_for(pki)
    other = certs.make_leaf(pki).key_pem
    folder = tls_workspace / "mismatch"
    install_tls_files(TlsFiles(files.cert, other, files.ca), folder)
    args = ["--dir", str(folder), *sans(*NAMES), "--server-addr", f"127.0.0.1:{pg_server.port}"]
    code, out = run_check(args, capsys)
    assert code == 2, out
    assert "tls.key" in out.splitlines()[0]
    assert "does not belong" in out
    install_tls_files(files, folder)
    assert run_check(args, capsys)[0] == 1


def test_unknown_when_the_server_is_down(
    pg_live_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the port: 3; with --server-addr none the same files are OK."""
    code, out = run_check(
        ["--dir", str(pg_live_dir), *sans(*NAMES), "--server-addr", f"127.0.0.1:{free_port()}"],
        capsys,
    )
    assert code == 3, out
    assert out.startswith("CERTRELOAD UNKNOWN - ")
    assert "cannot connect" in out
    assert (
        run_check(["--dir", str(pg_live_dir), *sans(*NAMES), "--server-addr", "none"], capsys)[0]
        == 0
    )


def test_unknown_on_an_unknown_flag(pg_live_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error under --check: 3 and one line, no traceback."""
    code, out = run_check(["--dir", str(pg_live_dir), "--no-such-flag"], capsys)
    assert code == 3
    assert out.startswith("CERTRELOAD UNKNOWN - ")
    assert "--no-such-flag" in out


def test_json_report_lists_every_problem(
    tls_workspace: Path, pki: certs.Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check --json: one JSON document with each problem's file, the leaf and the served part."""
    expired, _ = files_for(
        pki,
        not_before=datetime.now(UTC) - timedelta(days=9),
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    folder = tls_workspace / "json-bad"
    install_tls_files(TlsFiles(expired.cert, certs.make_leaf(pki).key_pem, expired.ca), folder)
    code, out = run_check(
        ["--json", "--dir", str(folder), *sans("nope.example"), "--server-addr", "none"], capsys
    )
    assert code == 2
    report = json.loads(out)
    assert report["status"] == "CRITICAL"
    assert {p["code"] for p in report["problems"]} >= {"key-mismatch", "expired", "name"}
    assert all(p["file"] and p["message"] and p["fix"] for p in report["problems"])
    assert report["leaf"]["not_after"]
    assert report["served"]["matches_files"] is False
    good, leaf = files_for(pki)
    install_tls_files(good, folder)
    code, out = run_check(
        ["--json", "--dir", str(folder), *sans(*NAMES), "--server-addr", "none"], capsys
    )
    assert code == 0
    assert json.loads(out)["leaf"]["fingerprint_sha256"] == leaf.fingerprint_sha256


def test_as_a_subprocess_run_by_postgres(pg_server: PgServer, pg_live_dir: Path) -> None:
    """The installed command, run as the server's user: OK, and the server log stays quiet."""
    before = pg_server.log_text()
    command = [
        str(Path(sys.prefix) / "bin" / "certreload"),
        "--check",
        "--dir",
        str(pg_live_dir),
        *sans(*NAMES),
        "--server-addr",
        f"127.0.0.1:{pg_server.port}",
    ]
    result = subprocess.run(as_server_user(command), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("CERTRELOAD OK - ")
    added = pg_server.log_text()[len(before) :]
    assert "could not" not in added
    assert "connection" not in added.lower()


def _in_user_namespace(argv: list[str]) -> list[str]:
    """``argv`` as postgres in a new user namespace mapping only postgres (as systemd's
    PrivateUsers=yes does for the service user): other users and groups read as overflow ids.
    """
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
            "unshare", "--user", "--map-current-user", "--", *argv]  # fmt: skip


def test_group_read_access_is_judged_as_the_kernel_sees_it_in_a_user_namespace(
    pki: certs.Issued,
) -> None:
    """tls.crt root:ssl-cert 0640, read by postgres through ssl-cert, as certreload runs under
    systemd's PrivateUsers=yes: there the file's group and the user's supplementary group both
    read as the overflow gid.  The server's user can read it, so --check says OK, whether the
    server's user is certreload's own or named with --pg-user.  Control: at 0600 postgres
    cannot read it, and --check says so (CRITICAL).
    """
    try:
        ssl_cert = grp.getgrnam("ssl-cert")
    except KeyError:
        pytest.skip("no ssl-cert group")
    if os.geteuid() != 0 or "postgres" not in ssl_cert.gr_mem or not shutil.which("unshare"):
        pytest.skip("needs root, unshare and postgres in the ssl-cert group")
    probe = subprocess.run(_in_user_namespace(["true"]), capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    folder = world_traversable_dir("certreload-userns-")
    try:
        files, _ = files_for(pki)
        (folder / "tls.crt").write_bytes(files.cert)
        (folder / "tls.key").write_bytes(files.key)
        (folder / "ca.crt").write_bytes(files.ca)
        os.chown(folder / "tls.crt", 0, ssl_cert.gr_gid)
        postgres = pwd.getpwnam("postgres")
        os.chown(folder / "tls.key", postgres.pw_uid, postgres.pw_gid)
        (folder / "tls.key").chmod(0o600)
        command = [str(Path(sys.prefix) / "bin" / "certreload"), "--check", "--dir", str(folder),
                   *sans(*NAMES), "--server-addr", "none"]  # fmt: skip
        for mode, expected in ((0o640, 0), (0o600, 2)):
            (folder / "tls.crt").chmod(mode)
            for extra in ([], ["--pg-user", "postgres"]):
                result = subprocess.run(
                    _in_user_namespace([*command, *extra]), capture_output=True, text=True,
                    check=False,
                )  # fmt: skip
                assert result.returncode == expected, (oct(mode), extra, result.stdout)
                if expected:
                    assert "tls.crt cannot be read: permission denied" in result.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)
