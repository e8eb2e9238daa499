"""Soak: many kubelet-style rotations against a real server, with bad sets and restarts.

Every 10th round publishes a bad set (the key of another certificate), which must be refused
while the server keeps its certificate; every 50th round restarts the server.  For each good
set the time from the ``..data`` swap to the server presenting it is measured.  The daemon's
open file descriptors, inotify watches, threads and RSS are sampled at the first quarter and
at the end: none may grow beyond noise.

    .venv/bin/python benchmarks/soak.py --rounds 1000

Prints a JSON summary and writes benchmarks/results/soak-<rounds>.json.  tests/test_soak.py
runs it with 200 rounds and checks the same figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import as_server_user, report, server_gid  # noqa: E402
from certreload.served import ServedError, read_served  # noqa: E402
from certreload.settings import Address  # noqa: E402
from tests.support import certs  # noqa: E402
from tests.support.kubelet import SecretVolume  # noqa: E402
from tests.support.pgserver import PgServer, world_traversable_dir  # noqa: E402

NAMES = ["cluster-1"]
WAIT = 30.0


@dataclass
class Sample:
    """What the daemon holds at one moment."""

    round: int
    fds: int
    inotify_watches: int
    threads: int
    rss_mb: float


@dataclass
class Summary:
    """The soak's figures."""

    rounds: int
    good_sets: int = 0
    served: int = 0
    bad_sets: int = 0
    bad_refused: int = 0
    restarts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    daemon_exit: int | None = None

    def figures(self) -> dict[str, object]:
        """The JSON-able summary."""
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * (len(lat) - 1)))], 1) if lat else 0.0

        first, last = (self.samples[0], self.samples[-1]) if self.samples else (None, None)
        return {
            "rounds": self.rounds,
            "good_sets": self.good_sets,
            "served": self.served,
            "bad_sets": self.bad_sets,
            "bad_refused": self.bad_refused,
            "server_restarts": self.restarts,
            "latency_ms": {
                "median": round(statistics.median(lat), 1) if lat else 0.0,
                "p90": pct(0.9),
                "p99": pct(0.99),
                "max": round(lat[-1], 1) if lat else 0.0,
            },
            "samples": [asdict(s) for s in self.samples],
            "growth": {
                "fds": last.fds - first.fds if first and last else None,
                "inotify_watches": last.inotify_watches - first.inotify_watches
                if first and last
                else None,
                "threads": last.threads - first.threads if first and last else None,
                "rss_mb": round(last.rss_mb - first.rss_mb, 1) if first and last else None,
            },
            "daemon_exit": self.daemon_exit,
        }


def sample(pid: int, round_: int) -> Sample:
    """Read the daemon's fds, inotify watches, threads and RSS from /proc."""
    fd_dir = Path(f"/proc/{pid}/fd")
    fds = list(fd_dir.iterdir())
    watches = 0
    for fd in fds:
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                watches += sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))
        except OSError:
            continue
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return Sample(
        round=round_,
        fds=len(fds),
        inotify_watches=watches,
        threads=int(fields["Threads"].strip()),
        rss_mb=round(int(fields["VmRSS"].split()[0]) / 1024, 1),
    )


def served(port: int) -> str | None:
    """The served leaf's sha256, or None."""
    try:
        return read_served(Address("127.0.0.1", port), timeout=2).fingerprint_sha256
    except ServedError:
        return None


def until(condition: object, timeout: float = WAIT) -> float | None:
    """Poll a callable; seconds until it was true, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.002)
    return None


def soak(rounds: int, log: Path | None = None) -> Summary:
    """Run the soak; return its summary."""
    summary = Summary(rounds)
    base = world_traversable_dir("certreload-soak-")
    volume = SecretVolume(base / "secret")
    ca = certs.make_root_ca()
    gid = server_gid()

    def publish(leaf: certs.Issued, key: bytes | None = None) -> None:
        volume.write(
            {"tls.crt": leaf.cert_pem, "tls.key": key or leaf.key_pem, "ca.crt": ca.cert_pem},
            mode=0o640,
            gid=gid,
        )

    def new_leaf() -> certs.Issued:
        return certs.make_leaf(ca, cn="cluster-1", dns_sans=NAMES)

    current = new_leaf()
    publish(current)
    secret = volume.path
    server = PgServer(secret / "tls.crt", secret / "tls.key", secret / "ca.crt")
    server.start()
    argv = [str(ROOT / ".venv/bin/certreload"), "--dir", str(secret), "--san", "cluster-1",
            "--dsn", server.superuser_dsn(), "--server-addr", f"127.0.0.1:{server.port}",
            "--log-format", "json", "--log-level", "warning"]  # fmt: skip
    argv = as_server_user(argv)
    errors = open(log or os.devnull, "w")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(argv, stderr=errors)
    try:
        until(lambda: served(server.port) == current.fingerprint_sha256)
        time.sleep(0.5)
        for round_ in range(1, rounds + 1):
            if round_ % 50 == 0:
                server.restart()
                summary.restarts += 1
            if round_ % 10 == 0:
                summary.bad_sets += 1
                publish(new_leaf(), key=new_leaf().key_pem)
                time.sleep(1.3)  # longer than the settle time: the refusal is final
                if served(server.port) == current.fingerprint_sha256:
                    summary.bad_refused += 1
            else:
                summary.good_sets += 1
                leaf = new_leaf()
                started = time.monotonic()
                publish(leaf)
                took = until(lambda leaf=leaf: served(server.port) == leaf.fingerprint_sha256)
                if took is not None:
                    summary.served += 1
                    summary.latencies_ms.append((time.monotonic() - started) * 1000)
                    current = leaf
            if round_ in (max(1, rounds // 4), rounds):
                time.sleep(0.3)
                summary.samples.append(sample(daemon.pid, round_))
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            summary.daemon_exit = daemon.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            daemon.kill()
        errors.close()
        server.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return summary


def main() -> int:
    """Run the soak from the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--log", type=Path, help="keep the daemon's log here")
    args = parser.parse_args()
    report(soak(args.rounds, args.log).figures(), f"soak-{args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
