"""The oracle's corpus, judged in-process: the verdict's contract on every kind of set.

test_oracle.py measures the truth with a real server and real libpq; this runs the same
sets straight through ``judge`` (no server, a second each) and pins what every problem must
carry: a code, the file it concerns (message starting with that path), a fix, and the
``message; fix`` form people read.  It is also what mutation testing of the verdict runs.
"""

from __future__ import annotations

import os
import pwd
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certreload import snapshot
from certreload.verdict import Policy, judge
from tests.corpus import CASES, Pki, build_case
from tests.support.certs import can_apply_owner, install_tls_files

POSTGRES = pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
POLICY = Policy(
    sans=(),  # replaced per case
    pg_uid=POSTGRES.pw_uid,
    pg_user=POSTGRES.pw_name,
    pg_gids=frozenset({POSTGRES.pw_gid}),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The corpus' CAs."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case_in_process(name: str, pki: Pki, tmp_path: Path) -> None:
    """Valid exactly as the corpus (checked against PostgreSQL and libpq) says; and each
    problem of a refused set is well formed and names one of the corpus' problem files.
    """
    case = build_case(name, pki)
    if not can_apply_owner(case.files.key_owner):
        pytest.skip("needs root to give the key to root")
    cert, key, ca = install_tls_files(case.files, tmp_path / "set")
    policy = Policy(case.names, POLICY.pg_uid, POLICY.pg_user, POLICY.pg_gids)
    # some corpus leaves (openssl-made) start at the moment they were made
    now = datetime.now(UTC) + timedelta(seconds=5)
    verdict = judge(snapshot.read(cert, key, ca), policy, now)
    assert verdict.valid is case.expect_valid, [str(p) for p in verdict.problems]
    if verdict.valid:
        assert verdict.leaf is not None
        assert verdict.leaf.fingerprint_sha256 == case.leaf_fingerprint
        assert verdict.chain
        return
    paths = {str(cert): "tls.crt", str(key): "tls.key", str(ca): "ca.crt"}
    for problem in verdict.problems:
        assert problem.code
        assert problem.fix
        assert problem.file in paths
        assert problem.message.startswith(problem.file + " ")
        assert str(problem) == f"{problem.message}; {problem.fix}"
    named = {paths[p.file] for p in verdict.problems if p.file}
    assert named & set(case.problem_files), (named, case.problem_files)


def test_unreadable_by_the_server_user(tmp_path: Path) -> None:
    """A file the server's user cannot read: 'unreadable-by-server' with a fix; 0644: fine."""
    from tests.support import certs

    ca = certs.make_root_ca()
    leaf = certs.make_leaf(ca, dns_sans=["db"])
    folder = tmp_path / "s"
    folder.mkdir()
    for name, data in (
        ("tls.crt", leaf.cert_pem),
        ("tls.key", leaf.key_pem),
        ("ca.crt", ca.cert_pem),
    ):
        (folder / name).write_bytes(data)
    (folder / "tls.key").chmod(0o600)
    policy = Policy(("db",), 4242, "someone", frozenset({4242}))
    (folder / "ca.crt").chmod(0o600)
    verdict = judge(
        snapshot.read(folder / "tls.crt", folder / "tls.key", folder / "ca.crt"),
        policy,
        datetime.now(UTC),
    )
    by_file = {p.file: p for p in verdict.problems if p.code == "unreadable-by-server"}
    assert str(folder / "ca.crt") in by_file
    assert "someone" in by_file[str(folder / "ca.crt")].message
    assert by_file[str(folder / "ca.crt")].fix
    assert str(folder / "tls.crt") not in by_file  # written 0644 by default umask
    (folder / "ca.crt").chmod(0o644)
    verdict = judge(
        snapshot.read(folder / "tls.crt", folder / "tls.key", folder / "ca.crt"),
        policy,
        datetime.now(UTC),
    )
    assert str(folder / "ca.crt") not in {p.file for p in verdict.problems}
