"""The --on-change hook, mount diagnostics and CA-rotation warnings, for real.

A real PostgreSQL on a kubelet-style secret; certreload runs as postgres; the hook writes
into a folder postgres owns; a real ``mount --bind`` of one file stands for a subPath mount.
Waits poll for logged events, never for a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from certreload.mounts import diagnose, mount_points
from tests.issue6_helpers import (
    SAN,
    Secret,
    client_ca_names,
    daemon,
    events,
    http_get,
    matching,
    metric,
    pid_alive,
    postgres_dir,
    rekeyed_ca,
    require_pg,
    run_certreload,
    serves,
    wait_until,
    workspace,
)
from tests.support import certs
from tests.support.certs import DocsSet
from tests.support.kubelet import SecretVolume
from tests.support.pgserver import PgServer, free_port

PRESENTS = "server presents the files' certificate"
RELOADED = "certificate reloaded"
REJECTED = "certificate set rejected; the server keeps its current certificate"
HOOK_FAILED = "--on-change failed; nothing is undone"
HAZARD = "CA rotation hazard"
TRUST_GAUGE = "certreload_leaf_trusted_by_previous_ca_bundle"
PASSWORD = "Hook-Must-Not-See-This-Pw-6"


@dataclass
class Rig:
    """A secret and a server reading it directly (0640 root:postgres, as with fsGroup)."""

    base: Path
    secret: Secret
    server: PgServer
    out: Path  # a folder the hook (running as postgres) may write in


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A started server on the secret's first generation."""
    require_pg()
    with workspace("certreload-hooks-") as base:
        secret = Secret(base)
        secret.publish()
        p = secret.path
        server = PgServer(
            p / "tls.crt", p / "tls.key", p / "ca.crt", base_dir=postgres_dir(base / "pg")
        )
        try:
            server.start()
            yield Rig(base, secret, server, postgres_dir(base / "out"))
        finally:
            server.cleanup()


def env_file(path: Path) -> dict[str, str]:
    """The NAME=VALUE lines ``env`` wrote."""
    found = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            found[name] = value
    return found


# --------------------------------------------------------------------------- the hook


@pytest.mark.pg
def test_hook_runs_after_a_confirmed_change_with_the_new_leaf_and_without_the_dsn(
    rig: Rig,
) -> None:
    """'env > FILE' runs once per confirmed change with the new leaf's fingerprint and
    notAfter, never with CERTRELOAD_DSN or its password (though it inherits the rest of the
    daemon's environment: the control); not for an unchanged cycle (start, SIGHUP) nor for a
    rejected set, while the next good set runs it again.
    """
    record = rig.out / "env.txt"
    argv = [
        "--dir", str(rig.secret.path), "--san", SAN,
        "--server-addr", f"127.0.0.1:{rig.server.port}", "--on-change", f"env > {record}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "CERTRELOAD_DSN": f"{rig.server.superuser_dsn()} password={PASSWORD}",
        "ISSUE6_MARKER": "inherited",
    }
    with daemon(argv, env) as d:
        d.wait_for("the first cycle", PRESENTS, trigger="start")
        d.signal(signal.SIGHUP)
        d.wait_for("an unchanged SIGHUP cycle", PRESENTS, trigger="signal")
        assert not record.exists()  # two unchanged cycles: no hook

        leaf = rig.secret.publish()
        d.wait_for("the rotation", RELOADED, files_sha256=leaf.fingerprint_sha256)
        seen = env_file(record)
        assert seen["CERTRELOAD_FINGERPRINT_SHA256"] == leaf.fingerprint_sha256
        assert seen["CERTRELOAD_NOT_AFTER"] == leaf.cert.not_valid_after_utc.isoformat()
        assert seen["CERTRELOAD_SERIAL"] == format(leaf.cert.serial_number, "x")
        assert seen["CERTRELOAD_CERT"] == str(rig.secret.path / "tls.crt")
        assert "CERTRELOAD_DSN" not in seen
        assert PASSWORD not in record.read_text()
        assert seen["ISSUE6_MARKER"] == "inherited"  # the control: the environment is passed

        record.unlink()
        rig.secret.publish(leaf, key=rig.secret.new_leaf().key_pem)
        d.wait_for("the bad set rejected", REJECTED)
        assert not record.exists()
        assert serves(rig.server, leaf)

        nxt = rig.secret.publish()
        d.wait_for("the next good rotation", RELOADED, files_sha256=nxt.fingerprint_sha256)
        assert env_file(record)["CERTRELOAD_FINGERPRINT_SHA256"] == nxt.fingerprint_sha256
        assert d.find(HOOK_FAILED) == []
        assert d.stop() == 0


@pytest.mark.pg
@pytest.mark.parametrize(
    ("hook", "extra", "words"),
    [
        ("exit 3", [], "--on-change exited 3"),
        ("sleep 30", ["--on-change-timeout", "1"], "--on-change did not finish in 1 s; killed"),
    ],
    ids=["failing", "hanging"],
)
def test_a_failing_or_hanging_hook_is_an_error_and_undoes_nothing(
    rig: Rig, hook: str, extra: list[str], words: str
) -> None:
    """The hook's failure is logged at error level; the server keeps the new certificate,
    the daemon keeps running, and the next rotation is served (and fails the hook again).
    """
    with daemon(rig.secret.daemon_args(rig.server, "--on-change", hook, *extra)) as d:
        d.wait_for("the first cycle", PRESENTS)
        for turn in (1, 2):
            leaf = rig.secret.publish()
            d.wait_for(f"rotation {turn}", RELOADED, files_sha256=leaf.fingerprint_sha256)
            failed = d.find(HOOK_FAILED)
            assert len(failed) == turn
            assert failed[-1]["level"] == "error"
            assert failed[-1]["error"].startswith(words)
            assert serves(rig.server, leaf)
            assert d.running()
        assert d.stop() == 0


@pytest.mark.pg
def test_a_hook_killed_at_its_timeout_leaves_none_of_its_processes_running(rig: Rig) -> None:
    """'killed' must mean the hook, not only its shell: a hook whose work runs in a child
    (here a background sleep the shell waits for) must not keep running after the timeout.
    The control: the shell itself (the direct child) is gone.
    """
    shell_pid, child_pid = rig.out / "shell.pid", rig.out / "child.pid"
    hook = f"echo $$ > {shell_pid}; sleep 300 & echo $! > {child_pid}; wait"
    args = rig.secret.daemon_args(rig.server, "--on-change", hook, "--on-change-timeout", "1")
    child = 0
    try:
        with daemon(args) as d:
            d.wait_for("the first cycle", PRESENTS)
            leaf = rig.secret.publish()
            d.wait_for("the rotation", RELOADED, files_sha256=leaf.fingerprint_sha256)
            assert d.find(HOOK_FAILED)[0]["error"].startswith("--on-change did not finish")
            shell = int(shell_pid.read_text())
            child = int(child_pid.read_text())
            wait_until(lambda: not pid_alive(shell), "the hook's shell gone")
            if pid_alive(child):  # give a correct kill a generous moment to land
                wait_until(lambda: not pid_alive(child), "the hook's child killed", timeout=10)
            assert d.stop() == 0
    finally:
        if child and pid_alive(child) and b"sleep" in Path(f"/proc/{child}/cmdline").read_bytes():
            os.kill(child, signal.SIGKILL)  # the process this test's hook left behind


# --------------------------------------------------------------------------- mounts


def test_mount_points_undo_mountinfo_escapes() -> None:
    """Field 5 of mountinfo with \\040 (space), \\011 (tab), \\012 (newline) and \\134
    (backslash) undone; optional fields and short lines do not confuse the parser.
    """
    text = (
        "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
        "37 35 98:0 / /tab\\011and\\012newline rw shared:2 master:3 - tmpfs tmpfs rw\n"
        "38 35 98:0 / /back\\134slash\\134040 rw - ext4 /dev/sda rw\n"
        "39 35 98:0 /secret/tls.crt /etc/tls/tls.crt ro - ext4 /dev/sda rw\n"
        "garbage\n"
        "\n"
    )
    assert mount_points(text) == {
        "/mnt/with space",
        "/tab\tand\nnewline",
        "/back\\slash\\040",
        "/etc/tls/tls.crt",
    }
    assert "/mnt/with\\040space" not in mount_points(text)  # the control: not left escaped


def test_diagnose_finds_a_subpath_file_whose_path_has_a_space(tmp_path: Path) -> None:
    """A configured file listed (escaped) as a mount point is a subpath-mount; another file
    in the same folder is not (the control); the folder without ..data is not-atomic.
    """
    folder = tmp_path / "with space"
    folder.mkdir()
    mounted, plain = folder / "tls.crt", folder / "tls.key"
    mounted.write_text("x")
    plain.write_text("x")
    escaped = str(mounted).replace(" ", "\\040")
    mountinfo = f"40 35 98:0 /src/tls.crt {escaped} rw,relatime - ext4 /dev/vda rw\n"
    found = diagnose([mounted, plain], mountinfo)
    assert [(f.file, f.code) for f in found] == [
        (str(mounted), "subpath-mount"),
        (str(folder), "not-atomic"),
    ]
    assert "subPath" in str(found[0])
    assert [f.code for f in diagnose([plain], mountinfo)] == ["not-atomic"]


def _flat_copy(base: Path, name: str, leaf: certs.Issued, ca: certs.Issued) -> Path:
    """tls.crt / tls.key (0600 postgres) / ca.crt as plain files in a folder without ..data."""
    folder = postgres_dir(base / name)
    certs.install_tls_files(certs.TlsFiles(leaf.cert_pem, leaf.key_pem, ca.cert_pem), folder)
    return folder


def _check(folder: Path) -> subprocess.CompletedProcess[str]:
    return run_certreload(["--check", "--dir", str(folder), "--san", SAN, "--server-addr", "none"])


@pytest.fixture
def bind_mount() -> Iterator[tuple[Path, Path, Secret]]:
    """A flat folder whose tls.crt is a bind mount of another file with the same bytes.

    Yields (flat folder, a symlink to it, the secret that made the certificates).
    Skipped, naming the error, when the sandbox forbids ``mount --bind``.
    """
    with workspace("certreload-mounts-") as base:
        secret = Secret(base)
        leaf = secret.new_leaf()
        flat = _flat_copy(base, "flat", leaf, secret.ca)
        source = postgres_dir(base / "source") / "tls.crt"
        source.write_bytes(leaf.cert_pem)
        source.chmod(0o644)
        link = base / "via-link"
        link.symlink_to(flat)
        control = _check(flat)  # before the mount: the control
        assert control.returncode == 0, control.stdout
        assert control.stdout.startswith("CERTRELOAD OK")
        assert "subPath" not in control.stdout
        done = subprocess.run(
            ["mount", "--bind", str(source), str(flat / "tls.crt")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"mount --bind is not allowed here: {done.stderr.strip()}")
        try:
            yield flat, link, secret
        finally:
            subprocess.run(["umount", str(flat / "tls.crt")], check=False)


def test_a_real_bind_mount_of_one_file_makes_check_warn(
    bind_mount: tuple[Path, Path, Secret],
) -> None:
    """With tls.crt bind-mounted (a subPath mount), --check exits 1 with a subPath warning as
    its status line; the same folder exited 0 before the mount (the fixture's control).
    """
    flat, _, _ = bind_mount
    result = _check(flat)
    assert result.returncode == 1, result.stdout
    first, *details = result.stdout.splitlines()
    assert first.startswith("CERTRELOAD WARNING - ")
    assert "subPath" in first
    assert str(flat / "tls.crt") in first
    assert any(line.startswith("warning: ") and "subPath" in line for line in details)
    report = json.loads(run_certreload(["--check", "--json", "--dir", str(flat), "--san", SAN,
                                        "--server-addr", "none"]).stdout)  # fmt: skip
    assert sorted(m["code"] for m in report["mounts"]) == ["not-atomic", "subpath-mount"]


def test_the_daemon_warns_of_a_bind_mount_at_start(bind_mount: tuple[Path, Path, Secret]) -> None:
    """The daemon's start logs the subPath mount at warning level (and the missing ..data
    as a note at info level, the contrast).
    """
    flat, _, _ = bind_mount
    result = run_certreload(
        ["--once", "--log-format", "json", "--dir", str(flat), "--san", SAN,
         "--server-addr", "none", "--dsn", "host=/nonexistent port=1"]
    )  # fmt: skip
    found = matching(events(result.stderr), "mount diagnostic")
    levels = {e["code"]: e["level"] for e in found}
    assert levels == {"subpath-mount": "warning", "not-atomic": "info"}, result.stderr


def test_a_bind_mount_reached_through_a_symlinked_folder_is_found(
    bind_mount: tuple[Path, Path, Secret],
) -> None:
    """--dir through a symlink to the folder (as /var/run -> /run on Debian images): the
    kernel lists the resolved path in mountinfo; --check must still say subPath and exit 1.
    """
    flat, link, _ = bind_mount
    assert _check(flat).returncode == 1  # the control: the direct path is found
    result = _check(link)
    assert result.returncode == 1, result.stdout
    assert "subPath" in result.stdout.splitlines()[0]


def test_a_folder_without_data_gets_the_not_atomic_note_and_a_kubelet_volume_does_not() -> None:
    """--check: a plain folder gets the 'no ..data' note (status still OK, exit 0); a
    kubelet SecretVolume folder holding the same set gets no such note.
    """
    with workspace("certreload-atomic-") as base:
        secret = Secret(base)
        leaf = secret.publish()
        flat = _flat_copy(base, "flat", leaf, secret.ca)
        plain = _check(flat)
        assert plain.returncode == 0, plain.stdout
        notes = [line for line in plain.stdout.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1
        assert f"{flat} has no ..data" in notes[0]
        kubelet = _check(secret.path)
        assert kubelet.returncode == 0, kubelet.stdout
        assert "..data" not in kubelet.stdout
        assert not [line for line in kubelet.stdout.splitlines() if line.startswith("note: ")]


# --------------------------------------------------------------------------- CA rotation


def _metrics(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")[1]


@pytest.mark.pg
@pytest.mark.parametrize("same_name", [False, True], ids=["new-ca-name", "same-ca-name-new-key"])
def test_daemon_warns_of_a_ca_rotation_in_the_unsafe_order(rig: Rig, same_name: bool) -> None:
    """Leaf from a new CA with ca.crt = the new CA only: one 'CA rotation hazard' warning and
    the gauge 0 (also when the new CA keeps the old one's name, as a re-keyed CA does).
    Recovery: the safe order to a third CA brings the gauge back to 1 without a warning.
    """
    port = free_port()
    with daemon(rig.secret.daemon_args(rig.server, "--listen", f"127.0.0.1:{port}")) as d:
        d.wait_for("the first cycle", PRESENTS)
        new_ca = (
            rekeyed_ca(rig.secret.ca.cert.subject)
            if same_name
            else certs.make_root_ca(cn="issue6 next root")
        )
        leaf = rig.secret.publish(rig.secret.new_leaf(new_ca), ca_pem=new_ca.cert_pem)
        d.wait_for("the unsafe rotation", RELOADED, files_sha256=leaf.fingerprint_sha256)
        hazards = d.find(HAZARD)
        assert len(hazards) == 1
        assert hazards[0]["level"] == "warning"
        if not same_name:
            assert "issue6 next root" in hazards[0]["problem"]
        wait_until(lambda: metric(_metrics(port), TRUST_GAUGE) == 0.0, "the trust gauge 0")
        assert serves(rig.server, leaf)  # a warning, not a refusal

        third = certs.make_root_ca(cn="issue6 third root")
        both = certs.concat(new_ca.cert_pem, third.cert_pem)
        rig.secret.publish(leaf, ca_pem=both)
        d.wait_for("ca.crt with both", RELOADED, files_sha256=leaf.fingerprint_sha256, count=2)
        last = rig.secret.publish(rig.secret.new_leaf(third), ca_pem=both)
        d.wait_for("the safe rotation", RELOADED, files_sha256=last.fingerprint_sha256)
        wait_until(lambda: metric(_metrics(port), TRUST_GAUGE) == 1.0, "the trust gauge 1")
        assert len(d.find(HAZARD)) == 1
        assert d.stop() == 0


@pytest.mark.pg
def test_daemon_is_quiet_about_a_ca_rotation_in_the_safe_order(rig: Rig) -> None:
    """Control: ca.crt with both CAs first (old leaf), then the new CA's leaf: both changes
    reloaded, no warning, gauge 1 after two real reloads (not merely its initial value).
    """
    port = free_port()
    old = rig.secret.leaf
    assert old is not None
    with daemon(rig.secret.daemon_args(rig.server, "--listen", f"127.0.0.1:{port}")) as d:
        d.wait_for("the first cycle", PRESENTS)
        new_ca = certs.make_root_ca(cn="issue6 next root")
        both = certs.concat(rig.secret.ca.cert_pem, new_ca.cert_pem)
        rig.secret.publish(old, ca_pem=both)
        d.wait_for("ca.crt with both CAs", RELOADED, files_sha256=old.fingerprint_sha256)
        leaf = rig.secret.publish(rig.secret.new_leaf(new_ca), ca_pem=both)
        d.wait_for("the new CA's leaf", RELOADED, files_sha256=leaf.fingerprint_sha256)
        wait_until(lambda: metric(_metrics(port), "certreload_reloads_total") == 2.0, "two reloads")
        d.signal(signal.SIGHUP)  # one more cycle: the second reload's metrics are observed
        d.wait_for("a SIGHUP cycle", PRESENTS, trigger="signal")
        assert metric(_metrics(port), TRUST_GAUGE) == 1.0
        assert d.find(HAZARD) == []
        assert serves(rig.server, leaf)
        assert d.stop() == 0


@pytest.mark.pg
def test_a_ca_crt_change_made_while_the_daemon_was_down_reaches_the_server_at_start(
    rig: Rig,
) -> None:
    """Step 1 of the safe CA rotation (ca.crt gains the new CA, same leaf) must reach the
    server whichever trigger sees it.  Control: seen by the running daemon's watch, it is
    reloaded (the server's client-CA list, read by openssl, names the new root).  Then the
    same kind of change made while the daemon is stopped: its start cycle must load it too.
    """
    old = rig.secret.leaf
    assert old is not None
    second = certs.make_root_ca(cn="issue6 second root")
    third = certs.make_root_ca(cn="issue6 third root")
    with daemon(rig.secret.daemon_args(rig.server)) as d:
        d.wait_for("the first cycle", PRESENTS)
        rig.secret.publish(old, ca_pem=certs.concat(rig.secret.ca.cert_pem, second.cert_pem))
        d.wait_for("the ca.crt change reloaded", RELOADED, files_sha256=old.fingerprint_sha256)
        assert "issue6 second root" in client_ca_names(rig.server.port)
        assert d.stop() == 0

    rig.secret.publish(old, ca_pem=certs.concat(rig.secret.ca.cert_pem, third.cert_pem))
    with daemon(rig.secret.daemon_args(rig.server)) as d:
        start = d.wait_for("the start cycle", trigger="start", files_sha256=old.fingerprint_sha256)
        names = client_ca_names(rig.server.port)
        assert "issue6 third root" in names, (start["event"], start["outcome"], names)
        assert start["outcome"] == "reloaded"
        assert d.stop() == 0

    # The server restarted after the change has loaded it: the next start reloads nothing.
    rig.server.restart()
    with daemon(rig.secret.daemon_args(rig.server)) as d:
        start = d.wait_for("the start cycle", trigger="start", files_sha256=old.fingerprint_sha256)
        assert start["outcome"] == "unchanged", start
        assert d.stop() == 0


def _pending(base: Path, leaf_pem: bytes, key_pem: bytes, ca_pem: bytes) -> Path:
    folder = postgres_dir(base)
    certs.install_tls_files(certs.TlsFiles(leaf_pem, key_pem, ca_pem), folder)
    return folder


@pytest.mark.pg
@pytest.mark.parametrize("same_name", [False, True], ids=["new-ca-name", "same-ca-name-new-key"])
def test_check_says_ca_rotation_when_ca_crt_no_longer_trusts_the_served_leaf(
    pg_server: PgServer, docs_set: DocsSet, tls_workspace: Path, same_name: bool
) -> None:
    """Files: new CA only + its leaf, while the server presents the docs' leaf: --check says
    'CA rotation'.  Control: ca.crt with both CAs: no such line (both exit 1: not yet served).
    """
    assert pg_server.served_fingerprint() == docs_set.fingerprint_sha256
    docs_ca = x509.load_pem_x509_certificate(docs_set.ca_cert.read_bytes())
    new_ca = rekeyed_ca(docs_ca.subject) if same_name else certs.make_root_ca(cn="issue6 next root")
    leaf = certs.make_leaf(new_ca, cn=SAN, dns_sans=[SAN])
    for bundle, said in (
        (new_ca.cert_pem, True),
        (certs.concat(docs_set.ca_cert.read_bytes(), new_ca.cert_pem), False),
    ):
        folder = _pending(tls_workspace / f"pending-{same_name}-{said}", leaf.cert_pem,
                          leaf.key_pem, bundle)  # fmt: skip
        flags = ["--check", "--dir", str(folder), "--san", SAN,
                 "--server-addr", f"127.0.0.1:{pg_server.port}"]  # fmt: skip
        result = run_certreload(flags)
        assert result.returncode == 1, result.stdout
        assert ("CA rotation" in result.stdout) is said, result.stdout
        report = json.loads(run_certreload([*flags, "--json"]).stdout)
        assert (report["ca_rotation"] is not None) is said


@pytest.mark.pg
def test_check_does_not_cry_ca_rotation_when_the_served_leaf_has_an_intermediate(
    rig: Rig,
) -> None:
    """Same root, new intermediate (as when a CA switches issuing intermediates): the server
    presents leaf1 + intermediate1 and ca.crt (the root) trusts it; the files hold leaf2 +
    intermediate2.  A verify-full client given the files' ca.crt accepts the server (proved
    with libpq), so --check must not claim 'CA rotation ... clients fail verify-full'.
    Control: a valid set from an unrelated root (ca.crt without the served root) does.
    """
    root = rig.secret.ca
    i1 = certs.make_intermediate(root, cn="issue6 intermediate 1")
    i2 = certs.make_intermediate(root, cn="issue6 intermediate 2")
    leaf1, leaf2 = (certs.make_leaf(i, cn=SAN, dns_sans=[SAN]) for i in (i1, i2))
    rig.secret.publish(leaf1, cert_pem=certs.concat(leaf1.cert_pem, i1.cert_pem))
    rig.server.reload_and_wait()
    assert serves(rig.server, leaf1)
    pending = _pending(rig.base / "pending", certs.concat(leaf2.cert_pem, i2.cert_pem),
                       leaf2.key_pem, root.cert_pem)  # fmt: skip
    with psycopg.connect(
        host=SAN, hostaddr="127.0.0.1", port=rig.server.port, dbname="postgres",
        user="postgres", sslmode="verify-full", sslrootcert=str(pending / "ca.crt"),
        connect_timeout=10,
    ) as conn:  # fmt: skip
        assert conn.pgconn.ssl_in_use  # a client given this ca.crt is fine

    def check(folder: Path) -> subprocess.CompletedProcess[str]:
        return run_certreload(["--check", "--dir", str(folder), "--san", SAN,
                               "--server-addr", f"127.0.0.1:{rig.server.port}"])  # fmt: skip

    other_root = certs.make_root_ca(cn="issue6 unrelated root")
    leaf3 = certs.make_leaf(other_root, cn=SAN, dns_sans=[SAN])
    unrelated = _pending(rig.base / "pending-unrelated", leaf3.cert_pem, leaf3.key_pem,
                         other_root.cert_pem)  # fmt: skip
    control = check(unrelated)  # the served root is really gone from ca.crt
    assert control.returncode == 1, control.stdout
    assert "CA rotation" in control.stdout, control.stdout

    result = check(pending)
    assert result.returncode == 1, result.stdout  # not yet served: WARNING either way
    assert "CA rotation" not in result.stdout, result.stdout


def test_secret_volume_helper_layout_is_what_diagnose_expects(tmp_path: Path) -> None:
    """Guard for the not-atomic control above: the kubelet helper makes ..data, so diagnose
    has nothing to say about it, while the same files copied flat do get the note.
    """
    volume = SecretVolume(tmp_path / "secret")
    volume.write({"tls.crt": b"x", "tls.key": b"y"})
    assert diagnose([volume.path / "tls.crt", volume.path / "tls.key"], "") == []
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "tls.crt").write_bytes(b"x")
    assert [f.code for f in diagnose([flat / "tls.crt"], "")] == ["not-atomic"]
