"""Helpers for the install-mode, PgBouncer, hook, mount and CA-rotation tests (issue 6).

- ``Daemon``: certreload in the foreground as the postgres user; its JSON log is read live
  by a thread, so a test waits for a *logged event* (a cycle's outcome) instead of sleeping.
- ``Secret``: a kubelet-style secret folder (tests/support/kubelet.SecretVolume) with a CA and
  a way to publish a new generation at any mode.
- ``PgBouncer``: a real PgBouncer in the foreground as postgres, with its own ini.
- small readers: what a server presents, /metrics values, digests of files.

Nothing here prints key bytes: files are compared by their sha256, never by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.parser import text_string_to_metric_families

from certreload.served import ServedError, read_served
from certreload.settings import Address
from tests.support import certs
from tests.support.kubelet import SecretVolume
from tests.support.pgserver import PgServer, free_port, pg_binaries_missing, world_traversable_dir

CERTRELOAD = str(Path(sys.prefix) / "bin" / "certreload")
WAIT = 30.0
SAN = "cluster-1"


# --------------------------------------------------------------------------- small things


def postgres_ids() -> tuple[int, int]:
    """The postgres OS user's uid and gid."""
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as postgres through setpriv (an exec: signals reach the program itself)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def postgres_dir(path: Path, mode: int = 0o755) -> Path:
    """Create ``path`` owned by postgres (so a process running as postgres may write in it)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        uid, gid = postgres_ids()
        os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def sha(data: bytes) -> str:
    """sha256 hex of some bytes: how tests compare files without ever printing them."""
    return hashlib.sha256(data).hexdigest()


def file_digests(
    folder: Path, names: tuple[str, ...] = ("tls.crt", "tls.key", "ca.crt")
) -> dict[str, str]:
    """name -> sha256 of the file's bytes (through links), for before/after comparisons."""
    return {name: sha((folder / name).read_bytes()) for name in names}


def served_sha(port: int, host: str = "127.0.0.1") -> str | None:
    """What a PostgreSQL server or a PgBouncer presents (certreload's own probe), or None."""
    try:
        return read_served(Address(host, port), timeout=3).fingerprint_sha256
    except ServedError:
        return None


def events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a log, parsed (other lines skipped)."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            found.append(item)
    return found


def matching(
    items: list[dict[str, Any]], event: str | None = None, **fields: object
) -> list[dict[str, Any]]:
    """The log events named ``event`` (any when None) whose fields equal ``fields``."""
    return [
        e
        for e in items
        if (event is None or e.get("event") == event)
        and all(e.get(k) == v for k, v in fields.items())
    ]


def http_get(url: str) -> tuple[int, str]:
    """HTTP GET on a local endpoint: status and body (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus exposition, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def run_certreload(
    argv: list[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """certreload (``--check`` or ``--once``) as postgres; output captured."""
    return subprocess.run(
        as_postgres([CERTRELOAD, *argv]),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def pid_alive(pid: int) -> bool:
    """Is a process with this pid running (and not a zombie)?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def rekeyed_ca(subject: x509.Name) -> certs.Issued:
    """A new self-signed CA with exactly ``subject`` but a new key (a CA re-keyed in place)."""
    key = certs.make_key("ec384")
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(certs.CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return certs.Issued(builder.sign(key, hashes.SHA256()), key)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """certreload running in the foreground as postgres; its log read live."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        """Start ``certreload ARGV`` (JSON logs); ``env`` replaces the environment when given."""
        self.argv = [CERTRELOAD, "--log-format", "json", *argv]
        self.proc = subprocess.Popen(
            as_postgres(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="certreload-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream: IO[str] | None = self.proc.stderr
        assert stream is not None
        for line in stream:
            with self._lock:
                self._lines.append(line)

    @property
    def log(self) -> str:
        """Everything logged so far."""
        with self._lock:
            return "".join(self._lines)

    def events(self) -> list[dict[str, Any]]:
        """The log so far, parsed."""
        return events(self.log)

    def find(self, event: str | None = None, **fields: object) -> list[dict[str, Any]]:
        """Logged events named ``event`` with these field values."""
        return matching(self.events(), event, **fields)

    def wait_for(
        self, what: str, event: str | None = None, *, count: int = 1, timeout: float = WAIT,
        **fields: object,
    ) -> dict[str, Any]:  # fmt: skip
        """Wait until ``count`` events named ``event`` with these fields were logged.

        Fails at once (with the log's tail) when the daemon exits meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(event, **fields)
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                pytest.fail(
                    f"certreload exited {self.proc.returncode} before {what}:\n{self.log[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting for {what}; log tail:\n{self.log[-4000:]}")
            time.sleep(0.05)

    def running(self) -> bool:
        """Is the daemon still running?"""
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal to certreload itself (setpriv execs it: same pid)."""
        self.proc.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM, wait, return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        """Kill it if still running (cleanup after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self._reader.join(timeout=5)


@contextmanager
def daemon(argv: list[str], env: Mapping[str, str] | None = None) -> Iterator[Daemon]:
    """A ``Daemon`` killed on the way out whatever happened."""
    d = Daemon(argv, env)
    try:
        yield d
    finally:
        d.kill()


# --------------------------------------------------------------------------- the secret


class Secret:
    """A kubelet-style secret folder with its own root CA, and a server to go with it."""

    def __init__(self, base: Path, name: str = "secret") -> None:
        """A secret volume at ``base/name`` (nothing published yet)."""
        self.base = base
        self.volume = SecretVolume(base / name)
        self.ca = certs.make_root_ca(cn="issue6 root CA")
        self.leaf: certs.Issued | None = None

    @property
    def path(self) -> Path:
        """The secret's folder."""
        return self.volume.path

    def new_leaf(self, ca: certs.Issued | None = None) -> certs.Issued:
        """A valid leaf for the test's name, issued by ``ca`` (default: the secret's CA)."""
        return certs.make_leaf(ca or self.ca, cn=SAN, dns_sans=[SAN])

    def publish(
        self,
        leaf: certs.Issued | None = None,
        *,
        key: bytes | None = None,
        ca_pem: bytes | None = None,
        cert_pem: bytes | None = None,
        mode: int = 0o640,
        postgres_group: bool = True,
    ) -> certs.Issued:
        """Publish a generation (a new valid leaf unless given), the kubelet's way.

        mode 0640 with the postgres group is ``defaultMode: 0640`` + ``fsGroup``: root-owned
        files the server accepts.  ``postgres_group=False`` leaves them root:root, as a
        kubelet without fsGroup does.
        """
        leaf = leaf or self.new_leaf()
        gid = postgres_ids()[1] if postgres_group and os.geteuid() == 0 else None
        self.volume.write(
            {
                "tls.crt": cert_pem if cert_pem is not None else leaf.cert_pem,
                "tls.key": key if key is not None else leaf.key_pem,
                "ca.crt": ca_pem if ca_pem is not None else self.ca.cert_pem,
            },
            mode=mode,
            gid=gid,
        )
        if key is None and cert_pem is None:
            self.leaf = leaf
        return leaf

    def daemon_args(self, server: PgServer, *extra: str) -> list[str]:
        """certreload's flags for this secret and server."""
        return [
            "--dir", str(self.path), "--san", SAN, "--dsn", server.superuser_dsn(),
            "--server-addr", f"127.0.0.1:{server.port}", *extra,
        ]  # fmt: skip


def require_pg() -> None:
    """Skip when the PostgreSQL binaries are missing."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)


@contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A world-traversable folder, removed on the way out."""
    base = world_traversable_dir(prefix)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def serves(server: PgServer, leaf: certs.Issued) -> bool:
    """Does the server present this leaf, judged by ``openssl s_client`` (not certreload)?"""
    return server.served_fingerprint() == leaf.fingerprint_sha256


def client_ca_names(port: int, host: str = "127.0.0.1") -> str:
    """The CA names a server asks client certificates from (its loaded ssl_ca_file), as
    ``openssl s_client -starttls postgres`` prints them: an observer independent of certreload.
    """
    out = subprocess.run(
        ["openssl", "s_client", "-starttls", "postgres", "-connect", f"{host}:{port}"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    _, _, section = out.partition("Acceptable client certificate CA names")
    for end in ("Requested Signature Algorithms", "Client Certificate Types", "---"):
        section = section.split(end, 1)[0]
    return section.strip()


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll a condition with a generous timeout (tests never assert a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- PgBouncer


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    """A real PgBouncer in the foreground, as postgres, with its own ini in ``folder``."""

    def __init__(self, folder: Path, server: PgServer, cert: Path, key: Path, ca: Path) -> None:
        """Prepare PgBouncer in front of ``server``, presenting ``cert``/``key`` to clients."""
        if not Path(PGBOUNCER).exists():
            pytest.skip("pgbouncer is not installed")
        self.folder = postgres_dir(folder)
        self.server = server
        self.port = free_port()
        self.tls = (cert, key, ca)
        self.proc: subprocess.Popen[bytes] | None = None
        (self.folder / "userlist.txt").write_text('"postgres" ""\n')
        self.write_ini()

    @property
    def ini(self) -> Path:
        return self.folder / "pgbouncer.ini"

    @property
    def admin_dsn(self) -> str:
        """The admin console over PgBouncer's unix socket."""
        return f"host={self.folder} port={self.port} dbname=pgbouncer user=postgres"

    @property
    def addr(self) -> str:
        """Where PgBouncer presents its certificate."""
        return f"127.0.0.1:{self.port}"

    def write_ini(self) -> None:
        """Write pgbouncer.ini for the current client_tls_* files."""
        cert, key, ca = self.tls
        self.ini.write_text(
            f"""[databases]
postgres = host=127.0.0.1 port={self.server.port} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.folder}
auth_type = trust
auth_file = {self.folder}/userlist.txt
admin_users = postgres
client_tls_sslmode = allow
client_tls_cert_file = {cert}
client_tls_key_file = {key}
client_tls_ca_file = {ca}
"""
        )

    def start(self) -> None:
        """Start it and wait until it presents a certificate."""
        out = open(self.folder / "pgbouncer.out", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                as_postgres([PGBOUNCER, str(self.ini)]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            out.close()
        wait_until(lambda: self.presented() is not None or self._died(), "PgBouncer up with TLS")
        if self._died():
            pytest.fail(f"PgBouncer exited: {self.output()[-2000:]}")

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self) -> str:
        """PgBouncer's own log."""
        try:
            return (self.folder / "pgbouncer.out").read_text(errors="replace")
        except OSError:
            return ""

    def presented(self) -> str | None:
        """sha256 of the leaf PgBouncer presents now."""
        return served_sha(self.port)

    def repoint(self, cert: Path, key: Path, ca: Path) -> None:
        """Change client_tls_* in the ini and SIGHUP PgBouncer (it re-reads its ini)."""
        self.tls = (cert, key, ca)
        self.write_ini()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Terminate it and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT)
