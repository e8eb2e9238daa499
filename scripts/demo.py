"""certreload's main job on one machine, start to finish (run it through scripts/demo).

1. a CA and a server certificate made with the CPO docs' own openssl commands;
2. a secret folder laid out and updated exactly the way the kubelet does it;
3. a throw-away PostgreSQL 15 with ssl = on reading that folder;
4. certreload running beside it (as the postgres user);
5. a renewal swapped in kubelet-style: the served certificate changes, fingerprints shown;
6. a broken renewal: refused, and the server keeps its good certificate;
then everything is removed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certreload.served import ServedError, read_served  # noqa: E402
from certreload.settings import Address  # noqa: E402
from tests.support.certs import docs_openssl_set, docs_renew_leaf  # noqa: E402
from tests.support.kubelet import SecretVolume  # noqa: E402
from tests.support.pgserver import PgServer, free_port, world_traversable_dir  # noqa: E402

NAMES = ["cluster-1", "cluster-1-repl", "cluster-1-pooler", "cluster-1-pooler-repl"]


def say(text: str) -> None:
    """A step heading."""
    print(f"\n==> {text}", flush=True)


def served(port: int) -> str:
    """The served leaf's sha256, or a word for why not."""
    try:
        return read_served(Address("127.0.0.1", port)).fingerprint_sha256
    except ServedError as exc:
        return f"({exc})"


def wait_for(condition: object, timeout: float = 30.0) -> float:
    """Poll a callable until true; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.002)
    raise SystemExit("demo: gave up waiting")


def main() -> int:
    """Run the demo; return 0 when every step did what it shows."""
    work = world_traversable_dir("certreload-demo-")
    server: PgServer | None = None
    daemon: subprocess.Popen[str] | None = None
    as_postgres = os.geteuid() == 0
    gid = pwd.getpwnam("postgres").pw_gid if as_postgres else os.getegid()
    try:
        say("1. A CA and a certificate for cluster-1, with the CPO docs' openssl commands")
        docs = docs_openssl_set(work / "pki")
        print(f"   {docs.cert.name}: sha256 {docs.fingerprint_sha256}")

        say("2. The secret volume, kubelet-style (..data swap, defaultMode 0640, fsGroup postgres)")
        volume = SecretVolume(work / "secret")

        def publish() -> None:
            volume.write(
                {"tls.crt": docs.cert.read_bytes(), "tls.key": docs.key.read_bytes(),
                 "ca.crt": docs.ca_cert.read_bytes()},
                mode=0o640, gid=gid,
            )  # fmt: skip

        publish()
        for entry in sorted(os.listdir(volume.path)):
            print(f"   {entry}")

        say("3. A throw-away PostgreSQL 15 with ssl = on, reading the secret folder")
        secret = volume.path
        server = PgServer(secret / "tls.crt", secret / "tls.key", secret / "ca.crt")
        server.start()
        print(f"   listening on 127.0.0.1:{server.port}, serving sha256 {served(server.port)}")

        say("4. certreload beside it, as the postgres user")
        listen = free_port()
        argv = [str(ROOT / ".venv/bin/certreload"), "--dir", str(secret),
                *[a for n in NAMES for a in ("--san", n)],
                "--dsn", server.superuser_dsn(), "--server-addr", f"127.0.0.1:{server.port}",
                "--listen", f"127.0.0.1:{listen}", "--log-format", "json"]  # fmt: skip
        prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        print("   $ certreload " + " ".join(argv[1:]))
        daemon = subprocess.Popen(
            (prefix if as_postgres else []) + argv, stderr=subprocess.PIPE, text=True
        )

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{listen}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready)
        check = subprocess.run(
            (prefix if as_postgres else []) + [argv[0], "--check", *argv[1:-6],
             "--server-addr", f"127.0.0.1:{server.port}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        print(f"   $ certreload --check ...   (exit {check.returncode})")
        print("   " + check.stdout.replace("\n", "\n   ").rstrip())

        say("5. Renewal: the docs' certificate commands again (same CA), swapped in kubelet-style")
        before = served(server.port)
        docs_renew_leaf(docs)
        new = docs.fingerprint_sha256
        publish()
        took = wait_for(lambda: served(server.port) == new)
        print(f"   before: {before}")
        print(f"   after:  {served(server.port)}")
        print(f"   served {took * 1000:.0f} ms after the ..data swap")

        say("6. A broken renewal: tls.key of another certificate")
        good = served(server.port)
        shutil.copy(docs.key, work / "good.key")
        docs_renew_leaf(docs)
        shutil.copy(work / "good.key", docs.key)  # the new certificate with the old key
        publish()
        time.sleep(2.5)
        print(f"   served now: {served(server.port)} (unchanged: {served(server.port) == good})")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=10)
            say("certreload's log (JSON lines on stderr; --log-format console on a terminal)")
            for line in err.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                extra = {k: event[k] for k in ("outcome", "trigger", "error") if k in event}
                problems = event.get("problems", [])
                print(f"   {event['level']:7} {event['event']} {extra if extra else ''}")
                for problem in problems:
                    print(f"            - {problem}")
            print(f"   exit code after SIGTERM: {daemon.returncode}")
        if server is not None:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        say("cleaned up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
