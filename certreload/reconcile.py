"""One reconcile cycle: keep the certificate the server presents equal to the valid files.

The cycle: read one generation of the set -> verdict -> compare with what the server presents
-> ``pg_reload_conf()`` when they differ -> confirm by reading what the server now presents.
It returns a ``CycleResult``; the loop (daemon.py) decides when cycles run.

``--once`` exit codes: 0 the server presents the valid files' certificate (reloaded if
needed); 1 reloaded but the server still presents another certificate; 2 the set was
rejected (nothing reloaded); 3 the server could not be reached or reloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from certreload import snapshot
from certreload.check import policy_of
from certreload.pem import CertInfo, describe_der
from certreload.served import Served, ServedError, read_served
from certreload.settings import Settings
from certreload.snapshot import Snapshot
from certreload.verdict import Verdict, judge

SETTLE_SECONDS = 1.0  # how long a rejected new set is re-read before it is reported
SETTLE_STEP = 0.1
SETTLE_CAP = 10.0  # a set that keeps changing is reported after this long at most
CONFIRM_SECONDS = 2.0  # how long to wait for the server to present the new certificate
CONFIRM_STEP = 0.02


class Outcome(StrEnum):
    """What a cycle found or did."""

    UNCHANGED = "unchanged"  # the server presents the valid files' certificate
    RELOADED = "reloaded"  # reloaded, and the server now presents it
    RELOADED_UNCONFIRMED = "reloaded_unconfirmed"  # --server-addr none: cannot confirm
    REJECTED = "rejected"  # the set is not valid: nothing reloaded
    RELOAD_FAILED = "reload_failed"  # reloaded, but the server presents another certificate
    UNREACHABLE = "unreachable"  # the server could not be read, connected to or logged into
    NOT_PERMITTED = "not_permitted"  # the role may not call pg_reload_conf()
    INSTALL_FAILED = "install_failed"  # --install-dir: the set could not be installed
    SUPERSEDED = "superseded"  # the files changed again while the reload was confirmed


EXIT_CODES = {
    Outcome.UNCHANGED: 0,
    Outcome.RELOADED: 0,
    Outcome.RELOADED_UNCONFIRMED: 0,
    Outcome.RELOAD_FAILED: 1,
    Outcome.REJECTED: 2,
    Outcome.UNREACHABLE: 3,
    Outcome.NOT_PERMITTED: 3,
    Outcome.INSTALL_FAILED: 3,
    Outcome.SUPERSEDED: 1,
}


class Step(StrEnum):
    """What a cycle must do with a valid set."""

    IN_SYNC = "in_sync"  # nothing changed since the set was applied
    PROBE = "probe"  # read what the server presents; reload if it is not the files'
    RELOAD = "reload"  # the content changed since it was applied: reload, then confirm


def plan(digest: str, applied: str | None, trigger: str, can_probe: bool) -> Step:
    """Decide a valid set's step (pure).

    A file event is the fast path: new content is reloaded at once, and unchanged content is
    news of nothing (the kubelet's first event of a swap comes before the swap).  Every other
    trigger reads what the server presents first, so a server that restarted on the files,
    or on other files, or was reloaded by someone else, is noticed.
    """
    if not can_probe:
        return Step.IN_SYNC if digest == applied else Step.RELOAD
    if trigger == "watch" and applied is not None:
        return Step.IN_SYNC if digest == applied else Step.RELOAD
    return Step.PROBE


@dataclass(frozen=True)
class CycleResult:
    """One cycle's outcome, for the log line, the metrics and the exit code."""

    trigger: str
    outcome: Outcome
    verdict: Verdict
    served_before: str | None = None  # sha256 of what the server presented before
    served_after: str | None = None  # ... and after a reload
    error: str | None = None
    duration: float = 0.0
    new_rejection: bool = False  # first time this rejected content was seen
    reload_attempted: bool = False  # pg_reload_conf() was called (or tried)
    served_info: CertInfo | None = None  # what the server presented last, when read
    installed: bool = False  # --install-dir holds this valid set after the cycle
    holds_installed: bool = False  # --install-dir holds a set certreload installed (any)
    pgbouncer: Outcome | None = None  # PgBouncer's outcome, when it is a target
    pgbouncer_error: str | None = None
    ca_rotation: str | None = None  # the new leaf is not trusted by the previous ca.crt
    hook_error: str | None = None  # --on-change failed (nothing is undone)

    @property
    def exit_code(self) -> int:
        """--once's exit code: the worse of the server's and PgBouncer's."""
        codes = [EXIT_CODES[self.outcome]]
        if self.pgbouncer is not None:
            codes.append(EXIT_CODES[self.pgbouncer])
        return max(codes)


@dataclass
class _State:
    applied_digest: str | None = None  # the last set confirmed (or, unconfirmed, reloaded)
    rejected_digest: str | None = None  # the last rejected content, reported once
    served: str | None = None  # sha256 of what the server presented when last read
    applied_ca: bytes | None = None  # ca.crt of the set last applied: what clients were given
    hooked_digest: str | None = None  # the last set --on-change ran for
    reloaded_digest: str | None = None  # the last set the server or PgBouncer was reloaded for


@dataclass
class Reconciler:
    """Runs cycles; holds only what must be remembered between them."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    state: _State = field(default_factory=_State)
    # Set by a signal handler, which must not take locks (Event.set does): a plain flag,
    # seen by the waits below within one step.
    halt: bool = False

    def halted(self) -> bool:
        """Was a stop asked for (by another thread or a signal)?"""
        return self.halt or self.stop.is_set()

    def _nap(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was asked for."""
        return self.stop.wait(seconds) or self.halt

    def _judge(self) -> tuple[Snapshot, Verdict]:
        s = self.settings
        snap = snapshot.read(s.cert, s.key, s.ca)
        return snap, judge(snap, policy_of(s), self.clock())

    def _settled_verdict(self) -> tuple[Snapshot, Verdict, bool]:
        """A verdict; a rejected new set is re-read until it stops changing for SETTLE_SECONDS.

        A non-atomic writer (cp, certbot's live/ links) leaves a half-written set for a
        moment; a kubelet swap never does, and a valid set is never delayed.
        """
        snap, verdict = self._judge()
        if verdict.valid or verdict.digest == self.state.rejected_digest:
            return snap, verdict, False
        started = time.monotonic()
        deadline = started + SETTLE_SECONDS
        seen = _generation(snap)
        while time.monotonic() < deadline and not self._nap(SETTLE_STEP):
            snap, verdict = self._judge()
            if verdict.valid or verdict.digest == self.state.rejected_digest:
                return snap, verdict, False
            if _generation(snap) != seen:  # a writer is still at work: give it the time again
                seen = _generation(snap)
                deadline = min(time.monotonic() + SETTLE_SECONDS, started + SETTLE_CAP)
        new = verdict.digest != self.state.rejected_digest
        self.state.rejected_digest = verdict.digest
        return snap, verdict, new

    def cycle(self, trigger: str) -> CycleResult:
        started = time.monotonic()
        result = self._cycle(trigger)
        folder = self.settings.install_dir
        if folder is not None:
            from certreload.install import installed_digest

            result = dataclasses.replace(
                result, holds_installed=installed_digest(folder) is not None
            )
        return dataclasses.replace(result, duration=time.monotonic() - started)

    def _cycle(self, trigger: str) -> CycleResult:
        snap, verdict, new_rejection = self._settled_verdict()
        if not verdict.valid:
            return CycleResult(
                trigger,
                Outcome.REJECTED,
                verdict,
                new_rejection=new_rejection,
                served_info=self._served_info() if trigger != "watch" else None,
                installed=self._installed(verdict.digest),
            )
        self.state.rejected_digest = None
        if self.settings.install_dir is not None:
            from certreload.install import InstallError, install

            if not self._installed(verdict.digest):
                try:
                    install(self.settings.install_dir, snap)
                except InstallError as exc:
                    return CycleResult(trigger, Outcome.INSTALL_FAILED, verdict, error=str(exc))
        previous_ca = self.state.applied_ca
        result = self._server(trigger, verdict, snap.changed_at)
        result = dataclasses.replace(result, installed=self._installed(verdict.digest))
        pgbouncer = self.settings.pgbouncer_addr is not None and self.settings.pgbouncer_dsn
        # superseded: the server read newer files, and the next cycle takes them for both
        if pgbouncer and result.outcome is not Outcome.SUPERSEDED:
            outcome, error = self._pgbouncer(verdict, trigger)
            result = dataclasses.replace(result, pgbouncer=outcome, pgbouncer_error=error)
        if Outcome.RELOADED in (result.outcome, result.pgbouncer):
            self.state.reloaded_digest = verdict.digest
        if result.outcome in (Outcome.RELOADED, Outcome.RELOADED_UNCONFIRMED, Outcome.UNCHANGED):
            ca_data = snap.ca.data if snap.ca is not None else None
            if result.outcome is not Outcome.UNCHANGED and previous_ca is not None:
                result = dataclasses.replace(
                    result, ca_rotation=ca_rotation_warning(snap, previous_ca)
                )
            self.state.applied_ca = ca_data
        # --on-change: once a set certreload reloaded is presented by every target (PgBouncer
        # may catch up in a later cycle)
        applied = result.outcome in (Outcome.RELOADED, Outcome.UNCHANGED) and result.exit_code == 0
        if applied and self.state.reloaded_digest == verdict.digest:
            result = dataclasses.replace(result, hook_error=self._on_change(verdict))
        return result

    def _installed(self, digest: str) -> bool:
        from certreload.install import installed_digest

        folder = self.settings.install_dir
        return folder is not None and installed_digest(folder) == digest

    def _server(self, trigger: str, verdict: Verdict, changed_at: float) -> CycleResult:
        """Make the server present the valid set: probe, reload and confirm as needed.

        The server presenting the files' leaf does not prove that it loaded their ca.crt or
        intermediates.  Content that certreload has not yet seen applied (at start, or after
        a failed reload) is therefore reloaded when the server last loaded its configuration
        before the files last changed.
        """
        assert verdict.leaf is not None
        wanted = verdict.leaf.fingerprint_sha256
        address = self.settings.server_addr
        step = plan(verdict.digest, self.state.applied_digest, trigger, address is not None)
        if step is Step.IN_SYNC:
            return CycleResult(trigger, Outcome.UNCHANGED, verdict, self.state.served)
        before = self.state.served
        if step is Step.PROBE:
            assert address is not None
            try:
                served = read_served(address)
            except ServedError as exc:
                return CycleResult(trigger, Outcome.UNREACHABLE, verdict, error=str(exc))
            before = self.state.served = served.fingerprint_sha256
            if before == wanted:
                if verdict.digest != self.state.applied_digest:
                    loaded = self._loaded_since(changed_at)
                    if loaded is False:
                        return self._reload(trigger, verdict, before)
                    if loaded is True:
                        self.state.applied_digest = verdict.digest
                return CycleResult(
                    trigger, Outcome.UNCHANGED, verdict, before, before, served_info=verdict.leaf
                )
        return self._reload(trigger, verdict, before)

    def _pgbouncer(self, verdict: Verdict, trigger: str) -> tuple[Outcome, str | None]:
        """The same for PgBouncer: RELOAD on its admin console, confirmed by what it presents."""
        from certreload import pg

        address, dsn = self.settings.pgbouncer_addr, self.settings.pgbouncer_dsn
        assert address is not None
        assert dsn is not None
        assert verdict.leaf is not None
        wanted = verdict.leaf.fingerprint_sha256
        try:
            if read_served(address).fingerprint_sha256 == wanted:
                return Outcome.UNCHANGED, None
        except ServedError as exc:
            return Outcome.UNREACHABLE, f"PgBouncer: {exc}"
        try:
            pg.pgbouncer_reload(dsn)
        except pg.PgError as exc:
            outcome = Outcome.NOT_PERMITTED if exc.kind == "permission" else Outcome.UNREACHABLE
            return outcome, f"PgBouncer RELOAD failed: {exc}"
        deadline = time.monotonic() + CONFIRM_SECONDS
        after = None
        while not self.halted():
            try:
                after = read_served(address).fingerprint_sha256
            except ServedError:
                after = None
            if after == wanted:
                return Outcome.RELOADED, None
            if time.monotonic() >= deadline or self._nap(CONFIRM_STEP):
                break
        return Outcome.RELOAD_FAILED, (
            f"after RELOAD PgBouncer at {address} still presents "
            f"{'sha256 ' + after[:16] + '…' if after else 'nothing readable'}: check that "
            "client_tls_cert_file and client_tls_key_file in pgbouncer.ini name the files "
            "certreload checks (or its --install-dir)"
        )

    def _on_change(self, verdict: Verdict) -> str | None:
        """Run --on-change once per applied set; return its failure, if any."""
        command = self.settings.on_change
        if not command or verdict.digest == self.state.hooked_digest or verdict.leaf is None:
            return None
        self.state.hooked_digest = verdict.digest
        leaf = verdict.leaf
        env = {
            **os.environ,
            "CERTRELOAD_FINGERPRINT_SHA256": leaf.fingerprint_sha256,
            "CERTRELOAD_NOT_AFTER": leaf.not_after.isoformat(),
            "CERTRELOAD_SUBJECT": leaf.subject,
            "CERTRELOAD_SERIAL": leaf.serial,
            "CERTRELOAD_CERT": str(self.settings.install_dir / "tls.crt")
            if self.settings.install_dir
            else str(self.settings.cert),
        }
        for secret in ("CERTRELOAD_DSN", "CERTRELOAD_PGBOUNCER_DSN", "PGPASSWORD"):
            env.pop(secret, None)
        try:
            # its own session, so that a timeout kills the hook's children too, not only sh
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            return f"--on-change could not be started: {exc.strerror}"
        try:
            out, err = proc.communicate(timeout=self.settings.on_change_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return f"--on-change did not finish in {self.settings.on_change_timeout:g} s; killed"
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-300:]
            return f"--on-change exited {done.returncode}" + (f": {tail}" if tail else "")
        return None

    def _served_info(self) -> CertInfo | None:
        """What the server presents, for the metrics; None when it cannot be read."""
        if self.settings.server_addr is None:
            return None
        try:
            served = read_served(self.settings.server_addr)
        except ServedError:
            return None
        self.state.served = served.fingerprint_sha256
        return describe_der(served.der)

    def _reload(self, trigger: str, verdict: Verdict, before: str | None) -> CycleResult:
        """pg_reload_conf(), then wait until the server presents the files' certificate.

        When the leaf is the one already served (only ca.crt or the intermediates changed),
        the proof is that the server processed the reload: pg_conf_load_time() moved.
        """
        from certreload import pg

        assert verdict.leaf is not None
        wanted = verdict.leaf.fingerprint_sha256
        address = self.settings.server_addr
        try:
            facts = pg.reload(self.settings.dsn)
        except pg.PgError as exc:
            return _pg_failure(trigger, verdict, exc, before)
        if address is None:
            self.state.applied_digest = verdict.digest
            return CycleResult(
                trigger, Outcome.RELOADED_UNCONFIRMED, verdict, reload_attempted=True
            )
        deadline = time.monotonic() + CONFIRM_SECONDS
        served: Served | None = None
        while not self.halted():
            try:
                served = read_served(address)
            except ServedError:
                served = None
            after = served.fingerprint_sha256 if served else None
            if after == wanted and (before != wanted or self._processed(facts)):
                self.state.served = after
                self.state.applied_digest = verdict.digest
                return CycleResult(
                    trigger,
                    Outcome.RELOADED,
                    verdict,
                    before,
                    after,
                    reload_attempted=True,
                    served_info=verdict.leaf,
                )
            if self._files_changed(verdict.digest):
                # The server read the files after they changed again: it may present a newer
                # set, never this one.  Not a failure; the next cycle takes the new set.
                self.state.served = after
                return CycleResult(
                    trigger, Outcome.SUPERSEDED, verdict, before, after, reload_attempted=True
                )
            if time.monotonic() >= deadline or self._nap(CONFIRM_STEP):
                break
        after = self.state.served = served.fingerprint_sha256 if served else None
        return CycleResult(
            trigger,
            Outcome.RELOAD_FAILED,
            verdict,
            before,
            after,
            self._why_not_served(facts, after),
            reload_attempted=True,
            served_info=describe_der(served.der) if served else None,
        )

    def _files_changed(self, digest: str) -> bool:
        """Does the set in the files differ from the one with ``digest``?"""
        if self.settings.install_dir is not None:
            return False  # the server reads the installed copy, which only we change
        s = self.settings
        return snapshot.read(s.cert, s.key, s.ca).digest != digest

    def _loaded_since(self, changed_at: float) -> bool | None:
        """Did the server load its configuration after the files last changed?

        None when the server cannot be asked; the next cycle asks again.
        """
        from certreload import pg

        try:
            loaded = pg.conf_load_time(self.settings.dsn)
        except pg.PgError:
            return None
        return loaded.timestamp() >= changed_at

    def _processed(self, facts: Any) -> bool:
        from certreload import pg

        try:
            return bool(pg.conf_load_time(self.settings.dsn) > facts.conf_load_time)
        except pg.PgError:
            return False

    def _why_not_served(self, facts: Any, after: str | None) -> str:
        from certreload import pg

        served = f"sha256 {after[:16]}…" if after else "no certificate it could be read"
        causes = []
        folder = self.settings.install_dir
        for setting, ours in (
            (facts.ssl_cert_file, folder / "tls.crt" if folder else self.settings.cert),
            (facts.ssl_key_file, folder / "tls.key" if folder else self.settings.key),
        ):
            if (
                setting
                and os.path.isabs(setting)
                and os.path.realpath(setting) != os.path.realpath(ours)
            ):
                causes.append(
                    f"the server reads {setting}, not {ours}: point ssl_cert_file/ssl_key_file "
                    "at the files certreload checks"
                )
        try:
            processed = pg.conf_load_time(self.settings.dsn) > facts.conf_load_time
        except pg.PgError:
            processed = None
        if processed is False:
            causes.append(
                "the server has not processed the reload yet (pg_conf_load_time did not move)"
            )
        else:
            causes.append(
                "the server could not load the files: look for 'SSL configuration was not "
                "reloaded' in its log (a key file owner/mode PostgreSQL refuses is the usual "
                "cause)"
            )
        return (
            f"after pg_reload_conf() the server still presents {served}, not the files' "
            "certificate; likely: " + "; ".join(causes)
        )


def _generation(snap: Snapshot) -> tuple[str, tuple[str | None, ...]]:
    """What changes when a writer touches the set: the contents, or where the links point."""
    return snap.digest, tuple(item.resolved for item in snap.files)


def ca_rotation_warning(snap: Snapshot, previous_ca: bytes | None) -> str | None:
    """Say so when the new leaf does not chain to the CA bundle clients were given before."""
    from certreload.pem import UnreadableError, chain_path, parse_certs

    if previous_ca is None or snap.cert.data is None:
        return None
    try:
        certs = parse_certs(snap.cert.data)
        trusted = parse_certs(previous_ca)
    except UnreadableError:
        return None
    _, complete = chain_path(certs[0], certs[1:], trusted, datetime.now(UTC))
    if complete:
        return None
    return (
        f"the new certificate's issuer '{certs[0].info.issuer}' is not in the CA bundle that "
        "clients were given until now: clients still holding the previous ca.crt will refuse "
        "the server. Safe order: give clients a ca.crt holding both CAs first, then switch "
        "the leaf"
    )


def _pg_failure(trigger: str, verdict: Verdict, exc: Any, before: str | None) -> CycleResult:
    if exc.kind == "permission":
        message = (
            f"permission denied to reload the server: {exc}; grant it with "
            "GRANT EXECUTE ON FUNCTION pg_reload_conf() TO <the role in --dsn>, or use a superuser"
        )
        return CycleResult(
            trigger, Outcome.NOT_PERMITTED, verdict, before, error=message, reload_attempted=True
        )
    if exc.kind == "auth":
        message = f"cannot log in to reload the server: {exc}; check the user and password in --dsn"
    else:
        message = f"cannot reload the server: {exc}"
    return CycleResult(
        trigger, Outcome.UNREACHABLE, verdict, before, error=message, reload_attempted=True
    )
