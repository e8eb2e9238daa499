"""What no other reloader does: install mode, PgBouncer, the hook, mount and CA-rotation checks.

Against a real PostgreSQL, a real PgBouncer, real folders (and a real bind mount where the
machine allows it) and real certificates; certreload runs as the postgres user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certreload.mounts import diagnose, mount_points
from certreload.served import ServedError, read_served
from certreload.settings import Address
from tests.support import certs
from tests.support.pgserver import free_port
from tests.support.wait import eventually
from tests.test_faults import Rig, events, make_rig
from tests.test_metrics_notify import CERTRELOAD, as_postgres, get, value

pytestmark = pytest.mark.pg
WAIT = 30.0


def postgres_ids() -> tuple[int, int]:
    """The postgres user's uid and gid."""
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A server on a kubelet-style secret (see test_faults)."""
    yield from make_rig()


def served_at(port: int) -> str | None:
    """What a server (PostgreSQL or PgBouncer) presents, or None."""
    try:
        return read_served(Address("127.0.0.1", port), timeout=2).fingerprint_sha256
    except ServedError:
        return None


# --------------------------------------------------------------------------- install mode


def test_install_mode_with_a_0644_secret(rig: Rig) -> None:
    """Secret at 0644 (PostgreSQL would refuse the key): installed before the server starts,
    key 0600 owned by postgres; the server starts on it; 3 rotations served; a bad set leaves
    the installed files byte-identical and the server on its last good certificate.
    """
    uid, gid = postgres_ids()
    rig.volume.write(
        {
            "tls.crt": rig.current.cert_pem,
            "tls.key": rig.current.key_pem,
            "ca.crt": rig.ca.cert_pem,
        },
        mode=0o644,
    )
    target = rig.base / "installed"
    target.mkdir()
    os.chown(target, uid, gid)
    rig.server.ssl_cert_file = target / "tls.crt"
    rig.server.ssl_key_file = target / "tls.key"
    rig.server.ssl_ca_file = target / "ca.crt"
    port = free_port()
    rig.start("--install-dir", str(target), "--listen", f"127.0.0.1:{port}")
    eventually(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "/readyz after install")
    key = target / "tls.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.stat().st_uid == uid
    assert os.readlink(target / "..data").startswith("..certreload-")
    assert (target / "tls.crt").read_bytes() == rig.current.cert_pem
    rig.server.start()
    eventually(lambda: rig.serves(rig.current), "the server started on the installed set")
    for _ in range(3):
        leaf = certs.make_leaf(rig.ca, cn="cluster-1", dns_sans=["cluster-1"])
        rig.volume.write(
            {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": rig.ca.cert_pem},
            mode=0o644,
        )
        eventually(lambda leaf=leaf: rig.serves(leaf), "an installed rotation served")  # type: ignore[misc]
    before = {n: (target / n).read_bytes() for n in ("tls.crt", "tls.key", "ca.crt")}
    generation = os.readlink(target / "..data")
    rig.volume.write(
        {
            "tls.crt": certs.make_leaf(rig.ca).cert_pem,
            "tls.key": leaf.key_pem,
            "ca.crt": rig.ca.cert_pem,
        },
        mode=0o644,
    )
    time.sleep(2.0)
    assert {n: (target / n).read_bytes() for n in before} == before
    assert os.readlink(target / "..data") == generation
    assert rig.serves(leaf)
    code, err = rig.stop()
    assert code == 0, err
    assert any(e.get("outcome") == "rejected" and e.get("level") == "error" for e in events(err))


def test_check_knows_install_mode(rig: Rig) -> None:
    """--check: a 0644 source key is a problem, except with --install-dir (the copy is 0600)."""
    rig.volume.write(
        {
            "tls.crt": rig.current.cert_pem,
            "tls.key": rig.current.key_pem,
            "ca.crt": rig.ca.cert_pem,
        },
        mode=0o644,
    )
    base = [
        CERTRELOAD,
        "--check",
        "--dir",
        str(rig.volume.path),
        "--san",
        "cluster-1",
        "--server-addr",
        "none",
    ]
    plain = subprocess.run(as_postgres(base), capture_output=True, text=True, check=False)
    assert plain.returncode == 2
    assert "0644" in plain.stdout
    installing = subprocess.run(
        as_postgres([*base, "--install-dir", str(rig.base / "x")]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert installing.returncode == 0, installing.stdout


# --------------------------------------------------------------------------- PgBouncer


@pytest.fixture
def pgbouncer(rig: Rig) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """A real PgBouncer (as postgres) presenting the secret's files to its clients."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        pytest.skip("pgbouncer is not installed")
    rig.server.start()
    folder = rig.base / "pgbouncer"
    folder.mkdir()
    uid, gid = postgres_ids()
    os.chown(folder, uid, gid)
    port = free_port()
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    secret = rig.volume.path
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
postgres = host=127.0.0.1 port={rig.server.port} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {folder}
auth_type = trust
auth_file = {folder}/userlist.txt
admin_users = postgres
client_tls_sslmode = allow
client_tls_cert_file = {secret}/tls.crt
client_tls_key_file = {secret}/tls.key
client_tls_ca_file = {secret}/ca.crt
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
    )
    proc = subprocess.Popen(as_postgres([binary, str(folder / "pgbouncer.ini")]))
    eventually(lambda: served_at(port) is not None, "PgBouncer up with TLS")
    try:
        yield port, folder, proc
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT)


def test_pgbouncer_rotations_reach_both(
    rig: Rig, pgbouncer: tuple[int, Path, subprocess.Popen[bytes]]
) -> None:
    """3 rotations in a row, each confirmed by what the server and PgBouncer present."""
    port, folder, _ = pgbouncer
    dsn = f"host={folder} port={port} dbname=pgbouncer user=postgres"
    rig.start("--pgbouncer-dsn", dsn, "--pgbouncer-addr", f"127.0.0.1:{port}")
    eventually(lambda: rig.serves(rig.current), "started")
    for _ in range(3):
        leaf = rig.publish()
        eventually(lambda leaf=leaf: rig.serves(leaf), "the server")  # type: ignore[misc]
        eventually(lambda leaf=leaf: served_at(port) == leaf.fingerprint_sha256, "PgBouncer")  # type: ignore[misc]
    code, err = rig.stop()
    assert code == 0, err
    assert sum(1 for e in events(err) if e.get("pgbouncer_outcome") == "reloaded") >= 3


def test_pgbouncer_reading_other_files_fails_once_with_1(
    rig: Rig, pgbouncer: tuple[int, Path, subprocess.Popen[bytes]]
) -> None:
    """PgBouncer configured with other files: RELOAD cannot make it current; --once exits 1."""
    port, folder, proc = pgbouncer
    other = rig.base / "other-tls"
    leaf = certs.make_leaf(rig.ca, cn="other")
    certs.install_tls_files(certs.TlsFiles(leaf.cert_pem, leaf.key_pem, rig.ca.cert_pem), other)
    ini = folder / "pgbouncer.ini"
    ini.write_text(ini.read_text().replace(str(rig.volume.path), str(other)))
    proc.send_signal(signal.SIGHUP)  # PgBouncer re-reads its ini: it now presents the other files
    eventually(lambda: served_at(port) == leaf.fingerprint_sha256, "PgBouncer on the other files")
    dsn = f"host={folder} port={port} dbname=pgbouncer user=postgres"
    result = rig.once("--pgbouncer-dsn", dsn, "--pgbouncer-addr", f"127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert any(e.get("pgbouncer_outcome") == "reload_failed" for e in events(result.stderr))
    assert "client_tls_cert_file" in result.stderr
    ini.write_text(ini.read_text().replace(str(other), str(rig.volume.path)))
    again = rig.once("--pgbouncer-dsn", dsn, "--pgbouncer-addr", f"127.0.0.1:{port}")
    assert again.returncode == 0, again.stderr


# --------------------------------------------------------------------------- the hook


def test_on_change_hook(rig: Rig) -> None:
    """Runs once per confirmed change with the new fingerprint and notAfter, never with the DSN;
    a failing or hanging hook is logged and undoes nothing.
    """
    rig.server.start()
    out = rig.base / "hook"
    out.mkdir()
    out.chmod(0o777)  # the daemon under test runs as postgres
    record = out / "env.txt"
    rig.start("--on-change", f"env >> {record}; echo --- >> {record}")
    eventually(lambda: rig.serves(rig.current), "started")
    time.sleep(0.5)
    assert not record.exists()  # nothing changed: the hook did not run
    leaf = rig.publish()
    eventually(lambda: record.exists() and "---" in record.read_text(), "the hook ran")
    text = record.read_text()
    assert f"CERTRELOAD_FINGERPRINT_SHA256={leaf.fingerprint_sha256}" in text
    assert f"CERTRELOAD_NOT_AFTER={leaf.cert.not_valid_after_utc.isoformat()}" in text
    assert "CERTRELOAD_DSN" not in text
    rig.publish(key=certs.make_leaf(rig.ca).key_pem)  # a rejected set: no hook
    time.sleep(2.0)
    assert record.read_text().count("---") == 1
    code, err = rig.stop()
    assert code == 0, err

    for hook, words in (("exit 3", "exited 3"), ("sleep 30", "did not finish")):
        rig.start("--on-change", hook, "--on-change-timeout", "1")
        current = leaf
        eventually(lambda current=current: rig.serves(current), "restarted")  # type: ignore[misc]
        newer = rig.publish()
        eventually(lambda newer=newer: rig.serves(newer), "served despite the hook")  # type: ignore[misc]
        time.sleep(2.0)
        leaf = rig.publish()
        eventually(lambda leaf=leaf: rig.serves(leaf), "the next rotation too")  # type: ignore[misc]
        code, err = rig.stop()
        assert code == 0, err
        failures = [
            e for e in events(err) if str(e.get("event", "")).startswith("--on-change failed")
        ]
        assert failures
        assert failures[0]["level"] == "error"
        assert words in str(failures[0]["error"])


# --------------------------------------------------------------------------- mounts


def test_mount_points_undo_escapes() -> None:
    """mountinfo escapes a space as \\040; the parser undoes it."""
    text = (
        "36 35 98:0 /x /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
        "37 35 98:0 /y /etc/tls/tls.crt rw - ext4 /dev/sda rw\n"
    )
    assert mount_points(text) == {"/mnt/with space", "/etc/tls/tls.crt"}


def test_diagnose_subpath_and_non_atomic(tmp_path: Path) -> None:
    """A file that is a mount point: subpath-mount; a plain folder: not-atomic; kubelet: neither."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tls.crt").write_text("x")
    mountinfo = f"1 1 0:1 / {plain / 'tls.crt'} rw - ext4 /dev/x rw\n"
    codes = {f.code for f in diagnose([plain / "tls.crt"], mountinfo)}
    assert codes == {"subpath-mount", "not-atomic"}
    kubelet = tmp_path / "kubelet"
    from tests.support.kubelet import SecretVolume

    SecretVolume(kubelet).write({"tls.crt": b"x"})
    assert diagnose([kubelet / "tls.crt"], "") == []


def test_a_real_bind_mount_makes_check_warn(rig: Rig) -> None:
    """mount --bind of tls.crt over a file (a subPath mount): --check exits 1 and says so."""
    flat = rig.base / "flat"
    certs.install_tls_files(
        certs.TlsFiles(rig.current.cert_pem, rig.current.key_pem, rig.ca.cert_pem), flat
    )
    argv = as_postgres(
        [CERTRELOAD, "--check", "--dir", str(flat), "--san", "cluster-1", "--server-addr", "none"]
    )
    control = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert control.returncode == 0, control.stdout
    assert "not-atomic" not in control.stdout  # a note, worded for people
    assert "no ..data" in control.stdout
    mounted = subprocess.run(
        ["mount", "--bind", str(rig.volume.path / "tls.crt"), str(flat / "tls.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"this sandbox cannot bind-mount: {mounted.stderr.strip()}")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        subprocess.run(["umount", str(flat / "tls.crt")], check=False)
    assert result.returncode == 1, result.stdout
    assert "subPath" in result.stdout.splitlines()[0]


# --------------------------------------------------------------------------- CA rotation


def test_ca_rotation_hazard_is_said(rig: Rig) -> None:
    """A leaf from a new CA with ca.crt holding only the new CA: warning and gauge 0.
    The safe order (ca.crt with both CAs first, then the new leaf): no warning, gauge 1.
    """
    rig.server.start()
    port = free_port()
    rig.start("--listen", f"127.0.0.1:{port}")
    metrics = f"http://127.0.0.1:{port}/metrics"
    eventually(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "the first cycle")
    safe_ca = certs.make_root_ca(cn="safe new root")
    both = certs.concat(rig.ca.cert_pem, safe_ca.cert_pem)
    rig.volume.write(
        {"tls.crt": rig.current.cert_pem, "tls.key": rig.current.key_pem, "ca.crt": both},
        mode=0o640,
        gid=rig.gid,
    )
    eventually(
        lambda: value(get(metrics)[1], "certreload_reloads_total") == 1.0, "the CA bundle reloaded"
    )
    safe_leaf = certs.make_leaf(safe_ca, cn="cluster-1", dns_sans=["cluster-1"])
    rig.volume.write(
        {"tls.crt": safe_leaf.cert_pem, "tls.key": safe_leaf.key_pem, "ca.crt": both},
        mode=0o640,
        gid=rig.gid,
    )
    eventually(lambda: rig.serves(safe_leaf), "the safe rotation")
    time.sleep(0.3)
    assert value(get(metrics)[1], "certreload_leaf_trusted_by_previous_ca_bundle") == 1.0
    unsafe_ca = certs.make_root_ca(cn="unsafe new root")
    unsafe_leaf = certs.make_leaf(unsafe_ca, cn="cluster-1", dns_sans=["cluster-1"])
    rig.volume.write(
        {
            "tls.crt": unsafe_leaf.cert_pem,
            "tls.key": unsafe_leaf.key_pem,
            "ca.crt": unsafe_ca.cert_pem,
        },
        mode=0o640,
        gid=rig.gid,
    )
    eventually(lambda: rig.serves(unsafe_leaf), "the unsafe rotation")
    eventually(
        lambda: value(get(metrics)[1], "certreload_leaf_trusted_by_previous_ca_bundle") == 0.0,
        "gauge 0",
    )
    code, err = rig.stop()
    assert code == 0, err
    hazards = [e for e in events(err) if e.get("event") == "CA rotation hazard"]
    assert len(hazards) == 1
    assert hazards[0]["level"] == "warning"
    assert "unsafe new root" in str(hazards[0]["problem"])


def test_check_says_when_ca_crt_no_longer_trusts_the_served_leaf(rig: Rig) -> None:
    """Files: new CA only + new leaf, server still on the old leaf: 'CA rotation' in --check.
    Control: ca.crt with both CAs: no such line.
    """
    rig.server.start()
    new_ca = certs.make_root_ca(cn="next root")
    new_leaf = certs.make_leaf(new_ca, cn="cluster-1", dns_sans=["cluster-1"])
    pending = rig.base / "pending"
    argv = as_postgres([CERTRELOAD, "--check", "--dir", str(pending), "--san", "cluster-1",
                        "--server-addr", f"127.0.0.1:{rig.server.port}"])  # fmt: skip
    for bundle, said in (
        (new_ca.cert_pem, True),
        (certs.concat(rig.ca.cert_pem, new_ca.cert_pem), False),
    ):
        certs.install_tls_files(
            certs.TlsFiles(new_leaf.cert_pem, new_leaf.key_pem, bundle), pending
        )
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 1, result.stdout
        assert ("CA rotation" in result.stdout) is said, result.stdout


def test_json_report_carries_mounts_and_ca_rotation(rig: Rig) -> None:
    """--check --json has the mount findings and the CA note as fields."""
    flat = rig.base / "flat-json"
    certs.install_tls_files(
        certs.TlsFiles(rig.current.cert_pem, rig.current.key_pem, rig.ca.cert_pem), flat
    )
    argv = as_postgres(
        [
            CERTRELOAD,
            "--check",
            "--json",
            "--dir",
            str(flat),
            "--san",
            "cluster-1",
            "--server-addr",
            "none",
        ]
    )
    report = json.loads(subprocess.run(argv, capture_output=True, text=True, check=False).stdout)
    assert [m["code"] for m in report["mounts"]] == ["not-atomic"]
    assert report["ca_rotation"] is None
