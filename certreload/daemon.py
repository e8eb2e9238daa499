"""The long-running loop: wakes on the timer, file events and signals, and runs cycles.

Every trigger (start, the interval timer, a file event, SIGHUP) runs the same cycle
(reconcile.py); a trigger only wakes the loop.  Each cycle's result is logged once, handed
to the listeners (metrics) and told to systemd.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from certreload import __version__, logs
from certreload.notify import Notifier
from certreload.reconcile import CycleResult, Outcome, Reconciler
from certreload.settings import Settings

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 30.0
EXIT_LISTEN = 1  # --listen could not bind: may be passing, so systemd may restart it


_TROUBLE = frozenset(
    {
        Outcome.REJECTED,
        Outcome.RELOAD_FAILED,
        Outcome.UNREACHABLE,
        Outcome.NOT_PERMITTED,
        Outcome.INSTALL_FAILED,
    }
)


def log_result(
    log: Any, result: CycleResult, settings: Settings, previous: Outcome | None = None
) -> None:
    """The canonical line of a cycle, plus the rejection details once per distinct content.

    ``previous`` is the last cycle's outcome: the first quiet cycle after trouble (server
    unreachable, reload refused or not confirmed, set rejected) is told at info, so that
    log-based alerts can clear.
    """
    verdict = result.verdict
    fields: dict[str, Any] = {
        "trigger": result.trigger,
        "outcome": str(result.outcome),
        "duration_ms": round(result.duration * 1000, 1),
    }
    if verdict.leaf is not None:
        fields["files_sha256"] = verdict.leaf.fingerprint_sha256
        fields["not_after"] = verdict.leaf.not_after.isoformat()
    if result.served_before is not None:
        fields["served_before_sha256"] = result.served_before
    if result.served_after is not None and result.served_after != result.served_before:
        fields["served_after_sha256"] = result.served_after
    if result.error:
        fields["error"] = result.error
    if result.pgbouncer is not None:
        fields["pgbouncer_outcome"] = str(result.pgbouncer)
    if result.pgbouncer_error:
        fields["pgbouncer_error"] = result.pgbouncer_error
    if settings.install_dir is not None:
        fields["installed"] = result.installed
    if result.outcome is Outcome.REJECTED:
        fields["problems"] = [str(p) for p in verdict.problems]
        if result.new_rejection:
            log.error(
                "certificate set rejected; the server keeps its current certificate", **fields
            )
        elif result.trigger in ("timer", "signal", "start"):
            log.warning("certificate set still rejected", **fields)
        else:
            log.debug("cycle", **fields)
        return
    if result.ca_rotation:
        log.warning("CA rotation hazard", problem=result.ca_rotation)
    if result.hook_error:
        log.error("--on-change failed; nothing is undone", error=result.hook_error)
    for warning in verdict.warnings:
        if warning.code == "expiring" and result.trigger in ("start", "timer"):
            log.warning("certificate expiring", problem=str(warning))
    if result.outcome is Outcome.UNCHANGED and result.pgbouncer is Outcome.RELOADED:
        log.info("PgBouncer reloaded", **fields)
    elif result.outcome is Outcome.UNCHANGED:
        if previous in _TROUBLE:
            fields["previous"] = str(previous)
        if previous in _TROUBLE or result.trigger in ("start", "signal"):
            log.info("server presents the files' certificate", **fields)
        else:
            log.debug("cycle", **fields)
    elif result.outcome in (Outcome.RELOADED, Outcome.RELOADED_UNCONFIRMED):
        log.info("certificate reloaded", **fields)
    elif result.outcome is Outcome.SUPERSEDED:
        log.info("files changed again during the reload; taking the newer set", **fields)
    else:
        log.error("cycle failed", **fields)
    if result.pgbouncer not in (None, Outcome.UNCHANGED, Outcome.RELOADED):
        log.error("PgBouncer not updated", **fields)


class Daemon:
    """The long-running loop: wakes on the timer, file events and signals."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.reconciler = Reconciler(settings)
        self.notifier = notifier or Notifier({})
        # Triggers from the watch thread and from signal handlers.  SimpleQueue.put is
        # reentrant, so a signal handler may call it whatever the main thread holds.
        self._triggers: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.log = logs.get()
        self.listeners: list[Callable[[CycleResult], None]] = []
        self.on_watch_event: Callable[[], None] = lambda: None
        self._previous: Outcome | None = None  # the last cycle's outcome, for log_result

    @property
    def stopping(self) -> bool:
        return self.reconciler.halted()

    def poke(self, trigger: str) -> None:
        """Ask for a cycle as soon as possible (safe from threads and signal handlers)."""
        self._triggers.put(trigger)

    def _watch_event(self) -> None:
        self.on_watch_event()
        self.poke("watch")

    def request_stop(self) -> None:
        """Stop after (or during) the current cycle; safe from signal handlers."""
        self.reconciler.halt = True
        self._triggers.put("stop")

    def _next_trigger(self, timeout: float) -> str | None:
        """Sleep until a trigger arrives or ``timeout``; ping systemd's watchdog meanwhile.

        Triggers that piled up are taken together: a signal outranks a file event, which
        outranks the timer; any number of them makes one cycle.
        """
        ping = self.notifier.watchdog_interval
        deadline = time.monotonic() + timeout
        got: set[str] = set()
        while not got:
            left = deadline - time.monotonic()
            with contextlib.suppress(queue.Empty):
                got.add(self._triggers.get(timeout=max(0.0, min(left, ping) if ping else left)))
            if ping:
                self.notifier.watchdog()
            if time.monotonic() >= deadline:
                break
        while True:
            try:
                got.add(self._triggers.get_nowait())
            except queue.Empty:
                break
        if "stop" in got or self.stopping:
            return None
        return next((t for t in ("signal", "watch") if t in got), "timer")

    def _delay(self, result: CycleResult, failures: int) -> float:
        if result.outcome is Outcome.SUPERSEDED:
            return 0.0  # take the newer set at once
        if result.outcome is Outcome.UNREACHABLE:
            backoff = BACKOFF_FIRST * 2 ** max(failures - 1, 0)
            return float(min(backoff, BACKOFF_CAP, self.settings.interval))
        return self.settings.interval

    def install_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.poke("signal")

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def run_once(self) -> int:
        result = self.reconciler.cycle("start")
        for _ in range(3):  # the files changed during the pass: take the newer set
            if result.outcome is not Outcome.SUPERSEDED:
                break
            self._tell(result)
            result = self.reconciler.cycle("start")
        self._tell(result)
        return result.exit_code

    def _tell(self, result: CycleResult) -> None:
        log_result(self.log, result, self.settings, self._previous)
        self._previous = result.outcome
        for listener in self.listeners:
            listener(result)

    def run_forever(self) -> int:
        from certreload.watch import Watcher

        watcher = Watcher(self.settings.watched_dirs, self._watch_event)
        watch_problems: set[str] = set()
        trigger: str | None = "start"
        failures = 0
        try:
            while trigger is not None:
                for problem in watcher.ensure():
                    if problem not in watch_problems:
                        self.log.warning(
                            "folder not watched; the periodic check still runs", problem=problem
                        )
                        watch_problems.add(problem)
                if trigger == "signal":
                    self.notifier.reloading()
                result = self.reconciler.cycle(trigger)
                if self.stopping and result.outcome is Outcome.RELOAD_FAILED:
                    break  # interrupted while confirming: not a failure to report
                self._tell(result)
                if trigger in ("start", "signal"):
                    self.notifier.ready(f"last check: {result.outcome}")
                else:
                    self.notifier.status(f"last check: {result.outcome}")
                failures = failures + 1 if result.outcome is Outcome.UNREACHABLE else 0
                trigger = self._next_trigger(self._delay(result, failures))
        finally:
            self.notifier.stopping()
            watcher.stop()
        self.log.info("stopped")
        return 0


def main(settings: Settings) -> int:
    """Run the daemon (or one pass with --once); return the exit code."""
    logs.configure(settings.log_format, settings.log_level)
    log = logs.get()
    from certreload import pg

    log.info(
        "starting",
        version=__version__,
        mode=settings.mode,
        cert=str(settings.cert),
        key=str(settings.key),
        ca=str(settings.ca) if settings.ca else "system",
        names=list(settings.sans),
        server_addr=str(settings.server_addr) if settings.server_addr else "none",
        dsn=pg.redact(settings.dsn),
        interval=settings.interval,
        listen=str(settings.listen) if settings.listen else "off",
    )
    if not settings.sans:
        log.warning("no --san given: the names clients connect with are not being checked")
    if settings.server_addr is None:
        log.warning(
            "--server-addr none: reloads cannot be confirmed; certreload reloads once at start "
            "and whenever the valid content changes"
        )
    from certreload.mounts import diagnose

    for finding in diagnose([settings.cert, settings.key, *([settings.ca] if settings.ca else [])]):
        level = log.warning if finding.code == "subpath-mount" else log.info
        level("mount diagnostic", code=finding.code, problem=str(finding))
    daemon = Daemon(settings, Notifier())
    if settings.mode == "once":
        return daemon.run_once()
    stop_http = None
    if settings.listen is not None:
        from certreload.metrics import Metrics, serve

        metrics = Metrics(
            settings.interval,
            install_mode=settings.install_dir is not None,
            pgbouncer=settings.pgbouncer_addr is not None,
        )
        daemon.listeners.append(metrics.observe)
        daemon.on_watch_event = metrics.watch_events.inc
        try:
            stop_http = serve(settings.listen, metrics)
        except OSError as exc:
            log.error("cannot listen", address=str(settings.listen), error=exc.strerror or str(exc))
            return EXIT_LISTEN
    daemon.install_signals()
    try:
        return daemon.run_forever()
    finally:
        if stop_http is not None:
            stop_http()
