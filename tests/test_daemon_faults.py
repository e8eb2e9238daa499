"""The daemon when the world misbehaves: each test has its own PostgreSQL server.

Server down at start, server stopped while the secret rotates, a role without permission,
the server reading other files, signals (SIGHUP runs a cycle, SIGTERM mid-cycle exits 0),
the CA in a second secret, certbot's non-atomic link updates, and a DSN password that must
never be printed.  certreload runs as the postgres user (``setpriv``), except where the test
needs to reach inside the loop (in-process, marked so).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certreload import logs, reconcile
from certreload import settings as settings_mod
from certreload.daemon import Daemon
from certreload.notify import Notifier
from certreload.served import SSL_REQUEST
from tests.daemon_helpers import (
    CERTRELOAD,
    NAME,
    DaemonProcess,
    Event,
    Rig,
    as_postgres,
    make_rig,
    parse_events,
    pg_missing,
)
from tests.support import certs
from tests.support.kubelet import certbot_style_update
from tests.support.wait import WAIT, eventually

pytestmark = pytest.mark.pg

PASSWORD = "Zq7@dsn/S3cret-pw"  # '@' and '/' so a URI must percent-encode it
WRONG_PASSWORD = "Wr0ng@guess/pw-77"
PW_ROLE = "certreload_pw"


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A server of its own on a kubelet-style secret (not started)."""
    missing = pg_missing()
    if missing is not None:
        pytest.skip(missing)
    yield from make_rig("certreload-faults2-")


@pytest.fixture
def split_rig() -> Iterator[Rig]:
    """tls.crt and tls.key in one secret, ca.crt in a second one (not started)."""
    missing = pg_missing()
    if missing is not None:
        pytest.skip(missing)
    yield from make_rig("certreload-split-", split_ca=True)


def _outcome(outcome: str, trigger: str | None = None) -> Callable[[Event], bool]:
    """Matches a cycle line with this outcome (and trigger, when given)."""

    def match(event: Event) -> bool:
        return event.get("outcome") == outcome and (trigger is None or event["trigger"] == trigger)

    return match


def _other_files(rig: Rig) -> tuple[Path, Path, Path, certs.Issued]:
    """Another valid set in another folder, key 0600 owned by postgres."""
    leaf = rig.new_leaf()
    files = certs.TlsFiles(leaf.cert_pem, leaf.key_pem, rig.ca.cert_pem)
    cert, key, ca = certs.install_tls_files(files, rig.base / "other")
    return cert, key, ca, leaf


# --------------------------------------------------------------------------- server down


def test_server_down_at_start_keeps_running_then_serves(rig: Rig) -> None:
    """No server at start: unreachable, retried, still running; once up, rotations served."""
    daemon = rig.start("--log-level", "debug", interval=2)
    first = daemon.wait_for(lambda e: e.get("trigger") == "start", "the first cycle")
    assert (first["outcome"], first["level"]) == ("unreachable", "error")
    daemon.wait_for(_outcome("unreachable", "timer"), "a retry while the server is down")
    assert daemon.running()

    rig.server.start()
    mark = len(daemon.events())
    seen = daemon.wait_for(_outcome("unchanged"), "the server seen up", after=mark)
    assert seen["served_before_sha256"] == rig.current.fingerprint_sha256

    leaf = rig.publish()  # the control: the daemon now does its job
    rig.wait_served(leaf, "a rotation once the server is up")
    daemon.wait_for(_outcome("reloaded", "watch"), "the rotation's line", after=mark)
    assert daemon.stop() == 0


def test_once_exits_3_when_the_server_is_down(rig: Rig) -> None:
    """--once with no server: exit 3 and outcome unreachable; with the server up: exit 0."""
    down = rig.once()
    assert down.returncode == 3, down.stderr
    assert [e["outcome"] for e in parse_events(down.stderr) if "outcome" in e] == ["unreachable"]
    rig.server.start()
    up = rig.once()
    assert up.returncode == 0, up.stderr


def test_server_stopped_rotated_started_is_noticed(rig: Rig) -> None:
    """Stop the server, rotate, start it: the daemon sees it present the files' certificate."""
    rig.server.start()
    daemon = rig.start("--log-level", "debug", interval=2)
    assert daemon.wait_for(lambda e: e.get("trigger") == "start", "start")["outcome"] == (
        "unchanged"
    )
    rig.server.stop()
    mark = len(daemon.events())
    leaf = rig.publish()
    failed = daemon.wait_for(_outcome("unreachable", "watch"), "the reload failing", after=mark)
    assert failed["level"] == "error"
    assert failed["files_sha256"] == leaf.fingerprint_sha256

    rig.server.start()  # the server reads the rotated files itself
    mark = len(daemon.events())
    noticed = daemon.wait_for(_outcome("unchanged"), "the restarted server noticed", after=mark)
    assert noticed["served_before_sha256"] == leaf.fingerprint_sha256
    assert noticed["files_sha256"] == leaf.fingerprint_sha256
    assert rig.serves(leaf)

    later = rig.publish()  # the control: rotations carry on after the restart
    rig.wait_served(later, "a rotation after the restart")
    assert daemon.stop() == 0


def test_recovery_from_unreachable_is_told_at_info(rig: Rig) -> None:
    """After 'cycle failed' errors, the cycle that finds the server fine again is info.

    At the default log level an operator sees an error per retry while the server is down,
    and nothing at all once it is back: log-based alerts never clear.  The control: the first
    cycle on a healthy server is told at info.
    """
    rig.server.start()
    daemon = rig.start(interval=1)  # the default level: info
    assert daemon.wait_for(lambda e: e.get("trigger") == "start", "start")["level"] == "info"
    rig.server.stop()
    mark = len(daemon.events())
    daemon.wait_for(_outcome("unreachable"), "the server seen down", after=mark)
    rig.server.start()
    mark = len(daemon.events())
    back = daemon.wait_for(
        lambda e: e.get("outcome") in ("unchanged", "reloaded"),
        "an info line once the server is back",
        after=mark,
    )
    assert back["level"] == "info"
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- permission


def _password_role(rig: Rig, *, grant: bool = False) -> None:
    """A login role with a password that pg_hba makes the server check (scram)."""
    rig.server.create_role(PW_ROLE, PASSWORD)
    if grant:
        with rig.server.connect() as conn:
            conn.execute(f"GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {PW_ROLE}")
    hba = rig.server.data_dir / "pg_hba.conf"
    scram = (f"host all {PW_ROLE} 127.0.0.1/32 scram-sha-256\n"
             f"hostssl all {PW_ROLE} 127.0.0.1/32 scram-sha-256\n")  # fmt: skip
    hba.write_text(scram + hba.read_text())
    rig.server.reload_and_wait()


def _pw_dsn(rig: Rig, password: str = PASSWORD) -> str:
    return (f"host=127.0.0.1 port={rig.server.port} dbname=postgres user={PW_ROLE} "
            f"password={password} sslmode=disable")  # fmt: skip


def _pw_uri(rig: Rig, password: str = PASSWORD) -> str:
    quoted = urllib.parse.quote(password, safe="")
    return f"postgresql://{PW_ROLE}:{quoted}@127.0.0.1:{rig.server.port}/postgres?sslmode=disable"


def _leaks(text: str, password: str) -> list[str]:
    """Any 8-character piece of the password, or its percent-encoded form, found in text."""
    pieces = {password[i : i + 8] for i in range(len(password) - 7)}
    pieces.add(urllib.parse.quote(password, safe=""))
    return sorted(piece for piece in pieces if piece in text)


def test_permission_denied_once_exits_3_and_says_grant(rig: Rig) -> None:
    """A role without EXECUTE on pg_reload_conf(): exit 3, 'permission', the GRANT to run."""
    rig.server.start()
    _password_role(rig)
    served = rig.current
    leaf = rig.publish()
    denied = rig.once(dsn=_pw_dsn(rig))
    assert denied.returncode == 3, denied.stderr
    line = next(e for e in parse_events(denied.stderr) if e.get("trigger") == "start")
    assert (line["outcome"], line["level"]) == ("not_permitted", "error")
    assert "permission" in line["error"]
    assert "GRANT EXECUTE ON FUNCTION pg_reload_conf()" in line["error"]
    assert rig.serves(served)

    with rig.server.connect() as conn:  # the control: granted, the same command works
        conn.execute(f"GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {PW_ROLE}")
    granted = rig.once(dsn=_pw_dsn(rig))
    assert granted.returncode == 0, granted.stderr
    assert rig.serves(leaf)


# --------------------------------------------------------------------------- DSN password


def test_dsn_password_never_in_output(rig: Rig) -> None:
    """The DSN's password appears in no output: bad password, no grant, URI, env, daemon."""
    rig.server.start()
    _password_role(rig)
    rig.publish()
    outputs: dict[str, str] = {}

    wrong = rig.once(dsn=_pw_dsn(rig, WRONG_PASSWORD))
    assert wrong.returncode == 3
    assert "password" in wrong.stderr  # it does talk about the password...
    assert not _leaks(wrong.stdout + wrong.stderr, WRONG_PASSWORD)  # ...never shows it

    for name, dsn in (("conninfo", _pw_dsn(rig)), ("uri", _pw_uri(rig))):
        done = rig.once(dsn=dsn)
        assert done.returncode == 3, done.stderr  # not permitted
        outputs[name] = done.stdout + done.stderr

    argv = [a for a in rig.argv("--once") if a != rig.server.superuser_dsn()]
    argv.remove("--dsn")
    env_run = DaemonProcess(argv, env={**os.environ, "CERTRELOAD_DSN": _pw_uri(rig)})
    assert env_run.proc.wait(timeout=120) == 3
    outputs["env"] = env_run.output()

    daemon = rig.start(dsn=_pw_dsn(rig), interval=1)
    daemon.wait_for(_outcome("not_permitted", "timer"), "a second failed cycle")
    assert daemon.stop() == 0
    outputs["daemon"] = daemon.output()

    for name, text in outputs.items():
        assert PW_ROLE in text, name  # the control: the DSN is described, user and all
        assert "permission" in text, name
        assert not _leaks(text, PASSWORD), name


# --------------------------------------------------------------------------- other files


def test_server_reading_other_files_once_exits_1_and_says_so(rig: Rig) -> None:
    """ssl_cert_file set elsewhere (ALTER SYSTEM): exit 1, naming the file the server reads."""
    rig.server.start()
    cert, key, ca, _ = _other_files(rig)
    rig.server.set_ssl_files(cert, key, ca)
    result = rig.once()
    assert result.returncode == 1, result.stderr
    line = next(e for e in parse_events(result.stderr) if e.get("trigger") == "start")
    assert (line["outcome"], line["level"]) == ("reload_failed", "error")
    assert f"the server reads {cert}, not {rig.cert}" in line["error"]

    rig.server.set_ssl_files(rig.cert, rig.key, rig.ca_path)  # the control: pointed back
    back = rig.once()
    assert back.returncode == 0, back.stderr


# --------------------------------------------------------------------------- signals


def test_sighup_runs_a_cycle_with_trigger_signal(rig: Rig) -> None:
    """SIGHUP: a cycle with trigger 'signal' that reads the server afresh."""
    rig.server.start()
    daemon = rig.start(interval=300)  # no timer: only the signal can cause a cycle
    assert daemon.count(lambda e: e.get("trigger") == "signal") == 0  # the control
    daemon.signal(signal.SIGHUP)
    line = daemon.wait_for(lambda e: e.get("trigger") == "signal", "the SIGHUP cycle")
    assert (line["outcome"], line["level"]) == ("unchanged", "info")

    # someone points the server at other files behind the daemon's back: SIGHUP notices
    cert, key, ca, _ = _other_files(rig)
    rig.server.set_ssl_files(cert, key, ca)
    mark = len(daemon.events())
    daemon.signal(signal.SIGHUP)
    noticed = daemon.wait_for(_outcome("reload_failed", "signal"), "the second SIGHUP", after=mark)
    assert str(cert) in noticed["error"]
    assert daemon.running()
    assert daemon.stop() == 0


def test_sigterm_while_probing_exits_0(rig: Rig) -> None:
    """SIGTERM while the cycle waits on the server's answer: exit 0, 'stopped' last.

    The probe goes to a listener of the test's that takes the SSLRequest and never answers,
    so the signal surely lands inside the cycle.  The control: before it, no cycle ended.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        daemon = rig.start("--server-addr", f"127.0.0.1:{port}", wait_start=False)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            assert conn.recv(8) == SSL_REQUEST
            assert daemon.count(lambda e: "outcome" in e) == 0  # mid-cycle
            daemon.signal(signal.SIGTERM)
            code = daemon.stop()
    assert code == 0
    assert daemon.events()[-1]["event"] == "stopped"


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """Put back the signal handlers and the root logger an in-process daemon changes."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.usefixtures("restore_process_state")
def test_sigterm_while_confirming_a_reload_exits_0_in_process(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: SIGTERM while the loop waits for the server to present the new certificate.

    The server reads other files, so the confirmation (made 600 s long here) never succeeds;
    a real SIGTERM arrives once pg_reload_conf() was called.  run_forever returns 0 and the
    interrupted cycle is not reported as a failure.  The control: the same setup without the
    signal but with the normal confirmation time reports reload_failed.
    """
    rig.server.start()
    cert, key, ca, _ = _other_files(rig)
    rig.server.set_ssl_files(cert, key, ca)
    settings = settings_mod.load(
        ["--cert", str(rig.cert), "--key", str(rig.key), "--ca", str(rig.ca_path), "--san", NAME,
         "--dsn", rig.server.superuser_dsn(), "--server-addr", f"127.0.0.1:{rig.server.port}",
         "--pg-user", "postgres", "--interval", "300"], {})  # fmt: skip

    control = reconcile.Reconciler(settings).cycle("start")
    assert control.outcome is reconcile.Outcome.RELOAD_FAILED

    monkeypatch.setattr(reconcile, "CONFIRM_SECONDS", 600.0)
    stream = io.StringIO()
    logs.configure("json", "debug", stream)
    daemon = Daemon(settings, Notifier({}))
    daemon.install_signals()
    before = rig.server.conf_load_time()
    problems: list[str] = []
    returned = threading.Event()

    def unblock(problem: str) -> None:
        problems.append(problem)
        daemon.reconciler.stop.set()
        daemon.poke("stop")

    def send_sigterm() -> None:
        try:
            eventually(lambda: rig.server.conf_load_time() > before, "pg_reload_conf() called")
        except BaseException as exc:  # the test's own failure: unblock the loop, report it
            unblock(repr(exc))
            return
        os.kill(os.getpid(), signal.SIGTERM)
        if not returned.wait(WAIT):
            unblock("run_forever did not return after SIGTERM")

    sender = threading.Thread(target=send_sigterm)
    sender.start()
    code = daemon.run_forever()
    returned.set()
    sender.join(timeout=WAIT)
    assert not problems
    assert code == 0
    events = parse_events(stream.getvalue())
    assert events[-1]["event"] == "stopped"
    assert not [e for e in events if e.get("outcome") or e.get("level") == "error"]


# --------------------------------------------------------------------------- CA in a second folder


def test_ca_in_a_second_folder_rotations_served(split_rig: Rig) -> None:
    """--cert/--key in one secret, --ca in another: leaf, CA bundle and CA rotations served."""
    rig = split_rig
    rig.server.start()
    daemon = rig.start(interval=300)  # file events only, from both folders
    leaf = rig.publish()
    rig.wait_served(leaf, "a leaf rotation")

    new_ca = certs.make_root_ca(cn="second root")
    both = certs.concat(rig.ca.cert_pem, new_ca.cert_pem)
    mark = len(daemon.events())
    loaded = rig.server.conf_load_time()
    rig.publish_ca_only(both)  # only the CA folder changes: a reload, same leaf
    line = daemon.wait_for(_outcome("reloaded", "watch"), "the CA bundle reloaded", after=mark)
    assert line["files_sha256"] == leaf.fingerprint_sha256
    assert rig.server.conf_load_time() > loaded

    moved = rig.new_leaf(new_ca)
    rig.volume.write_owned(
        {"tls.crt": moved.cert_pem, "tls.key": moved.key_pem},
        {"tls.crt": 0o640, "tls.key": 0o640},
        {"tls.crt": (0, rig.gid), "tls.key": (0, rig.gid)},
    )
    rig.wait_served(moved, "a leaf from the new CA")
    mark = len(daemon.events())
    rig.publish_ca_only(new_ca.cert_pem)
    daemon.wait_for(_outcome("reloaded", "watch"), "the old CA dropped", after=mark)
    assert daemon.stop() == 0
    events = daemon.events()
    assert not [e for e in events if e.get("level") in ("error", "warning")], events


# --------------------------------------------------------------------------- certbot


def _certbot_files(rig: Rig, leaf: certs.Issued) -> dict[str, bytes]:
    """certbot's live/ names in the order it updates the links (storage.py ALL_FOUR)."""
    return {
        "cert.pem": leaf.cert_pem,
        "privkey.pem": leaf.key_pem,
        "chain.pem": rig.ca.cert_pem,
        "fullchain.pem": certs.concat(leaf.cert_pem),
    }


@pytest.mark.parametrize(
    ("cert_name", "pause"),
    [
        ("cert.pem", 0.5),  # leaf and key one link apart: a half-set for 0.5 s
        ("fullchain.pem", 0.3),  # two links apart: a half-set for 0.6 s
        ("fullchain.pem", 0.6),  # two links apart: 1.2 s, each pause still < 1 s
    ],
)
def test_certbot_style_updates_served_not_rejected(rig: Rig, cert_name: str, pause: float) -> None:
    """live/ links replaced one by one, < 1 s apart: each renewal served, none rejected.

    The server reads ``cert_name`` and privkey.pem; certbot switches cert, privkey, chain,
    fullchain in that order, so with fullchain.pem the key and certificate disagree for two
    pauses.  The first two cases are the controls: the half-set lasts less than the daemon's
    one-second settle.  The third fails today: the settle is one second from the first bad
    read, however recently a link changed.
    """
    live, archive = rig.base / "live", rig.base / "archive"
    archive.mkdir(mode=0o755)
    os.chown(archive, 0, rig.gid)
    os.chmod(archive, 0o2755)  # noqa: S103 - setgid: the archive's files get group postgres
    modes = {"privkey.pem": 0o640}  # root:postgres 0640, as PostgreSQL allows
    certbot_style_update(live, archive, _certbot_files(rig, rig.current), modes=modes)
    rig.server.start()
    rig.server.set_ssl_files(live / cert_name, live / "privkey.pem", live / "chain.pem")
    argv = as_postgres(
        [CERTRELOAD, "--cert", str(live / cert_name), "--key", str(live / "privkey.pem"),
         "--ca", str(live / "chain.pem"), "--san", NAME, "--dsn", rig.server.superuser_dsn(),
         "--server-addr", f"127.0.0.1:{rig.server.port}", "--interval", "300",
         "--log-format", "json"]
    )  # fmt: skip
    daemon = DaemonProcess(argv)
    rig.daemons.append(daemon)
    daemon.wait_for(lambda e: e.get("trigger") == "start", "the first cycle")
    for _ in range(2):
        leaf = rig.new_leaf()
        certbot_style_update(live, archive, _certbot_files(rig, leaf), pause=pause, modes=modes)
        rig.wait_served(leaf, f"a certbot renewal ({cert_name}, {pause} s apart)")
    assert daemon.stop() == 0
    rejected = [e for e in daemon.events() if e.get("outcome") == "rejected"]
    assert not rejected, [(e["level"], e["problems"]) for e in rejected]
    assert daemon.count(lambda e: e.get("outcome") == "reloaded") == 2
