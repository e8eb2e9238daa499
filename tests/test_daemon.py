"""The daemon's loop against a real PostgreSQL: rotations served, bad sets refused, --once.

- ``plan`` (pure) and ``log_result`` (which level a cycle is told at) as tables.
- ``Reconciler`` in-process, cycle by cycle, against a real server.
- certreload as a subprocess run as the postgres user: kubelet-style rotations each served
  (checked by ``openssl s_client`` and ``certreload.served.read_served``); every rejected
  category keeps the old certificate, logs one error line naming the file, and a good set
  afterwards is served; ``--once`` exit codes 0 and 2.

One server for this module (each test publishes the set it starts from); the tests that
stop, reconfigure or re-grant the server are in test_daemon_faults.py with a server each.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from certreload import settings as settings_mod
from certreload.daemon import log_result
from certreload.reconcile import CycleResult, Outcome, Reconciler, Step, plan
from certreload.served import read_served
from certreload.settings import Address, Settings
from certreload.verdict import Verdict
from tests.daemon_helpers import (
    NAME,
    Event,
    Rig,
    make_rig,
    parse_events,
    pg_missing,
    problems_text,
    rejected_errors,
)
from tests.support import certs

# --------------------------------------------------------------------------- pure: plan

A, B = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("digest", "applied", "trigger", "can_probe", "step"),
    [
        # a file event is the fast path once something was applied
        (A, A, "watch", True, Step.IN_SYNC),
        (B, A, "watch", True, Step.RELOAD),
        # ... but before anything was applied the server is asked what it presents
        (A, None, "watch", True, Step.PROBE),
        # every other trigger reads what the server presents, whatever was applied
        (A, A, "start", True, Step.PROBE),
        (A, A, "timer", True, Step.PROBE),
        (A, A, "signal", True, Step.PROBE),
        (B, A, "timer", True, Step.PROBE),
        (A, None, "start", True, Step.PROBE),
        # --server-addr none: only the content decides
        (A, A, "start", False, Step.IN_SYNC),
        (A, A, "timer", False, Step.IN_SYNC),
        (B, A, "signal", False, Step.RELOAD),
        (A, None, "start", False, Step.RELOAD),
        (A, None, "watch", False, Step.RELOAD),
    ],
)
def test_plan_table(digest: str, applied: str | None, trigger: str, can_probe: bool,
                    step: Step) -> None:  # fmt: skip
    """plan() picks the step from the digest, what was applied, the trigger, the probe."""
    assert plan(digest, applied, trigger, can_probe) is step


# --------------------------------------------------------------------------- pure: log levels


@dataclass
class Recorded:
    """One call on the recording logger."""

    level: str
    event: str
    fields: dict[str, Any]


class RecordingLog:
    """A structlog-shaped logger that keeps each call."""

    def __init__(self) -> None:
        """No calls yet."""
        self.calls: list[Recorded] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.calls.append(Recorded(level, event, fields))

        return record


def _verdict(valid: bool) -> Verdict:
    from certreload.verdict import Problem

    problems = () if valid else (Problem("/x/tls.key", "key-mismatch", "/x/tls.key bad", "fix"),)
    return Verdict(digest=A, problems=problems, warnings=(), leaf=None)


def _settings() -> Settings:
    return settings_mod.load(["--dir", "/nonexistent", "--server-addr", "none"], {})


@pytest.mark.parametrize(
    ("outcome", "trigger", "new", "level"),
    [
        (Outcome.REJECTED, "watch", True, "error"),  # a new bad content: told once, loudly
        (Outcome.REJECTED, "timer", True, "error"),
        (Outcome.REJECTED, "watch", False, "debug"),  # the same content again: quiet
        (Outcome.REJECTED, "timer", False, "warning"),  # ... reminded on the timer
        (Outcome.REJECTED, "signal", False, "warning"),
        (Outcome.UNCHANGED, "start", False, "info"),
        (Outcome.UNCHANGED, "signal", False, "info"),
        (Outcome.UNCHANGED, "timer", False, "debug"),
        (Outcome.RELOADED, "watch", False, "info"),
        (Outcome.RELOAD_FAILED, "watch", False, "error"),
        (Outcome.UNREACHABLE, "timer", False, "error"),
        (Outcome.NOT_PERMITTED, "start", False, "error"),
    ],
)
def test_log_result_levels(outcome: Outcome, trigger: str, new: bool, level: str) -> None:
    """Each cycle is told once, at the level its outcome and novelty call for."""
    log = RecordingLog()
    result = CycleResult(trigger, outcome, _verdict(outcome is not Outcome.REJECTED),
                         new_rejection=new)  # fmt: skip
    log_result(log, result, _settings())
    assert [c.level for c in log.calls] == [level]
    assert log.calls[0].fields["outcome"] == str(outcome)
    assert log.calls[0].fields["trigger"] == trigger
    if outcome is Outcome.REJECTED:
        assert log.calls[0].fields["problems"] == ["/x/tls.key bad; fix"]


# --------------------------------------------------------------------------- the module's server


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """One server for the module, reading a kubelet-style secret."""
    missing = pg_missing()
    if missing is not None:
        pytest.skip(missing)
    for made in make_rig("certreload-daemon-"):
        made.server.start()
        yield made


@pytest.fixture
def fresh(rig: Rig) -> Rig:
    """The module's rig with a new valid set published and served before the test."""
    leaf = rig.publish()
    rig.server.reload_and_wait()
    rig.wait_served(leaf, "the test's starting set")
    return rig


# --------------------------------------------------------------------------- in-process


def _inprocess_settings(rig: Rig, *extra: str) -> Settings:
    argv = ["--cert", str(rig.cert), "--key", str(rig.key), "--ca", str(rig.ca_path),
            "--san", NAME, "--dsn", rig.server.superuser_dsn(), "--pg-user", "postgres",
            "--server-addr", f"127.0.0.1:{rig.server.port}", *extra]  # fmt: skip
    return settings_mod.load(argv, {})


@pytest.mark.pg
def test_reconciler_cycles_in_process(fresh: Rig) -> None:
    """start: unchanged; a rotation on 'watch': reloaded and served; again: in sync."""
    rig = fresh
    reconciler = Reconciler(_inprocess_settings(rig))
    first = reconciler.cycle("start")
    assert first.outcome is Outcome.UNCHANGED
    assert first.served_before == rig.current.fingerprint_sha256
    assert first.exit_code == 0

    leaf = rig.publish()
    second = reconciler.cycle("watch")
    assert second.outcome is Outcome.RELOADED, second.error
    assert second.served_after == leaf.fingerprint_sha256
    assert second.reload_attempted
    assert rig.serves(leaf)

    third = reconciler.cycle("watch")
    assert third.outcome is Outcome.UNCHANGED
    assert not third.reload_attempted


@pytest.mark.pg
def test_reconciler_rejection_is_new_once_per_content(fresh: Rig) -> None:
    """A bad set: REJECTED and new the first time only; another bad content is new again."""
    rig = fresh
    served = rig.current
    reconciler = Reconciler(_inprocess_settings(rig))
    assert reconciler.cycle("start").outcome is Outcome.UNCHANGED  # the control

    rig.publish_files(served.cert_pem, rig.new_leaf().key_pem, rig.ca.cert_pem)
    first = reconciler.cycle("watch")
    again = reconciler.cycle("timer")
    assert (first.outcome, first.new_rejection) == (Outcome.REJECTED, True)
    assert (again.outcome, again.new_rejection) == (Outcome.REJECTED, False)
    assert first.exit_code == 2
    assert [p.file for p in first.verdict.problems] == [str(rig.key)]

    other = rig.new_leaf(cn="elsewhere", dns_sans=["elsewhere"])
    rig.publish_files(other.cert_pem, other.key_pem, rig.ca.cert_pem)
    third = reconciler.cycle("watch")
    assert (third.outcome, third.new_rejection) == (Outcome.REJECTED, True)
    assert rig.serves(served)


@pytest.mark.pg
def test_reconciler_stop_interrupts_the_settle(fresh: Rig) -> None:
    """With stop set, a rejected set is reported at once instead of re-read for a second."""
    rig = fresh
    rig.publish_files(rig.current.cert_pem, rig.new_leaf().key_pem, rig.ca.cert_pem)
    reconciler = Reconciler(_inprocess_settings(rig))
    reconciler.stop.set()
    result = reconciler.cycle("watch")
    assert result.outcome is Outcome.REJECTED
    assert reconciler.halted()
    control = Reconciler(_inprocess_settings(rig))
    assert not control.halted()


# --------------------------------------------------------------------------- rotations


@pytest.mark.pg
def test_kubelet_rotations_each_served(fresh: Rig) -> None:
    """Five kubelet swaps: each served (openssl and read_served agree), each on a file event."""
    rig = fresh
    daemon = rig.start(interval=300)  # no timer cycle: file events alone must do it
    address = Address("127.0.0.1", rig.server.port)
    for _ in range(5):
        leaf = rig.publish()

        def reloaded(event: Event, fp: str = leaf.fingerprint_sha256) -> bool:
            return event.get("outcome") == "reloaded" and event.get("served_after_sha256") == fp

        line = daemon.wait_for(reloaded, "the rotation's 'reloaded' line")
        assert line["trigger"] == "watch"
        assert line["level"] == "info"
        assert line["files_sha256"] == leaf.fingerprint_sha256
        assert rig.served() == leaf.fingerprint_sha256
        assert read_served(address).fingerprint_sha256 == leaf.fingerprint_sha256
    assert daemon.stop() == 0
    events = daemon.events()
    assert not [e for e in events if e.get("level") in ("error", "warning")]
    assert events[-1]["event"] == "stopped"


@pytest.mark.pg
def test_daemon_runs_as_the_postgres_user(fresh: Rig) -> None:
    """The daemon's uid is postgres, and it reads the root:postgres 0640 key (fsGroup)."""
    rig = fresh
    daemon = rig.start()
    status = open(f"/proc/{daemon.pid}/status", encoding="ascii").read()  # noqa: SIM115
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert {int(u) for u in uids} == {rig.uid}
    assert os.stat(os.path.realpath(rig.key)).st_uid == 0
    started = daemon.wait_for(lambda e: e.get("trigger") == "start", "the first cycle")
    assert started["outcome"] == "unchanged"
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- rejections


@dataclass(frozen=True)
class BadSet:
    """A rejected category: the files, which file the error must name, a word it must say."""

    cert: bytes
    key: bytes
    ca: bytes
    names: str  # "cert", "key" or "ca"
    says: str
    key_mode: int = 0o640
    key_owned_by_postgres: bool = False


def _bad_set(kind: str, rig: Rig) -> BadSet:
    past = datetime.now(UTC) - timedelta(days=30)
    good = rig.new_leaf()
    ca = rig.ca.cert_pem
    if kind == "key_mismatch":
        return BadSet(good.cert_pem, rig.new_leaf().key_pem, ca, "key", "does not belong")
    if kind == "expired":
        old = rig.new_leaf(not_before=past - timedelta(days=30), not_after=past)
        return BadSet(old.cert_pem, old.key_pem, ca, "cert", "expired")
    if kind == "wrong_ca":
        stranger = rig.new_leaf(certs.make_root_ca(cn="another root"))
        return BadSet(stranger.cert_pem, stranger.key_pem, ca, "cert", "verify-full")
    if kind == "name_not_covered":
        other = rig.new_leaf(cn="other-host", dns_sans=["other-host"])
        return BadSet(other.cert_pem, other.key_pem, ca, "cert", f"'{NAME}'")
    if kind == "key_0644_owned_by_postgres":
        return BadSet(good.cert_pem, good.key_pem, ca, "key", "0644",
                      key_mode=0o644, key_owned_by_postgres=True)  # fmt: skip
    if kind == "encrypted_key":
        return BadSet(good.cert_pem, good.key_pem_encrypted(), ca, "key", "encrypted")
    if kind == "truncated_cert":
        return BadSet(certs.truncated(good.cert_pem), good.key_pem, ca, "cert", "truncated")
    if kind == "empty_ca":
        return BadSet(good.cert_pem, good.key_pem, b"", "ca", "empty")
    raise AssertionError(kind)


CATEGORIES = [
    "key_mismatch",
    "expired",
    "wrong_ca",
    "name_not_covered",
    "key_0644_owned_by_postgres",
    "encrypted_key",
    "truncated_cert",
    "empty_ca",
]


def _is_rejection_error(event: Event) -> bool:
    return event.get("outcome") == "rejected" and event.get("level") == "error"


@pytest.mark.pg
@pytest.mark.parametrize("kind", CATEGORIES)
def test_rejected_category_keeps_old_cert_then_good_set_served(fresh: Rig, kind: str) -> None:
    """A bad set: one error line naming the file, the old certificate kept; then a good set."""
    rig = fresh
    served = rig.current
    daemon = rig.start("--log-level", "debug", interval=1)
    bad = _bad_set(kind, rig)
    owner = (rig.uid, rig.gid) if bad.key_owned_by_postgres else None
    mark = len(daemon.events())
    rig.publish_files(bad.cert, bad.key, bad.ca, key_mode=bad.key_mode, key_owner=owner)

    error = daemon.wait_for(_is_rejection_error, "the rejection's error line", after=mark)
    named = {"cert": rig.cert, "key": rig.key, "ca": rig.ca_path}[bad.names]
    text = problems_text(error)
    assert str(named) in text
    assert bad.says in text
    assert "certificate set rejected" in error["event"]
    # the timer sees the same content again: reminded as a warning, never a second error
    daemon.wait_for(
        lambda e: e.get("outcome") == "rejected" and e.get("trigger") == "timer",
        "a timer cycle on the same bad set",
        after=daemon.events().index(error) + 1,
    )
    assert daemon.count(_is_rejection_error) == 1
    assert rig.serves(served)
    assert daemon.running()

    # the control: a good set published the same way is served
    good = rig.publish()
    rig.wait_served(good, "a good set after the bad one")
    daemon.wait_for(lambda e: e.get("outcome") == "reloaded", "the 'reloaded' line", after=mark)
    assert daemon.stop() == 0
    assert daemon.count(_is_rejection_error) == 1
    output = daemon.output()
    assert "PRIVATE KEY" not in output
    assert "ENCRYPTED" not in output


@pytest.mark.pg
def test_one_error_line_per_distinct_bad_content(fresh: Rig) -> None:
    """Bad A: one error; A again in a new generation: none; bad B: one more; then good."""
    rig = fresh
    served = rig.current
    daemon = rig.start("--log-level", "debug", interval=300)
    mismatch = rig.new_leaf().key_pem
    rig.publish_files(served.cert_pem, mismatch, rig.ca.cert_pem)
    daemon.wait_for(_is_rejection_error, "bad A's error")

    mark = len(daemon.events())
    rig.publish_files(served.cert_pem, mismatch, rig.ca.cert_pem)  # same bytes, new folder
    daemon.wait_for(
        lambda e: e.get("outcome") == "rejected" and e.get("trigger") == "watch",
        "a cycle on bad A's second generation",
        after=mark,
    )
    assert daemon.count(_is_rejection_error) == 1

    other = rig.new_leaf(cn="other-host", dns_sans=["other-host"])
    rig.publish_files(other.cert_pem, other.key_pem, rig.ca.cert_pem)
    second = daemon.wait_for(_is_rejection_error, "bad B's error", after=mark)
    assert str(rig.cert) in problems_text(second)
    assert daemon.count(_is_rejection_error) == 2
    assert rig.serves(served)

    good = rig.publish()
    rig.wait_served(good, "a good set after two bad ones")
    assert daemon.stop() == 0
    assert daemon.count(_is_rejection_error) == 2


# --------------------------------------------------------------------------- --once


@pytest.mark.pg
def test_once_exits_0_when_already_served(fresh: Rig) -> None:
    """--once on a server presenting the files' certificate: exit 0, outcome unchanged."""
    rig = fresh
    result = rig.once()
    assert result.returncode == 0, result.stderr
    lines = [e for e in parse_events(result.stderr) if e.get("trigger") == "start"]
    assert [e["outcome"] for e in lines] == ["unchanged"]
    assert lines[0]["level"] == "info"


@pytest.mark.pg
def test_once_exits_0_when_it_reloaded(fresh: Rig) -> None:
    """--once after a rotation: exit 0, outcome reloaded, and the server presents it."""
    rig = fresh
    leaf = rig.publish()
    assert not rig.serves(leaf)  # the server has not reloaded by itself
    result = rig.once()
    assert result.returncode == 0, result.stderr
    lines = [e for e in parse_events(result.stderr) if e.get("trigger") == "start"]
    assert [e["outcome"] for e in lines] == ["reloaded"]
    assert lines[0]["served_after_sha256"] == leaf.fingerprint_sha256
    assert rig.serves(leaf)


@pytest.mark.pg
def test_once_exits_2_for_a_rejected_set(fresh: Rig) -> None:
    """--once on a key mismatch: exit 2, one error line naming tls.key, nothing reloaded."""
    rig = fresh
    served = rig.current
    before = rig.server.conf_load_time()
    rig.publish_files(served.cert_pem, rig.new_leaf().key_pem, rig.ca.cert_pem)
    result = rig.once()
    assert result.returncode == 2, result.stderr
    errors = rejected_errors(parse_events(result.stderr))
    assert len(errors) == 1
    assert str(rig.key) in problems_text(errors[0])
    assert rig.server.conf_load_time() == before  # no pg_reload_conf()
    assert rig.serves(served)
