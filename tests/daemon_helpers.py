"""What tests/test_daemon*.py share: the daemon as a live subprocess, and a rig around it.

- ``DaemonProcess`` runs certreload as the postgres OS user (``setpriv`` execs, so signals
  and the exit code are certreload's own) and reads its JSON log lines as they come, so a
  test can wait for an event and then act.
- ``OwnedSecretVolume`` is the kubelet's writer (tests/support/kubelet.py) with a mode and an
  owner per file, for a key the server's user owns.
- ``Rig`` is a PostgreSQL server reading a kubelet-style secret (optionally the CA from a
  second secret), a CA, and the command line for certreload.

The server's own judge of what it serves is ``openssl s_client`` (tests/support/pgserver.py).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import certs
from tests.support.kubelet import DATA, DATA_TMP, SecretVolume
from tests.support.pgserver import PgServer, pg_binaries_missing, world_traversable_dir
from tests.support.wait import WAIT, eventually

CERTRELOAD = str(Path(sys.prefix) / "bin" / "certreload")
NAME = "cluster-1"
Event = dict[str, Any]


def pg_missing() -> str | None:
    """Why no PostgreSQL test can run here, or None."""
    return pg_binaries_missing()


def postgres_ids() -> tuple[int, int]:
    """(uid, gid) of the postgres OS user; our own when we are not root."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def as_postgres(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the postgres user with setpriv (it execs: signals reach the program)."""
    if os.geteuid() != 0:
        return list(argv)
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def parse_events(text: str) -> list[Event]:
    """The JSON objects among ``text``'s lines (other lines are ignored)."""
    found: list[Event] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


class DaemonProcess:
    """certreload running in the foreground; its stderr parsed line by line as it comes."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Start ``argv`` (already wrapped with ``as_postgres`` when wanted)."""
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
        )
        self._lock = threading.Lock()
        self._err: list[str] = []
        self._out: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)

    @property
    def pid(self) -> int:
        """The daemon's process id (setpriv execs, so it is certreload's)."""
        return self.proc.pid

    def stderr(self) -> str:
        """Everything written on stderr so far."""
        with self._lock:
            return "".join(self._err)

    def output(self) -> str:
        """stdout and stderr so far."""
        with self._lock:
            return "".join(self._out) + "".join(self._err)

    def events(self) -> list[Event]:
        """The JSON log lines so far."""
        return parse_events(self.stderr())

    def count(self, predicate: Callable[[Event], bool]) -> int:
        """How many log lines so far match."""
        return sum(1 for event in self.events() if predicate(event))

    def wait_for(
        self, predicate: Callable[[Event], bool], what: str, after: int = 0, timeout: float = WAIT
    ) -> Event:
        """The first log line (from index ``after`` on) matching; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            if exited:
                for reader in self._readers:
                    reader.join(timeout=5)
            found = [e for e in self.events()[after:] if predicate(e)]
            if found:
                return found[0]
            if exited or time.monotonic() > deadline:
                state = f"exited {self.proc.returncode}" if exited else "still running"
                pytest.fail(
                    f"never saw {what} in the daemon's log ({state}); its log:\n"
                    f"{self.stderr()[-4000:]}"
                )
            time.sleep(0.02)

    def running(self) -> bool:
        """Is the process still running?"""
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(signum)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM (if still running) and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        return code

    def kill(self) -> None:
        """SIGKILL, for cleanup after a failed test."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)


class OwnedSecretVolume(SecretVolume):
    """The kubelet's AtomicWriter with a mode and owner per file (tests/support/kubelet.py).

    The kubelet gives every file one ``defaultMode``; per-item ``mode`` in a secret volume's
    ``items`` exists too, and a file owned by the server's user is what a bare-metal setup
    has.  The steps are the kubelet's, in its order, with ``..data`` renamed last.
    ``renamed_at`` is ``time.monotonic()`` just after the last rename (for benchmarks).
    """

    renamed_at: float = 0.0

    def write_owned(
        self,
        files: Mapping[str, bytes],
        modes: Mapping[str, int],
        owners: Mapping[str, tuple[int, int]],
    ) -> Path:
        """Publish a new generation; each file gets ``modes[name]`` and ``owners[name]``."""
        self.path.mkdir(parents=True, exist_ok=True)
        old_dir = self.current_dir()
        old_names = self.visible_names()
        new_dir = self.path / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns() % 10**9:09d}"
        new_dir.mkdir(mode=0o755)
        os.chmod(new_dir, 0o755)  # noqa: S103 - the kubelet's own mode for the folder
        for name, data in files.items():
            target = new_dir / name
            target.write_bytes(data)
            uid, gid = owners[name]
            os.chown(target, uid, gid)
            os.chmod(target, modes[name])
        tmp_link = self.path / DATA_TMP
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(new_dir.name, tmp_link)
        os.rename(tmp_link, self.path / DATA)
        self.renamed_at = time.monotonic()  # the moment the new set became visible
        for name in files:
            link = self.path / name
            if not link.is_symlink():
                os.symlink(f"{DATA}/{name}", link)
        for name in old_names - set(files):
            (self.path / name).unlink()
        if old_dir is not None and old_dir != new_dir:
            shutil.rmtree(old_dir)
        return new_dir


class Rig:
    """A PostgreSQL server reading a kubelet-style secret; certreload's command line for it."""

    def __init__(self, base: Path, *, split_ca: bool = False) -> None:
        """Publish a first valid set (the server is made, not started)."""
        self.base = base
        self.volume = OwnedSecretVolume(base / "secret")
        self.ca_volume = OwnedSecretVolume(base / "ca-secret") if split_ca else None
        self.ca = certs.make_root_ca()
        self.uid, self.gid = postgres_ids()
        self.current = self.publish()
        self.server = PgServer(self.cert, self.key, self.ca_path)
        self.daemons: list[DaemonProcess] = []

    @property
    def cert(self) -> Path:
        """tls.crt as mounted."""
        return self.volume.path / "tls.crt"

    @property
    def key(self) -> Path:
        """tls.key as mounted."""
        return self.volume.path / "tls.key"

    @property
    def ca_path(self) -> Path:
        """ca.crt as mounted (in the second secret when the CA is split off)."""
        return (self.ca_volume.path if self.ca_volume else self.volume.path) / "ca.crt"

    def new_leaf(self, ca: certs.Issued | None = None, **kwargs: Any) -> certs.Issued:
        """A valid leaf for the rig's name, from ``ca`` (the rig's CA by default)."""
        kwargs.setdefault("cn", NAME)
        kwargs.setdefault("dns_sans", [NAME])
        return certs.make_leaf(ca or self.ca, **kwargs)

    def publish_files(
        self,
        cert: bytes,
        key: bytes,
        ca: bytes,
        *,
        key_mode: int = 0o640,
        key_owner: tuple[int, int] | None = None,
    ) -> None:
        """Publish raw bytes kubelet-style: root-owned, group postgres (fsGroup), 0640.

        ``key_mode``/``key_owner`` change only tls.key (default: as the other files).
        """
        root_group = (0, self.gid)
        files = {"tls.crt": cert, "tls.key": key}
        modes = {"tls.crt": 0o640, "tls.key": key_mode, "ca.crt": 0o640}
        owners = {"tls.crt": root_group, "tls.key": key_owner or root_group, "ca.crt": root_group}
        if self.ca_volume is not None:
            self.ca_volume.write_owned({"ca.crt": ca}, modes, owners)
        else:
            files["ca.crt"] = ca
        self.volume.write_owned(files, modes, owners)

    def publish_ca_only(self, ca: bytes) -> None:
        """Publish a new generation of the CA secret alone (needs ``split_ca``)."""
        assert self.ca_volume is not None
        self.ca_volume.write_owned({"ca.crt": ca}, {"ca.crt": 0o640}, {"ca.crt": (0, self.gid)})

    def publish(
        self, leaf: certs.Issued | None = None, *, ca: certs.Issued | None = None
    ) -> certs.Issued:
        """Publish a valid set (a new leaf unless given) kubelet-style; return the leaf."""
        ca = ca or self.ca
        leaf = leaf or self.new_leaf(ca)
        self.publish_files(leaf.cert_pem, leaf.key_pem, ca.cert_pem)
        self.current = leaf
        return leaf

    def argv(self, *extra: str, dsn: str | None = None, interval: float = 2.0) -> list[str]:
        """certreload's command line for this rig (run as postgres)."""
        return as_postgres(
            [CERTRELOAD, "--cert", str(self.cert), "--key", str(self.key),
             "--ca", str(self.ca_path), "--san", NAME,
             "--dsn", dsn or self.server.superuser_dsn(),
             "--server-addr", f"127.0.0.1:{self.server.port}",
             "--interval", str(interval), "--log-format", "json", *extra]
        )  # fmt: skip

    def once(self, *extra: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
        """``certreload --once`` as postgres; waits for it."""
        return subprocess.run(
            self.argv("--once", *extra, dsn=dsn),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def start(
        self, *extra: str, dsn: str | None = None, interval: float = 2.0, wait_start: bool = True
    ) -> DaemonProcess:
        """The daemon in the foreground; by default wait for its first cycle's line."""
        daemon = DaemonProcess(self.argv(*extra, dsn=dsn, interval=interval))
        self.daemons.append(daemon)
        if wait_start:
            daemon.wait_for(lambda e: e.get("trigger") == "start", "the first cycle")
        return daemon

    def served(self) -> str | None:
        """sha256 of the leaf the server presents, by openssl s_client."""
        return self.server.served_fingerprint()

    def serves(self, leaf: certs.Issued) -> bool:
        """Does the server present ``leaf``?"""
        return self.served() == leaf.fingerprint_sha256

    def wait_served(self, leaf: certs.Issued, what: str) -> None:
        """Wait until the server presents ``leaf``."""
        eventually(lambda: self.serves(leaf), what)

    def close(self) -> None:
        """Kill leftover daemons, stop the server, remove the folder."""
        for daemon in self.daemons:
            daemon.kill()
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def make_rig(prefix: str = "certreload-daemon-", *, split_ca: bool = False) -> Iterator[Rig]:
    """A rig whose everything is stopped and removed afterwards (for fixtures)."""
    base = world_traversable_dir(prefix)
    rig = Rig(base, split_ca=split_ca)
    try:
        yield rig
    finally:
        rig.close()


def rejected_errors(events: Sequence[Event]) -> list[Event]:
    """The error-level lines that report a rejected set."""
    return [e for e in events if e.get("outcome") == "rejected" and e.get("level") == "error"]


def problems_text(event: Event) -> str:
    """The problems of a rejection line, as one string."""
    problems = event.get("problems", [])
    assert isinstance(problems, list)
    return "\n".join(str(p) for p in problems)
