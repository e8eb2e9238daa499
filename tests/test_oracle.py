"""The test of record: certreload's verdict agrees with the real PostgreSQL and libpq.

For each set of the corpus the truth is measured, not assumed:

- LOADED: the set is copied (with its key mode and owner) into the folder the server reads,
  the server reloads, and ``openssl s_client`` shows whether the server now serves the set's
  leaf (each set has its own leaf).  A known good set is restored before each set.
- ACCEPTED: for a loaded set, ``psql`` with ``sslmode=verify-full`` and the set's ca.crt
  connects with ``host=NAME hostaddr=127.0.0.1`` for every name.
- VALID = loaded and every name accepted.

The truth must match the corpus' expectation (so the corpus cannot decay into all-pass), and
``certreload --check`` run as the postgres user on the same files must agree with it.

CERTRELOAD_BIN overrides the certreload executable (default: the venv's).
Set CERTRELOAD_ORACLE_REPORT=FILE to append one JSON line per set with what was measured.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.corpus import CASES, CertSet, Pki, build_case, check_corpus_shape
from tests.support.certs import TlsFiles, can_apply_owner, install_tls_files, pem_fingerprint
from tests.support.pgserver import PG_BIN, PgServer, as_server_user

pytestmark = pytest.mark.pg

CERTRELOAD = Path(os.environ.get("CERTRELOAD_BIN", Path(sys.prefix) / "bin" / "certreload"))
ACCEPT_EXITS = frozenset({0, 1})
REJECT_EXIT = 2
FILE_NAMES = ("tls.crt", "tls.key", "ca.crt")


@dataclass
class Truth:
    """What the real server and libpq did with one set."""

    served: str | None
    loaded: bool
    accepted: dict[str, bool] = field(default_factory=dict)
    client_errors: dict[str, str] = field(default_factory=dict)
    server_log: str = ""

    @property
    def valid(self) -> bool:
        """Loaded, and every name accepted."""
        return self.loaded and all(self.accepted.values())


@pytest.fixture(scope="module")
def pki(tls_workspace: Path) -> Pki:
    """The corpus' shared CAs."""
    workdir = tls_workspace / "corpus"
    workdir.mkdir(mode=0o755, exist_ok=True)
    return Pki(workdir)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def psql_accepts(port: int, name: str, ca_path: Path) -> tuple[bool, str]:
    """Does libpq (psql, verify-full) accept the server for ``name``?  (ok, error text)."""
    conninfo = (
        f"host={name} hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres "
        f"sslmode=verify-full sslrootcert={ca_path} sslcert=/nonexistent sslkey=/nonexistent "
        "connect_timeout=10"
    )
    result = subprocess.run(
        [str(PG_BIN / "psql"), "-X", "-A", "-t", conninfo, "-c", "select 1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=_clean_env(),
    )
    ok = result.returncode == 0 and result.stdout.strip() == "1"
    return ok, result.stderr.strip()


def _ssl_log_lines(text: str) -> str:
    keep = [
        line.split(" ", 3)[-1]
        for line in text.splitlines()
        if "SSL" in line or "private key" in line or "certificate" in line or "FATAL" in line
    ]
    return "\n".join(keep)


def _restore_good(server: PgServer, good: TlsFiles, live: Path) -> None:
    install_tls_files(good, live)
    server.reload_and_wait()
    served = server.served_fingerprint()
    assert served == pem_fingerprint(good.cert), "the known good set did not come back"


def measure_truth(server: PgServer, cert_set: CertSet, live: Path, work: Path) -> Truth:
    """Install the set where the server reads, reload, and ask openssl and psql."""
    log_offset = len(server.log_text())
    install_tls_files(cert_set.files, live)
    server.reload_and_wait()
    served = server.served_fingerprint()
    truth = Truth(served=served, loaded=served == cert_set.leaf_fingerprint)
    truth.server_log = _ssl_log_lines(server.log_text()[log_offset:])
    if truth.loaded:
        client_ca = work / "client-ca.crt"
        client_ca.write_bytes(cert_set.files.ca)
        for name in cert_set.names:
            ok, error = psql_accepts(server.port, name, client_ca)
            truth.accepted[name] = ok
            if not ok:
                truth.client_errors[name] = error
    return truth


def run_certreload(cert_set: CertSet, folder: Path) -> subprocess.CompletedProcess[str]:
    """``certreload --check`` as the server's OS user on a folder holding the set."""
    cert, key, ca = install_tls_files(cert_set.files, folder)
    argv = [
        str(CERTRELOAD), "--check", "--server-addr", "none",
        "--cert", str(cert), "--key", str(key), "--ca", str(ca),
    ]  # fmt: skip
    for name in cert_set.names:
        argv += ["--san", name]
    return subprocess.run(
        as_server_user(argv), capture_output=True, text=True, check=False, timeout=120
    )


def _key_fragments(key: bytes) -> list[str]:
    """Pieces of the key file that must never appear in output."""
    fragments = [
        line.strip()
        for line in key.decode("ascii", errors="replace").splitlines()
        if len(line.strip()) >= 16 and "-----" not in line
    ]
    if key:
        fragments.append(base64.b64encode(key[:48]).decode())
        fragments.append(key[:32].hex())
    return fragments


def _report(
    cert_set: CertSet, truth: Truth, verdict: subprocess.CompletedProcess[str] | None
) -> None:
    target = os.environ.get("CERTRELOAD_ORACLE_REPORT")
    if not target:
        return
    record = {
        "name": cert_set.name,
        "expect_loaded": cert_set.expect_loaded,
        "expect_valid": cert_set.expect_valid,
        "loaded": truth.loaded,
        "valid": truth.valid,
        "accepted": truth.accepted,
        "client_errors": truth.client_errors,
        "server_log": truth.server_log,
        "certreload_exit": verdict.returncode if verdict else None,
        "certreload_stdout": verdict.stdout if verdict else None,
        "certreload_stderr": verdict.stderr if verdict else None,
    }
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def test_corpus_is_large_and_two_sided(pki: Pki) -> None:
    """The corpus holds at least 40 sets, with valid and invalid ones of each kind."""
    check_corpus_shape()
    sets = [build_case(name, pki) for name in ("docs_openssl", "expired_leaf", "der_key")]
    assert [(s.expect_loaded, s.expect_valid) for s in sets] == [
        (True, True),
        (True, False),
        (False, False),
    ]
    assert len({s.leaf_fingerprint for s in sets}) == len(sets)


@dataclass(frozen=True)
class Rig:
    """The session server, the folder it reads, the known good set and a work folder."""

    server: PgServer
    live: Path
    good: TlsFiles
    workspace: Path


@pytest.fixture
def rig(
    pg_server: PgServer, pg_live_dir: Path, good_tls_files: TlsFiles, tls_workspace: Path
) -> Iterator[Rig]:
    """Everything the oracle needs besides the set itself; the session server is left on
    the known good set for the tests that share it.
    """
    yield Rig(pg_server, pg_live_dir, good_tls_files, tls_workspace)
    _restore_good(pg_server, good_tls_files, pg_live_dir)


@pytest.mark.parametrize("case_name", list(CASES))
def test_certreload_agrees_with_postgres_and_libpq(case_name: str, pki: Pki, rig: Rig) -> None:
    """certreload --check accepts a set iff the real server loads it and libpq accepts it."""
    cert_set = build_case(case_name, pki)
    if not can_apply_owner(cert_set.files.key_owner):
        pytest.skip(f"giving the key to {cert_set.files.key_owner} needs root")
    good_fingerprint = pem_fingerprint(rig.good.cert)
    assert cert_set.leaf_fingerprint != good_fingerprint
    work = rig.workspace / "oracle" / case_name
    work.mkdir(parents=True, exist_ok=True)
    for path in (work.parent, work):
        path.chmod(0o755)

    # --- the truth, from the real parts
    _restore_good(rig.server, rig.good, rig.live)
    truth = measure_truth(rig.server, cert_set, rig.live, work)
    details = (
        f"{case_name}: loaded={truth.loaded} accepted={truth.accepted} "
        f"client errors={truth.client_errors} server log:\n{truth.server_log}"
    )
    if not truth.loaded:
        # not loaded: the server kept the old (good) certificate and said so in its log
        assert truth.served == good_fingerprint, details
        assert "SSL configuration was not reloaded" in truth.server_log, details
    assert (truth.loaded, truth.valid) == (cert_set.expect_loaded, cert_set.expect_valid), (
        f"the corpus' expectation (loaded={cert_set.expect_loaded}, "
        f"valid={cert_set.expect_valid}) is wrong: {details}"
    )

    # --- certreload's verdict on the same files, as the server's OS user
    if not CERTRELOAD.exists():
        _report(cert_set, truth, None)
        pytest.skip(f"truth matched the corpus; {CERTRELOAD} is not installed yet")
    verdict = run_certreload(cert_set, work / "secret")
    _report(cert_set, truth, verdict)
    output = verdict.stdout + verdict.stderr
    said = (
        f"{case_name}: truth valid={truth.valid} ({details})\n"
        f"certreload exit {verdict.returncode}\n"
        f"stdout:\n{verdict.stdout}\nstderr:\n{verdict.stderr}"
    )
    assert verdict.returncode in ACCEPT_EXITS | {REJECT_EXIT}, f"certreload crashed: {said}"
    assert "PRIVATE KEY" not in output, f"key material in output: {case_name}"
    for fragment in _key_fragments(cert_set.files.key):
        assert fragment not in output, f"key bytes in output: {case_name}"
    accepted = verdict.returncode in ACCEPT_EXITS
    assert accepted == truth.valid, f"certreload disagrees with the real parts: {said}"
    if not accepted:
        named = [f for f in FILE_NAMES if f in verdict.stdout]
        assert set(named) & cert_set.problem_files, (
            f"the rejection names none of {sorted(cert_set.problem_files)}: {said}"
        )
