"""Metrics and health endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

The exposition is prometheus_client's; this module only maps each cycle's result onto
metrics and answers the two probes.  ``/healthz`` says the loop is alive, never whether the
files are good or the server is up (metrics and ``--check`` say that), so a liveness probe
on it never restarts a healthy sidecar.  ``/readyz`` says the first cycle has finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from certreload import __version__
from certreload.settings import Address

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from certreload.pem import CertInfo
    from certreload.reconcile import CycleResult

TRIGGERS = ("start", "timer", "watch", "signal")
HEALTH_MARGIN = 60.0  # seconds beyond twice the interval before /healthz says the loop is stuck


class Metrics:
    """Every metric certreload exports, in a registry of its own."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        install_mode: bool = False,
        pgbouncer: bool = False,
    ) -> None:
        self.install_mode = install_mode
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise here
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        cert_labels = ["source", "subject_cn", "serial"]
        self.not_after = Gauge(
            "certreload_certificate_not_after_timestamp_seconds",
            "notAfter of the certificate in the files (source=file) and served (source=served)",
            cert_labels,
            registry=r,
        )
        self.not_before = Gauge(
            "certreload_certificate_not_before_timestamp_seconds",
            "notBefore of the certificate in the files and served",
            cert_labels,
            registry=r,
        )
        self.reloads = Counter("certreload_reloads", "pg_reload_conf() calls made", registry=r)
        self.reloads_failed = Counter(
            "certreload_reloads_failed",
            "reloads that failed or were not confirmed by the served certificate",
            registry=r,
        )
        self.last_reload_ok = Gauge(
            "certreload_last_reload_successful", "1 if the last reload was confirmed", registry=r
        )
        self.last_reload_success = Gauge(
            "certreload_last_reload_success_timestamp_seconds",
            "when a reload was last confirmed (Unix time)",
            registry=r,
        )
        self.rejected = Counter(
            "certreload_rejected", "distinct certificate sets rejected", registry=r
        )
        self.served_matches = Gauge(
            "certreload_served_matches_files",
            "1 when the server presents the valid files' certificate, else 0",
            registry=r,
        )
        self.checks = Counter(
            "certreload_checks", "reconcile cycles run, by trigger", ["trigger"], registry=r
        )
        self.watch_events = Counter(
            "certreload_watch_events", "file events received (each only a hint)", registry=r
        )
        self.pgbouncer_matches = (
            Gauge(
                "certreload_pgbouncer_served_matches_files",
                "1 when PgBouncer presents the valid files' certificate, else 0",
                registry=r,
            )
            if pgbouncer
            else None
        )
        self.ca_trusted = Gauge(
            "certreload_leaf_trusted_by_previous_ca_bundle",
            "0 after a change whose leaf the previously given ca.crt does not trust, else 1",
            registry=r,
        )
        self.ca_trusted.set(1)
        Info("certreload", "certreload's version", registry=r).info({"version": __version__})
        for trigger in TRIGGERS:
            self.checks.labels(trigger)
        self.last_reload_ok.set(1)
        self._series: dict[str, tuple[str, str, str]] = {}
        self.health = Health(interval, clock)

    def _set_cert(self, source: str, info: CertInfo | None) -> None:
        old = self._series.pop(source, None)
        labels = (source, info.common_name or "", info.serial) if info else None
        if old is not None and old != labels:
            self.not_after.remove(*old)
            self.not_before.remove(*old)
        if info is None or labels is None:
            return
        self.not_after.labels(*labels).set(info.not_after.timestamp())
        self.not_before.labels(*labels).set(info.not_before.timestamp())
        self._series[source] = labels

    def observe(self, result: CycleResult) -> None:
        """Map one cycle's result onto the metrics."""
        from certreload.reconcile import Outcome

        self.checks.labels(result.trigger).inc()
        if result.outcome is Outcome.REJECTED:
            if result.new_rejection:
                self.rejected.inc()
        else:
            self._set_cert("file", result.verdict.leaf)
        if result.served_info is not None:
            self._set_cert("served", result.served_info)
        if result.reload_attempted:
            self.reloads.inc()
        if result.reload_attempted and result.outcome is not Outcome.SUPERSEDED:
            # superseded: the files changed again mid-reload; neither success nor failure
            ok = result.outcome in (Outcome.RELOADED, Outcome.RELOADED_UNCONFIRMED)
            self.last_reload_ok.set(1 if ok else 0)
            if ok:
                self.last_reload_success.set(time.time())
            else:
                self.reloads_failed.inc()
        if result.outcome is not Outcome.REJECTED and result.served_after is not None:
            leaf = result.verdict.leaf
            matches = leaf is not None and result.served_after == leaf.fingerprint_sha256
            self.served_matches.set(1 if matches else 0)
        elif result.outcome is Outcome.UNREACHABLE:
            self.served_matches.set(0)
        if result.pgbouncer is not None and self.pgbouncer_matches is not None:
            ok = result.pgbouncer in (Outcome.UNCHANGED, Outcome.RELOADED)
            self.pgbouncer_matches.set(1 if ok else 0)
        if result.outcome in (Outcome.RELOADED, Outcome.RELOADED_UNCONFIRMED):
            self.ca_trusted.set(0 if result.ca_rotation else 1)
        self.health.cycle_done(ready=result.holds_installed or not self.install_mode)


class Health:
    """Liveness and readiness of the loop."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limit = 2 * interval + HEALTH_MARGIN
        self._started = clock()
        self._last: float | None = None
        self._ready = False
        self._lock = threading.Lock()

    def cycle_done(self, *, ready: bool = True) -> None:
        """A cycle finished; ``ready`` False holds /readyz (install mode: nothing installed)."""
        with self._lock:
            self._last = self._clock()
            self._ready = self._ready or ready

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def alive(self) -> bool:
        with self._lock:
            since = self._last if self._last is not None else self._started
        return self._clock() - since <= self._limit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
        """Probes every few seconds would flood the log; say nothing."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _app(metrics: Metrics) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    exposition = make_wsgi_app(metrics.registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok = metrics.health.alive if path == "/healthz" else metrics.health.ready
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(b"ok\n" if ok else b"not ok\n")]
        if path == "/metrics":
            body: Iterable[bytes] = exposition(environ, start_response)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"/metrics, /healthz, /readyz\n"]

    return app


def serve(address: Address, metrics: Metrics) -> Callable[[], None]:
    """Serve the endpoints in a background thread; return a function that stops them."""
    server = make_server(
        address.host, address.port, _app(metrics), server_class=_Server, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="certreload-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
