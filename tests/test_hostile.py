"""Hostile input: whatever the files hold, the reader and the verdict give a verdict.

Property-based (hypothesis): arbitrary bytes in each file, and damaged copies of a valid set.
Never an exception, never a hang; every problem names one of the files.  The same targets
run under the coverage-guided fuzzer in fuzz/fuzz_verdict.py.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certreload import snapshot
from certreload.verdict import Policy, Verdict, judge
from tests.support import certs

POLICY = Policy(sans=("db.example.com", "10.0.0.1"), pg_uid=0, pg_user="root")
NOW = datetime.now(UTC)
CA = certs.make_root_ca()
LEAF = certs.make_leaf(CA, dns_sans=["db.example.com"], ip_sans=["10.0.0.1"])
GOOD = {"tls.crt": LEAF.cert_pem, "tls.key": LEAF.key_pem, "ca.crt": CA.cert_pem}


def judge_folder(folder: Path) -> Verdict:
    """Read and judge a folder's three files."""
    snap = snapshot.read(folder / "tls.crt", folder / "tls.key", folder / "ca.crt")
    return judge(snap, POLICY, NOW)


def assert_well_formed(verdict: Verdict, folder: Path) -> None:
    """Each problem names one of the files (or the whole set) and says something."""
    names = {"", *(str(folder / n) for n in GOOD)}
    for problem in verdict.problems:
        assert problem.file in names
        assert problem.message
        assert problem.code


def write(folder: Path, files: dict[str, bytes]) -> None:
    """Write the files, the key at 0600."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "tls.key").chmod(0o600)


def test_the_good_set_is_valid(tmp_path: Path) -> None:
    """The control for the properties below."""
    write(tmp_path, GOOD)
    assert judge_folder(tmp_path).valid


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cert=st.binary(max_size=4096), key=st.binary(max_size=4096), ca=st.binary(max_size=4096))
def test_arbitrary_bytes_give_a_verdict(tmp_path: Path, cert: bytes, key: bytes, ca: bytes) -> None:
    """Random bytes in every file: a verdict with named problems, never an exception."""
    write(tmp_path, {"tls.crt": cert, "tls.key": key, "ca.crt": ca})
    verdict = judge_folder(tmp_path)
    assert not verdict.valid
    assert_well_formed(verdict, tmp_path)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """One file of the good set, damaged: bytes flipped, cut, inserted or repeated."""
    name = draw(st.sampled_from(sorted(GOOD)))
    data = bytearray(GOOD[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data += bytes(data[at:])
    return name, bytes(data)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(change=damaged())
def test_damaged_good_sets_give_a_verdict(tmp_path: Path, change: tuple[str, bytes]) -> None:
    """A valid set with one file damaged: a verdict, and the damage named if it is refused."""
    name, data = change
    write(tmp_path, {**GOOD, name: data})
    verdict = judge_folder(tmp_path)
    assert_well_formed(verdict, tmp_path)
    if data == GOOD[name]:
        assert verdict.valid


def test_file_growing_while_read_is_capped(tmp_path: Path) -> None:
    """A file appended to without end is read up to the cap, then refused: no hang."""
    write(tmp_path, GOOD)
    stop = threading.Event()
    grower = tmp_path / "tls.crt"

    def grow() -> None:
        with open(grower, "ab") as handle:
            while not stop.is_set():
                handle.write(b"A" * 65536)
                handle.flush()

    thread = threading.Thread(target=grow)
    thread.start()
    try:
        verdicts = [judge_folder(tmp_path) for _ in range(30)]
    finally:
        stop.set()
        thread.join()
    assert all(not v.valid for v in verdicts[-5:])
    assert grower.stat().st_size > snapshot.MAX_FILE_BYTES
    last = judge_folder(tmp_path)
    assert "more than" in next(p.message for p in last.problems if p.file.endswith("tls.crt"))


@pytest.mark.parametrize("kind", ["loop", "dangling", "fifo", "folder", "socket"])
def test_odd_entries_are_named(tmp_path: Path, kind: str) -> None:
    """Symlink loops, dangling links, FIFOs, folders and sockets in place of the key."""
    write(tmp_path, GOOD)
    key = tmp_path / "tls.key"
    key.unlink()
    if kind == "loop":
        key.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(key)
    elif kind == "dangling":
        key.symlink_to(tmp_path / "gone")
    elif kind == "fifo":
        os.mkfifo(key)
    elif kind == "folder":
        key.mkdir()
    else:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(key))
        sock.close()
    verdict = judge_folder(tmp_path)
    assert not verdict.valid
    assert any(p.file == str(key) for p in verdict.problems)
    assert_well_formed(verdict, tmp_path)


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["tls.crt", "ca.crt"])
@pytest.mark.parametrize(
    "found", ["malformed-issuer.pem", "bad-version.pem", "duplicate-extension.pem"]
)
def test_fuzzer_finds(tmp_path: Path, name: str, found: str) -> None:
    """Found by the fuzzer: an issuer name that fails to parse only when read; version 54;
    a basicConstraints extension given twice (cryptography raises DuplicateExtension).

    Each must be a named problem of its file, not an exception; the good set is the control.
    """
    write(tmp_path, GOOD)
    assert judge_folder(tmp_path).valid
    write(tmp_path, {**GOOD, name: (DATA / found).read_bytes()})
    verdict = judge_folder(tmp_path)
    assert not verdict.valid
    problem = next(p for p in verdict.problems if p.file == str(tmp_path / name))
    assert "cannot be parsed" in problem.message
