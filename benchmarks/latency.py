"""Swap-to-served latency of the daemon, beside the floor, and its idle cost.

A real server and certreload (as postgres) on a kubelet-style secret.  For each of N rotations
the time from the ``..data`` rename to the server presenting the new leaf is measured by
polling the server (a probe costs ~3 ms).  The floor is the same measurement for a reload
driven by hand: the files swapped, then ``SELECT pg_reload_conf()`` on a warm connection.
Then the daemon is left idle for 20 s: its CPU seconds (utime+stime from /proc) and RSS.

    .venv/bin/python benchmarks/latency.py [--rotations 30] [--idle 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import as_server_user, report, server_gid  # noqa: E402
from benchmarks.soak import served, until  # noqa: E402
from tests.support import certs  # noqa: E402
from tests.support.kubelet import SecretVolume  # noqa: E402
from tests.support.pgserver import PgServer, world_traversable_dir  # noqa: E402


def stats(values_ms: list[float]) -> dict[str, float]:
    """median, p90, max."""
    ordered = sorted(values_ms)
    return {
        "median": round(statistics.median(ordered), 1),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "max": round(ordered[-1], 1),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    """Run the benchmark and print (and save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rotations", type=int, default=30)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    base = world_traversable_dir("certreload-latency-")
    volume = SecretVolume(base / "secret")
    ca = certs.make_root_ca()
    gid = server_gid()

    def publish() -> certs.Issued:
        leaf = certs.make_leaf(ca, cn="cluster-1", dns_sans=["cluster-1"])
        volume.write(
            {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem},
            mode=0o640,
            gid=gid,
        )
        return leaf

    publish()
    secret = volume.path
    server = PgServer(secret / "tls.crt", secret / "tls.key", secret / "ca.crt")
    server.start()
    daemon = None
    try:
        # the floor: a hand-driven reload on a warm connection
        floor: list[float] = []
        with psycopg.connect(server.superuser_dsn(), autocommit=True) as conn:
            for _ in range(args.rotations):
                started = time.monotonic()
                leaf = publish()
                conn.execute("SELECT pg_reload_conf()")
                until(lambda leaf=leaf: served(server.port) == leaf.fingerprint_sha256)
                floor.append((time.monotonic() - started) * 1000)
        argv = [str(ROOT / ".venv/bin/certreload"), "--dir", str(secret), "--san", "cluster-1",
                "--dsn", server.superuser_dsn(), "--server-addr", f"127.0.0.1:{server.port}",
                "--log-format", "json", "--log-level", "warning"]  # fmt: skip
        daemon = subprocess.Popen(as_server_user(argv))
        time.sleep(2.0)
        latencies: list[float] = []
        missed = 0
        for _ in range(args.rotations):
            leaf = publish()
            started = time.monotonic()
            took = until(lambda leaf=leaf: served(server.port) == leaf.fingerprint_sha256)
            if took is None:
                missed += 1
            else:
                latencies.append((time.monotonic() - started) * 1000)
            time.sleep(0.2)
        time.sleep(1.0)
        before = cpu_seconds(daemon.pid)
        time.sleep(args.idle)
        idle_cpu = cpu_seconds(daemon.pid) - before
        figures = {
            "rotations": args.rotations,
            "served": len(latencies),
            "missed": missed,
            "swap_to_served_ms": stats(latencies),
            "floor_hand_reload_ms": stats(floor),
            "idle_seconds": args.idle,
            "idle_cpu_seconds": round(idle_cpu, 3),
            "idle_rss_mb": round(rss_mb(daemon.pid), 1),
        }
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        server.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    report(figures, "latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
