"""Talking to PostgreSQL: the only module that imports psycopg.

Errors come out as ``PgError`` with a ``kind`` the daemon acts on and a message that never
holds the DSN's password.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg
from psycopg import conninfo, errors

Kind = Literal["connect", "auth", "permission", "other"]
_AUTH_STATES = {"28P01", "28000"}
CONNECT_TIMEOUT = 3


class PgError(Exception):
    """A failure talking to the server; ``kind`` says which, the message says it in words."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ReloadFacts:
    """What the server said while being asked to reload."""

    conf_load_time: datetime  # before the reload was processed
    ssl_cert_file: str
    ssl_key_file: str
    ssl_ca_file: str


def _conninfo(dsn: str | None) -> str:
    try:
        parsed = conninfo.conninfo_to_dict(dsn or "")
    except psycopg.ProgrammingError:
        raise PgError("other", "the DSN cannot be parsed (check --dsn / CERTRELOAD_DSN)") from None
    return conninfo.make_conninfo(
        dsn or "",
        connect_timeout=parsed.get("connect_timeout", CONNECT_TIMEOUT),
        application_name=parsed.get("application_name", "certreload"),
    )


def redact(dsn: str | None) -> str:
    """The DSN without its password, for messages."""
    if not dsn:
        return "libpq defaults (PG* variables)"
    try:
        parsed = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DSN"
    parsed.pop("password", None)
    return conninfo.make_conninfo("", **{k: v for k, v in parsed.items() if v is not None})


def _scrub(text: str, dsn: str | None) -> str:
    try:
        password = conninfo.conninfo_to_dict(dsn or "").get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        text = text.replace(str(password), "********")
    return text.strip().replace("\n", " ")


def _classify(exc: psycopg.Error, dsn: str | None) -> PgError:
    message = _scrub(str(exc), dsn)
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, errors.InsufficientPrivilege):
        return PgError("permission", message)
    if state in _AUTH_STATES or "authentication failed" in message or "password" in message:
        return PgError("auth", message)
    if isinstance(exc, psycopg.OperationalError):
        return PgError("connect", message)
    return PgError("other", message)


def reload(dsn: str | None) -> ReloadFacts:
    """``SELECT pg_reload_conf()``; return what the server said just before it."""
    try:
        with psycopg.connect(_conninfo(dsn), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_conf_load_time(), current_setting('ssl_cert_file'),"
                " current_setting('ssl_key_file'), current_setting('ssl_ca_file')"
            ).fetchone()
            conn.execute("SELECT pg_reload_conf()")
    except psycopg.Error as exc:
        raise _classify(exc, dsn) from None
    assert row is not None
    return ReloadFacts(row[0], row[1], row[2], row[3])


def conf_load_time(dsn: str | None) -> datetime:
    """``pg_conf_load_time()`` on a new connection: moves when a reload has been processed."""
    try:
        with psycopg.connect(_conninfo(dsn), autocommit=True) as conn:
            row = conn.execute("SELECT pg_conf_load_time()").fetchone()
    except psycopg.Error as exc:
        raise _classify(exc, dsn) from None
    assert row is not None
    value: datetime = row[0]
    return value


def pgbouncer_reload(dsn: str) -> None:
    """``RELOAD`` on PgBouncer's admin console (simple query protocol, as it requires)."""
    try:
        with psycopg.connect(_conninfo(dsn), autocommit=True) as conn:
            result = conn.pgconn.exec_(b"RELOAD")
            if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                message = (result.error_message or b"").decode("utf-8", "replace")
                kind: Kind = "permission" if "admin" in message or "denied" in message else "other"
                raise PgError(kind, _scrub(f"PgBouncer refused RELOAD: {message}", dsn))
    except psycopg.Error as exc:
        raise _classify(exc, dsn) from None
