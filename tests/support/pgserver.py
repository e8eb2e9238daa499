"""A throw-away PostgreSQL 15 cluster for tests, and an independent judge of what it serves.

The server refuses to run as root, so when the tests run as root every PostgreSQL program runs
as the ``postgres`` OS user (``runuser``).  Its folder lives under a world-traversable temp
folder (not pytest's 0700 ``tmp_path``) so that the ``postgres`` user can reach it.

``served_fingerprint`` asks the real ``openssl s_client -starttls postgres`` which certificate
the server hands out: it shares no code with certreload.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

PG_BIN = Path(os.environ.get("CERTRELOAD_PG_BIN", "/usr/lib/postgresql/15/bin"))
RELOAD_TIMEOUT = 5.0


class PgServerError(RuntimeError):
    """A PostgreSQL program failed; the message carries its output and the log's tail."""


def pg_binaries_missing() -> str | None:
    """Why the PostgreSQL binaries cannot be used, or None when they are all there."""
    for name in ("initdb", "pg_ctl", "postgres", "psql"):
        if not (PG_BIN / name).is_file():
            return f"PostgreSQL binary {PG_BIN / name} not found (set CERTRELOAD_PG_BIN)"
    return None


def as_server_user(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the server's OS user: ``runuser -u postgres --`` when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def world_traversable_dir(prefix: str = "certreload-") -> Path:
    """A new folder under /tmp (mode 0755) that the postgres user can reach."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class PgServer:
    """One PostgreSQL cluster with ``ssl = on`` and the given SSL files."""

    def __init__(
        self,
        ssl_cert_file: Path,
        ssl_key_file: Path,
        ssl_ca_file: Path | None,
        *,
        base_dir: Path | None = None,
    ) -> None:
        """Prepare (but do not create) a cluster serving these SSL files."""
        self.ssl_cert_file = ssl_cert_file
        self.ssl_key_file = ssl_key_file
        self.ssl_ca_file = ssl_ca_file
        self._own_base = base_dir is None
        self.base = base_dir if base_dir is not None else world_traversable_dir("certreload-pg-")
        self.data_dir = self.base / "data"
        self.socket_dir = self.base
        self.log_file = self.base / "server.log"
        self.port = free_port()
        self._initialized = False
        self._running = False

    # ----------------------------------------------------------------- lifecycle

    def _run(self, argv: Sequence[str], what: str, timeout: float = 120) -> str:
        result = subprocess.run(
            as_server_user(argv), capture_output=True, text=True, check=False, timeout=timeout
        )
        if result.returncode != 0:
            raise PgServerError(
                f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                f"--- server log tail ---\n{self.log_text()[-3000:]}"
            )
        return result.stdout

    def _chown_to_server_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)

    def init(self) -> None:
        """initdb, then write postgresql.conf additions and pg_hba.conf."""
        self._chown_to_server_user(self.base)
        self._run(
            [
                str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            "initdb",
        )  # fmt: skip
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "ssl": "on",
            "ssl_cert_file": str(self.ssl_cert_file),
            "ssl_key_file": str(self.ssl_key_file),
            "ssl_ca_file": str(self.ssl_ca_file) if self.ssl_ca_file is not None else "",
            "log_connections": "off",
            "fsync": "off",
            "max_connections": "30",
            "shared_buffers": "16MB",
        }
        lines = [f"port = {self.port}"]
        lines += [f"{key} = {_quote_conf(value)}" for key, value in settings.items()]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# certreload tests\n" + "\n".join(lines) + "\n")
        hba = (
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        (self.data_dir / "pg_hba.conf").write_text(hba, encoding="utf-8")
        self._initialized = True

    def start(self) -> None:
        """Start the server (initdb first if needed); wait until it accepts connections."""
        if not self._initialized:
            self.init()
        self._run(
            [
                str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", "60", "start",
            ],
            "pg_ctl start",
        )  # fmt: skip
        self._running = True

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        if not self._running:
            return
        self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            "pg_ctl stop",
        )
        self._running = False

    def restart(self) -> None:
        """Restart the server: unlike a reload, bad SSL files are fatal here."""
        self._run(
            [
                str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                "-m", "fast", "-w", "-t", "60", "restart",
            ],
            "pg_ctl restart",
        )  # fmt: skip
        self._running = True

    def cleanup(self) -> None:
        """Stop the server and remove its folder (when this object made it)."""
        try:
            self.stop()
        finally:
            if self._own_base:
                shutil.rmtree(self.base, ignore_errors=True)

    # ----------------------------------------------------------------- connections

    def superuser_dsn(self) -> str:
        """A password-free superuser conninfo over the unix socket."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    def tcp_dsn(self, user: str = "postgres") -> str:
        """A conninfo over TCP on 127.0.0.1 without SSL (``host ... trust`` in pg_hba)."""
        return f"host=127.0.0.1 port={self.port} user={user} dbname=postgres sslmode=disable"

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        """A new autocommit superuser connection."""
        return psycopg.connect(self.superuser_dsn(), autocommit=True, connect_timeout=10)

    def conf_load_time(self) -> datetime:
        """``pg_conf_load_time()`` as a new backend sees it (inherited from the postmaster)."""
        with self.connect() as conn:
            row = conn.execute("SELECT pg_conf_load_time()").fetchone()
        assert row is not None
        value = row[0]
        assert isinstance(value, datetime)
        return value

    def reload_and_wait(self, timeout: float = RELOAD_TIMEOUT) -> None:
        """``pg_reload_conf()``, then wait until a new connection shows a later load time.

        The postmaster reloads the SSL files while handling SIGHUP, before it accepts the next
        connection: once a new backend shows the new load time, new connections get whatever
        the reload produced (the new certificate, or the old one kept after a failed load).
        """
        before = self.conf_load_time()
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while True:
            if self.conf_load_time() > before:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pg_conf_load_time() did not move within {timeout} s")
            time.sleep(0.005)

    def set_ssl_files(self, cert: Path, key: Path, ca: Path | None) -> None:
        """Point ssl_cert_file / ssl_key_file / ssl_ca_file elsewhere (ALTER SYSTEM) and reload."""
        with self.connect() as conn:
            for name, value in (
                ("ssl_cert_file", str(cert)),
                ("ssl_key_file", str(key)),
                ("ssl_ca_file", str(ca) if ca is not None else ""),
            ):
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        self.ssl_cert_file, self.ssl_key_file, self.ssl_ca_file = cert, key, ca
        self.reload_and_wait()

    def create_role(
        self, name: str, password: str | None = None, *, superuser: bool = False
    ) -> None:
        """CREATE ROLE ... LOGIN [PASSWORD ...] [SUPERUSER]."""
        query = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name))
        if password is not None:
            query += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
        if superuser:
            query += sql.SQL(" SUPERUSER")
        with self.connect() as conn:
            conn.execute(query)

    def log_text(self) -> str:
        """The server log so far."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def served_fingerprint(self) -> str | None:
        """What the server serves now, judged by ``openssl s_client`` (see the function)."""
        return served_fingerprint(self.port)


def served_fingerprint(port: int, host: str = "127.0.0.1", timeout: float = 15) -> str | None:
    """sha256 of the leaf a PostgreSQL server at host:port serves, by the openssl CLI.

    ``openssl s_client -starttls postgres`` sends the SSLRequest and prints the leaf;
    ``openssl x509 -fingerprint -sha256 -noout`` fingerprints it.  Lowercase hex without
    colons, or None when no certificate came back.
    """
    try:
        client = subprocess.run(
            ["openssl", "s_client", "-starttls", "postgres", "-connect", f"{host}:{port}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    if b"-----BEGIN CERTIFICATE-----" not in client.stdout:
        return None
    fingerprint = subprocess.run(
        ["openssl", "x509", "-fingerprint", "-sha256", "-noout"],
        input=client.stdout,
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    if fingerprint.returncode != 0:
        return None
    text = fingerprint.stdout.decode("ascii", errors="replace").strip()
    _, _, value = text.partition("=")
    return value.replace(":", "").lower() or None
