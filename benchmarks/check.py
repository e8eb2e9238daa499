"""Benchmark of ``certreload --check``: wall time and peak RSS of the real command.

A throw-away PostgreSQL serves the docs' certificate set; ``certreload --check`` (with the
four names and the served-certificate read) runs N times as a fresh process, the way a
Kubernetes exec probe runs it.  Wall time is measured around the process; peak RSS is the
process's own high-water mark (``VmHWM`` of /proc/self/status, read as it exits: a child's
``ru_maxrss`` would include the pages it inherited from this benchmark at fork).

    .venv/bin/python benchmarks/check.py [--runs 30]

certreload is measured as users get it: installed (not editable) with its bytecode compiled,
in a venv of its own (benchmarks/.venv-check, made on the first run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import as_server_user, report, server_gid  # noqa: E402
from tests.support.certs import docs_openssl_set  # noqa: E402
from tests.support.kubelet import SecretVolume  # noqa: E402
from tests.support.pgserver import PgServer, world_traversable_dir  # noqa: E402

NAMES = ["cluster-1", "cluster-1-repl", "cluster-1-pooler", "cluster-1-pooler-repl"]


# The console script's two lines, plus a report of the peak RSS on stderr as it exits.
ENTRY = (
    "import atexit, sys\n"
    "def hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'): sys.stderr.write(line)\n"
    "atexit.register(hwm)\n"
    "from certreload.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_once(argv: list[str]) -> tuple[float, float, int]:
    """Run argv; return (wall seconds, peak RSS in MB, exit code)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    kb = [int(line.split()[1]) for line in proc.stderr.decode().splitlines() if "VmHWM" in line]
    return wall, (kb[0] / 1024 if kb else float("nan")), proc.returncode


def installed_python() -> Path:
    """A venv holding certreload installed from this tree, as pip installs it for users."""
    venv = ROOT / "benchmarks/.venv-check"
    if not (venv / "bin/python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
         "--force-reinstall", "--no-deps", str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(venv, 0o755)  # noqa: S103 - the postgres user runs this interpreter
    return venv / "bin/python"


def main() -> int:
    """Run the benchmark and print (and save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    python = installed_python()
    work = world_traversable_dir("certreload-bench-check-")
    server = None
    try:
        docs = docs_openssl_set(work / "pki")
        volume = SecretVolume(work / "secret")
        gid = server_gid()
        volume.write(
            {"tls.crt": docs.cert.read_bytes(), "tls.key": docs.key.read_bytes(),
             "ca.crt": docs.ca_cert.read_bytes()},
            mode=0o640, gid=gid,
        )  # fmt: skip
        secret = volume.path
        server = PgServer(secret / "tls.crt", secret / "tls.key", secret / "ca.crt")
        server.start()
        argv = [str(python), "-c", ENTRY, "--check", "--dir", str(secret),
                *[a for n in NAMES for a in ("--san", n)],
                "--server-addr", f"127.0.0.1:{server.port}"]  # fmt: skip
        argv = as_server_user(argv)
        assert run_once(argv)[2] == 0, "certreload --check did not say OK"
        for _ in range(3):  # warm the page cache
            run_once(argv)
        runs = [run_once(argv) for _ in range(args.runs)]
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    walls = sorted(r[0] * 1000 for r in runs)
    rss = max(r[1] for r in runs)
    figures = {
        "runs": args.runs,
        "wall_ms_median": round(statistics.median(walls), 1),
        "wall_ms_p90": round(walls[int(0.9 * (len(walls) - 1))], 1),
        "wall_ms_max": round(walls[-1], 1),
        "peak_rss_mb": round(rss, 1),
        "exit_codes": sorted({r[2] for r in runs}),
    }
    report(figures, "check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
