"""The verdict in-process: every problem named with its file, a reason and a fix.

The agreement with the real server and libpq is the oracle's job (test_oracle.py); these
tests pin the words, the dates (``now`` is passed in, never mocked), the key-file rule and
the reading of odd files.  Each refusal has an acceptance beside it.
"""

from __future__ import annotations

import os
import pwd
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certreload import snapshot
from certreload.verdict import Policy, Verdict, judge
from tests.support import certs
from tests.support.kubelet import SecretVolume

NOW = datetime.now(UTC)
ROOT = Policy(sans=("db.example.com",), pg_uid=0, pg_user="root")


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    """One root CA for the module."""
    return certs.make_root_ca()


def write_set(folder: Path, cert: bytes, key: bytes, ca: bytes, key_mode: int = 0o600) -> Path:
    """Plain files in ``folder``, owned by the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tls.crt").write_bytes(cert)
    (folder / "tls.key").write_bytes(key)
    (folder / "ca.crt").write_bytes(ca)
    (folder / "tls.key").chmod(key_mode)
    return folder


def verdict_of(folder: Path, policy: Policy = ROOT, now: datetime = NOW) -> Verdict:
    """Read and judge a folder."""
    snap = snapshot.read(folder / "tls.crt", folder / "tls.key", folder / "ca.crt")
    return judge(snap, policy, now)


def codes(v: Verdict) -> set[str]:
    """The problem codes of a verdict."""
    return {p.code for p in v.problems}


def test_good_set_is_valid(tmp_path: Path, ca: certs.Issued) -> None:
    """The control: a matching, covered, current set has no problem."""
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"])
    v = verdict_of(write_set(tmp_path, leaf.cert_pem, leaf.key_pem, ca.cert_pem))
    assert v.valid, v.problems
    assert v.leaf is not None
    assert v.leaf.fingerprint_sha256 == leaf.fingerprint_sha256
    assert [c.fingerprint_sha256 for c in v.chain] == [
        leaf.fingerprint_sha256,
        certs.pem_fingerprint(ca.cert_pem),
    ]


def test_every_problem_is_listed_with_its_file(tmp_path: Path, ca: certs.Issued) -> None:
    """A set wrong in three ways reports all three, each naming its file."""
    leaf = certs.make_leaf(
        ca,
        dns_sans=["other.example.com"],
        not_after=NOW - timedelta(days=1),
        not_before=NOW - timedelta(days=30),
    )
    wrong_key = certs.make_leaf(ca).key_pem
    folder = write_set(tmp_path, leaf.cert_pem, wrong_key, ca.cert_pem)
    v = verdict_of(folder)
    assert {"key-mismatch", "expired", "name"} <= codes(v)
    by_code = {p.code: p for p in v.problems}
    assert by_code["key-mismatch"].file == str(folder / "tls.key")
    assert by_code["expired"].file == str(folder / "tls.crt")
    assert "db.example.com" in by_code["name"].message
    assert all(p.fix for p in v.problems)


def test_expiry_window_warns_but_stays_valid(tmp_path: Path, ca: certs.Issued) -> None:
    """3 days before notAfter: valid with an 'expiring' warning; 30 days before: no warning."""
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"], not_after=NOW + timedelta(days=40))
    folder = write_set(tmp_path, leaf.cert_pem, leaf.key_pem, ca.cert_pem)
    later = verdict_of(folder, now=NOW + timedelta(days=37))
    assert later.valid
    assert later.expiring
    assert not verdict_of(folder, now=NOW + timedelta(days=10)).expiring


def test_dates_are_judged_at_the_given_now(tmp_path: Path, ca: certs.Issued) -> None:
    """The same files: not yet valid before notBefore, valid inside, expired after."""
    leaf = certs.make_leaf(
        ca,
        dns_sans=["db.example.com"],
        not_before=NOW + timedelta(days=1),
        not_after=NOW + timedelta(days=100),
    )
    folder = write_set(tmp_path, leaf.cert_pem, leaf.key_pem, ca.cert_pem)
    assert codes(verdict_of(folder)) == {"not-yet-valid"}
    assert verdict_of(folder, now=NOW + timedelta(days=2)).valid
    assert codes(verdict_of(folder, now=NOW + timedelta(days=101))) == {"expired"}


def test_expired_intermediate_is_named(tmp_path: Path, ca: certs.Issued) -> None:
    """An expired chain certificate is a problem of the file that holds it."""
    ca = certs.make_root_ca(not_before=NOW - timedelta(days=100))
    inter = certs.make_intermediate(
        ca, not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=1)
    )
    leaf = certs.make_leaf(inter, dns_sans=["db.example.com"], not_before=NOW - timedelta(days=10))
    folder = write_set(
        tmp_path, certs.concat(leaf.cert_pem, inter.cert_pem), leaf.key_pem, ca.cert_pem
    )
    v = verdict_of(folder)
    assert codes(v) == {"expired"}
    assert "chain certificate" in v.problems[0].message
    assert verdict_of(folder, now=NOW - timedelta(days=2)).valid


def test_missing_intermediate_says_which_issuer(tmp_path: Path, ca: certs.Issued) -> None:
    """Without its intermediate the leaf does not chain; with it, it does."""
    inter = certs.make_intermediate(ca, cn="Issuing CA 7")
    leaf = certs.make_leaf(inter, dns_sans=["db.example.com"])
    v = verdict_of(write_set(tmp_path / "a", leaf.cert_pem, leaf.key_pem, ca.cert_pem))
    assert codes(v) == {"chain"}
    assert "Issuing CA 7" in v.problems[0].message
    good = write_set(
        tmp_path / "b", certs.concat(leaf.cert_pem, inter.cert_pem), leaf.key_pem, ca.cert_pem
    )
    assert verdict_of(good).valid


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        ("der-cert", "cert-unreadable", "DER"),
        ("empty-cert", "cert-unreadable", "empty"),
        ("truncated-cert", "cert-unreadable", "truncated"),
        ("encrypted-key", "key-unreadable", "passphrase"),
        ("der-key", "key-unreadable", "DER"),
        ("truncated-key", "key-unreadable", "truncated"),
        ("empty-ca", "ca-unreadable", "empty"),
        ("garbage-ca", "ca-unreadable", "no PEM"),
    ],
)
def test_damaged_files_are_explained(
    tmp_path: Path, ca: certs.Issued, mutate: str, code: str, words: str
) -> None:
    """Each damage gets its own words, on the right file; no key bytes appear."""
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"])
    cert, key, bundle = leaf.cert_pem, leaf.key_pem, ca.cert_pem
    if mutate == "der-cert":
        cert = leaf.cert_der
    elif mutate == "empty-cert":
        cert = b""
    elif mutate == "truncated-cert":
        cert = certs.truncated(cert)
    elif mutate == "encrypted-key":
        key = leaf.key_pem_encrypted()
    elif mutate == "der-key":
        key = leaf.key_der
    elif mutate == "truncated-key":
        key = certs.truncated(key)
    elif mutate == "empty-ca":
        bundle = b""
    elif mutate == "garbage-ca":
        bundle = b"not a certificate\n"
    v = verdict_of(write_set(tmp_path, cert, key, bundle))
    assert code in codes(v)
    problem = next(p for p in v.problems if p.code == code)
    assert words in problem.message
    text = " ".join(str(p) for p in v.problems)
    for line in leaf.key_pem.decode().splitlines()[1:-1]:
        assert line not in text


def test_odd_files_never_hang_or_raise(tmp_path: Path, ca: certs.Issued) -> None:
    """A missing file, a folder, a FIFO, a symlink loop and a huge file are named problems."""
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"])
    folder = write_set(tmp_path, leaf.cert_pem, leaf.key_pem, ca.cert_pem)
    (folder / "tls.crt").unlink()
    os.mkfifo(folder / "tls.crt")
    (folder / "ca.crt").unlink()
    (folder / "ca.crt").mkdir()
    (folder / "tls.key").unlink()
    (folder / "tls.key").symlink_to("tls.key")
    v = verdict_of(folder)
    messages = {p.file: p.message for p in v.problems}
    assert "not a regular file" in messages[str(folder / "tls.crt")]
    assert "folder" in messages[str(folder / "ca.crt")]
    assert "loop" in messages[str(folder / "tls.key")]
    (folder / "tls.crt").unlink()
    (folder / "tls.crt").write_bytes(b"-" * (snapshot.MAX_FILE_BYTES + 1))
    huge = verdict_of(folder)
    assert "more than" in next(p.message for p in huge.problems if p.file.endswith("tls.crt"))
    (folder / "tls.crt").unlink()
    assert "does not exist" in verdict_of(folder).problems[0].message


def _postgres() -> pwd.struct_passwd:
    return pwd.getpwnam("postgres")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to postgres and root")
@pytest.mark.parametrize(
    ("owner", "mode", "ok"),
    [
        ("postgres", 0o600, True),
        ("postgres", 0o400, True),
        ("postgres", 0o640, False),
        ("postgres", 0o644, False),
        ("root", 0o640, True),
        ("root", 0o600, False),  # root-owned 0600: the rule passes, but postgres cannot read it
        ("root", 0o644, False),
        ("root", 0o660, False),
        ("nobody", 0o600, False),
    ],
)
def test_key_file_rule(tmp_path: Path, ca: certs.Issued, owner: str, mode: int, ok: bool) -> None:
    """PostgreSQL's ssl_key_file owner/mode rule for a server running as postgres."""
    pg = _postgres()
    policy = Policy(("db.example.com",), pg.pw_uid, "postgres", frozenset({pg.pw_gid}))
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"])
    folder = write_set(tmp_path, leaf.cert_pem, leaf.key_pem, ca.cert_pem, mode)
    for name in ("tls.crt", "ca.crt"):
        (folder / name).chmod(0o644)
    os.chown(folder / "tls.key", pwd.getpwnam(owner).pw_uid, pg.pw_gid)
    v = verdict_of(folder, policy)
    assert v.valid is ok, v.problems
    if not ok:
        assert any(p.file.endswith("tls.key") for p in v.problems)
        assert any("0640" in p.fix or "0600" in p.fix or "read" in p.fix for p in v.problems)


def test_one_generation_across_kubelet_swaps(tmp_path: Path, ca: certs.Issued) -> None:
    """While the kubelet swaps ..data without pause, no snapshot pairs files of two generations.

    A snapshot that found no consistent generation says so and is refused.
    """
    volume = SecretVolume(tmp_path / "secret")
    leaves = [certs.make_leaf(ca, dns_sans=["db.example.com"]) for _ in range(2)]
    sets = [
        {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
        for leaf in leaves
    ]
    volume.write(sets[0], mode=0o600)
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            volume.write(sets[i % 2], mode=0o600)

    swapper = threading.Thread(target=swap)
    swapper.start()
    mixed = flagged = 0
    good = [(leaf.cert_pem, leaf.key_pem) for leaf in leaves]
    try:
        base = tmp_path / "secret"
        for _ in range(300):
            snap = snapshot.read(base / "tls.crt", base / "tls.key", base / "ca.crt")
            if not snap.consistent:
                flagged += 1
                assert not judge(snap, ROOT, NOW).valid
            elif (snap.cert.data, snap.key.data) not in good:
                mixed += 1
    finally:
        stop.set()
        swapper.join()
    assert mixed == 0
    assert flagged < 300  # even in this storm, reads find consistent generations


def test_digest_follows_content(tmp_path: Path, ca: certs.Issued) -> None:
    """The digest changes with any file's content and not with a re-read."""
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"])
    folder = write_set(tmp_path, leaf.cert_pem, leaf.key_pem, ca.cert_pem)
    first = verdict_of(folder).digest
    assert verdict_of(folder).digest == first
    (folder / "ca.crt").write_bytes(certs.concat(ca.cert_pem, certs.make_root_ca().cert_pem))
    assert verdict_of(folder).digest != first


@pytest.mark.parametrize(
    ("variant", "words", "fix"),
    [
        ("rsa1024", "key too small", "RSA-2048"),
        ("sha1", "digest too weak", "SHA-256"),
    ],
)
def test_security_level_refusals_are_explained(
    tmp_path: Path, ca: certs.Issued, variant: str, words: str, fix: str
) -> None:
    """OpenSSL's security level refuses weak leaves; the words say why and what to do."""
    if variant == "rsa1024":
        leaf = certs.make_leaf(ca, dns_sans=["db.example.com"], key_kind="rsa1024")
    else:
        leaf = certs.make_leaf(ca, dns_sans=["db.example.com"], hash_alg="sha1")
    # the openssl-made SHA-1 leaf starts now: judge a minute later
    later = datetime.now(UTC) + timedelta(minutes=1)
    v = verdict_of(
        write_set(tmp_path / "weak", leaf.cert_pem, leaf.key_pem, ca.cert_pem), now=later
    )
    assert codes(v) == {"cert-refused"}
    assert words in v.problems[0].message
    assert fix in v.problems[0].fix
    good = certs.make_leaf(ca, dns_sans=["db.example.com"], key_kind="rsa2048")
    assert verdict_of(write_set(tmp_path / "good", good.cert_pem, good.key_pem, ca.cert_pem)).valid
