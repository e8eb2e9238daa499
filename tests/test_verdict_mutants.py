"""Tests written from mutation testing's surviving mutants (benchmarks/MUTATION.md).

Each pins a behaviour of the verdict or of libpq's name rules that no other test pinned: a
boundary, which file a problem names, which fix a refusal gets, that a problem is not said
twice.  Prose is not pinned, but what a person copies out of a fix is: commands (``chmod``,
``openssl ...``), options (``--san NAME``) and Kubernetes field names (``defaultMode``,
``fsGroup``, ``renewBefore``), which are case-sensitive.

Snapshots are built in memory (``judge`` reads no file), so owners and modes are plain values
and ``now`` is passed in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.x509.oid import NameOID

from certreload import judge as openssl
from certreload.names import NameFacts, host_matches
from certreload.snapshot import FileRead, Role, Snapshot, digest_of
from certreload.verdict import Policy, Problem, Verdict, judge
from tests.support import certs

NOW = datetime.now(UTC).replace(microsecond=0)
PATHS: dict[Role, Path] = {
    "cert": Path("/secret/tls.crt"),
    "key": Path("/secret/tls.key"),
    "ca": Path("/secret/ca.crt"),
}
CERT, KEY, CA = (str(PATHS[role]) for role in ("cert", "key", "ca"))
ROOT = Policy(sans=("db.example.com",), pg_uid=0, pg_user="root")
PG_UID = 1000
POSTGRES = Policy(("db.example.com",), PG_UID, "postgres", frozenset({PG_UID}))


# --------------------------------------------------------------------------- helpers


def read(
    role: Role,
    data: bytes | None,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    error: str | None = None,
) -> FileRead:
    """One file as the reader would have returned it."""
    path = PATHS[role]
    return FileRead(role, path, str(path), data, error, mode, uid, gid)


def snap(cert: FileRead, key: FileRead, ca: FileRead | None) -> Snapshot:
    """A consistent snapshot of these files."""
    files = (cert, key) + ((ca,) if ca is not None else ())
    return Snapshot(cert, key, ca, digest_of(files))


def pems(
    cert: bytes, key: bytes, ca: bytes | None, *, key_mode: int = 0o600, key_uid: int = 0
) -> Snapshot:
    """A snapshot of PEM contents, cert and CA 0644 and the key 0600, all root's."""
    return snap(
        read("cert", cert),
        read("key", key, mode=key_mode, uid=key_uid),
        read("ca", ca) if ca is not None else None,
    )


def codes(v: Verdict) -> list[str]:
    """The problem codes of a verdict, in order."""
    return [p.code for p in v.problems]


def only(v: Verdict, code: str) -> Problem:
    """The one problem of the verdict, which must have this code."""
    assert codes(v) == [code], [str(p) for p in v.problems]
    return v.problems[0]


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    """One root CA for the module."""
    return certs.make_root_ca(not_before=NOW - timedelta(days=30))


@pytest.fixture(scope="module")
def leaf(ca: certs.Issued) -> certs.Issued:
    """A good leaf for db.example.com."""
    return certs.make_leaf(
        ca,
        dns_sans=["db.example.com"],
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=90),
    )


def good(leaf: certs.Issued, ca: certs.Issued) -> Snapshot:
    """The control set: valid under ROOT."""
    return pems(leaf.cert_pem, leaf.key_pem, ca.cert_pem)


def _x25519_leaf(ca: certs.Issued) -> tuple[bytes, bytes]:
    """A leaf whose key is X25519 (a key-agreement key): cert and key PEM."""
    key = x25519.X25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db.example.com")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("db.example.com")]), False)
        .sign(ca.key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certs.Issued(cert, ca.key).cert_pem, key_pem


# --------------------------------------------------------------------------- libpq names


def facts(dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), cn: str | None = None) -> NameFacts:
    """NameFacts from readable values."""
    return NameFacts(dns, tuple(ipaddress.ip_address(ip).packed for ip in ips), cn)


NAME_CASES = [
    # (id, facts, host, accepted)
    ("same-name", facts(("a.example.com",)), "a.example.com", True),
    ("first-character-differs", facts(("a.example.com",)), "b.example.com", False),
    ("shortest-wildcard", facts(("*.x",)), "a.x", True),
    ("two-character-pattern", facts(("*.",)), "a.", False),
    ("wildcard-other-domain", facts(("*.example.com",)), "db.example.org", False),
    ("nul-even-when-host-has-it", facts(("db\0x",)), "db\0x", False),
    ("nul-cn-even-when-host-has-it", facts(cn="db\0x"), "db\0x", False),
    ("ipv6-san", facts(ips=("fe80::1",)), "fe80::1", True),
    ("zone-index-is-no-address", facts(ips=("fe80::1",)), "fe80::1%eth0", False),
    (
        "zone-index-host-is-a-dns-name",
        facts(ips=("fe80::1",), cn="fe80::1%eth0"),
        "fe80::1%eth0",
        True,
    ),
]


@pytest.mark.parametrize(
    ("name_facts", "host", "accepted"),
    [c[1:] for c in NAME_CASES],
    ids=[c[0] for c in NAME_CASES],
)
def test_libpq_name_rule_edges(name_facts: NameFacts, host: str, accepted: bool) -> None:
    """fe-secure-common.c's edges: every character of a name counts, a wildcard needs '*.' and
    at least one more character and the rest of the host, a NUL never matches, and a host with
    a zone index is not an address (inet_pton refuses it) but a DNS name.
    """
    assert host_matches(name_facts, host) is accepted


# --------------------------------------------------------------------------- Problem, Verdict


def test_a_problem_without_fix_reads_as_its_message() -> None:
    """``str(problem)`` is 'message; fix', or the message alone when there is no fix."""
    assert str(Problem("", "x", "the message", "")) == "the message"
    assert str(Problem("", "x", "the message", "the fix")) == "the message; the fix"


def test_verdict_carries_files_and_names(leaf: certs.Issued, ca: certs.Issued) -> None:
    """The verdict says which file plays which role and which names it was judged for."""
    v = judge(good(leaf, ca), ROOT, NOW)
    assert v.valid, v.problems
    assert v.files == {"cert": CERT, "key": KEY, "ca": CA}
    assert v.names == ("db.example.com",)


def test_unsettled_snapshot_is_a_problem_of_the_whole_set(
    leaf: certs.Issued, ca: certs.Issued
) -> None:
    """Files that kept changing while read: an 'unsettled' problem naming no file."""
    unsettled = dataclasses.replace(good(leaf, ca), consistent=False)
    problem = only(judge(unsettled, ROOT, NOW), "unsettled")
    assert problem.file == ""
    assert problem.message
    assert problem.fix


def test_no_names_is_a_warning_only_without_names(leaf: certs.Issued, ca: certs.Issued) -> None:
    """Without --san the set stays valid with one 'no-names' warning; with names, no warning."""
    unnamed = judge(good(leaf, ca), dataclasses.replace(ROOT, sans=()), NOW)
    assert unnamed.valid
    assert [w.code for w in unnamed.warnings] == ["no-names"]
    assert unnamed.warnings[0].file == ""
    assert unnamed.warnings[0].message
    assert "--san NAME" in unnamed.warnings[0].fix
    assert judge(good(leaf, ca), ROOT, NOW).warnings == ()


# --------------------------------------------------------------------------- the key-file rule


def with_key(leaf: certs.Issued, ca: certs.Issued, *, mode: int, uid: int, gid: int) -> Snapshot:
    """The good set with the key file's owner and mode as given."""
    return snap(
        read("cert", leaf.cert_pem),
        read("key", leaf.key_pem, mode=mode, uid=uid, gid=gid),
        read("ca", ca.cert_pem),
    )


def test_key_owned_by_another_user(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A key the server can read (group) but owned by neither it nor root: 'key-owner'."""
    v = judge(with_key(leaf, ca, mode=0o640, uid=4242, gid=PG_UID), POSTGRES, NOW)
    problem = only(v, "key-owner")
    assert problem.file == KEY
    assert "uid 4242" in problem.message
    assert "(postgres)" in problem.message
    assert "chown postgres" in problem.fix
    assert "defaultMode: 0640 and an fsGroup" in problem.fix


def test_key_of_the_server_user_with_group_access(leaf: certs.Issued, ca: certs.Issued) -> None:
    """The server's own key must be 0600 or stricter: 0640 is 'key-mode'; 0600 passes."""
    v = judge(with_key(leaf, ca, mode=0o640, uid=PG_UID, gid=PG_UID), POSTGRES, NOW)
    problem = only(v, "key-mode")
    assert problem.file == KEY
    assert "0640" in problem.message
    assert "postgres" in problem.message
    assert problem.fix.startswith("chmod 0600 it")
    assert "defaultMode: 0640 with an fsGroup" in problem.fix
    assert "install mode" in problem.fix
    assert judge(with_key(leaf, ca, mode=0o600, uid=PG_UID, gid=PG_UID), POSTGRES, NOW).valid


def test_root_key_with_world_access(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A root-owned key may be at most 0640: 0644 is 'key-mode'; 0640 passes."""
    v = judge(with_key(leaf, ca, mode=0o644, uid=0, gid=PG_UID), POSTGRES, NOW)
    problem = only(v, "key-mode")
    assert problem.file == KEY
    assert "0644" in problem.message
    assert "root" in problem.message
    assert problem.fix.startswith("chmod 0640 it")
    assert "defaultMode: 0640 and an fsGroup" in problem.fix
    assert judge(with_key(leaf, ca, mode=0o640, uid=0, gid=PG_UID), POSTGRES, NOW).valid


def test_key_rule_for_a_server_user_with_uid_1(leaf: certs.Issued, ca: certs.Issued) -> None:
    """The owner rule holds for every non-root server uid, 1 (daemon) included."""
    daemon = Policy(("db.example.com",), 1, "daemon", frozenset({1}))
    assert codes(judge(with_key(leaf, ca, mode=0o644, uid=1, gid=1), daemon, NOW)) == ["key-mode"]
    assert judge(with_key(leaf, ca, mode=0o600, uid=1, gid=1), daemon, NOW).valid


# --------------------------------------------------------------------------- who can read


def test_a_server_running_as_root_reads_any_file(leaf: certs.Issued, ca: certs.Issued) -> None:
    """For a root server, a CA file of mode 0000 owned by someone else is readable."""
    locked = snap(
        read("cert", leaf.cert_pem),
        read("key", leaf.key_pem, mode=0o600),
        read("ca", ca.cert_pem, mode=0o000, uid=4242, gid=4242),
    )
    assert judge(locked, ROOT, NOW).valid


def test_owner_without_read_bit_cannot_read(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A certificate owned by the server's user with mode 0200 cannot be read by it."""
    write_only = snap(
        read("cert", leaf.cert_pem, mode=0o200, uid=PG_UID, gid=PG_UID),
        read("key", leaf.key_pem, mode=0o600, uid=PG_UID, gid=PG_UID),
        read("ca", ca.cert_pem),
    )
    problem = only(judge(write_only, POSTGRES, NOW), "unreadable-by-server")
    assert problem.file == CERT
    assert "fsGroup" in problem.fix


@pytest.mark.parametrize(("role", "flag"), [("cert", "--cert"), ("key", "--key"), ("ca", "--ca")])
def test_missing_file_fix_names_its_option(
    leaf: certs.Issued, ca: certs.Issued, role: Role, flag: str
) -> None:
    """A file that does not exist is 'unreadable', and the fix names the option that sets it."""
    files = {
        "cert": read("cert", leaf.cert_pem),
        "key": read("key", leaf.key_pem, mode=0o600),
        "ca": read("ca", ca.cert_pem),
    }
    files[role] = read(role, None, error="does not exist")
    v = judge(snap(files["cert"], files["key"], files["ca"]), ROOT, NOW)
    problem = next(p for p in v.problems if p.file == str(PATHS[role]))
    assert problem.code == "unreadable"
    assert flag in problem.fix


def test_permission_denied_fix_names_the_uid(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A file certreload itself may not read: the fix says which uid needs read access."""
    denied = snap(
        read("cert", leaf.cert_pem),
        read("key", None, error="cannot be read: permission denied"),
        read("ca", ca.cert_pem),
    )
    problem = only(judge(denied, POSTGRES, NOW), "unreadable")
    assert problem.file == KEY
    assert f"uid {PG_UID}" in problem.fix


# --------------------------------------------------------------------------- said once, rightly


def test_unparseable_cert_is_not_also_refused(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A DER certificate is explained once ('cert-unreadable'), not again as OpenSSL's refusal;
    the fix gives the command that writes it as PEM.
    """
    v = judge(pems(leaf.cert_der, leaf.key_pem, ca.cert_pem), ROOT, NOW)
    assert "openssl x509 -in FILE -out tls.crt" in only(v, "cert-unreadable").fix


def test_unparseable_key_fix_gives_the_command(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A DER key: 'key-unreadable', and the fix gives the command that writes it as PEM."""
    v = judge(pems(leaf.cert_pem, leaf.key_der, ca.cert_pem), ROOT, NOW)
    assert "openssl pkey -in FILE -out tls.key" in only(v, "key-unreadable").fix


def test_wrong_key_is_one_mismatch_naming_the_certificate(
    leaf: certs.Issued, ca: certs.Issued
) -> None:
    """Another key: one 'key-mismatch' (not OpenSSL's again), naming the certificate file."""
    other = certs.make_leaf(ca).key_pem
    problem = only(judge(pems(leaf.cert_pem, other, ca.cert_pem), ROOT, NOW), "key-mismatch")
    assert problem.file == KEY
    assert CERT in problem.message
    assert "db.example.com" in problem.message


@pytest.fixture(scope="module")
def unusual_curve_cert(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A self-signed certificate on prime239v1: OpenSSL loads it, ``cryptography`` cannot."""
    work = tmp_path_factory.mktemp("p239")
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime239v1", "-genkey", "-noout", "-out", "k.pem"],
        cwd=work,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl", "req", "-x509", "-key", "k.pem", "-out", "c.pem", "-days", "30",
            "-subj", "/CN=db.example.com", "-addext", "subjectAltName=DNS:db.example.com",
        ],
        cwd=work,
        check=True,
        capture_output=True,
    )  # fmt: skip
    return (work / "c.pem").read_bytes()


def test_mismatch_cryptography_cannot_see_is_left_to_openssl(
    unusual_curve_cert: bytes, leaf: certs.Issued
) -> None:
    """A certificate key ``cryptography`` cannot read: OpenSSL's pair check finds the mismatch."""
    # openssl's certificate starts when it was made: judge it at its notBefore
    start = x509.load_pem_x509_certificate(unusual_curve_cert).not_valid_before_utc
    v = judge(pems(unusual_curve_cert, leaf.key_pem, unusual_curve_cert), ROOT, start)
    problem = only(v, "key-mismatch")
    assert problem.file == KEY
    assert "OpenSSL" in problem.message
    assert problem.fix


def test_refused_key_and_certificate_are_each_named(ca: certs.Issued) -> None:
    """An X25519 leaf: OpenSSL refuses both files, each a problem of its own with a fix."""
    cert, key = _x25519_leaf(ca)
    v = judge(pems(cert, key, ca.cert_pem), ROOT, NOW)
    assert codes(v) == ["cert-refused", "key-refused"]
    assert [p.file for p in v.problems] == [CERT, KEY]
    assert all("refused by OpenSSL" in p.message for p in v.problems)
    assert all("`openssl x509`/`openssl pkey`" in p.fix for p in v.problems)


def test_refused_key_is_named_after_an_explained_certificate(
    leaf: certs.Issued, ca: certs.Issued
) -> None:
    """An unreadable certificate does not hide OpenSSL's refusal of the key beside it."""
    _, key = _x25519_leaf(ca)
    v = judge(pems(leaf.cert_der, key, ca.cert_pem), ROOT, NOW)
    assert codes(v) == ["cert-unreadable", "key-refused"]


def test_ca_bundle_refused_by_the_server(leaf: certs.Issued, ca: certs.Issued) -> None:
    """A bundle with a damaged CRL block: ``cryptography`` skips it, the server's OpenSSL
    refuses the file: 'ca-refused' on the CA file, as the server's refusal, with a fix.
    """
    crl = b"-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n"
    v = judge(pems(leaf.cert_pem, leaf.key_pem, ca.cert_pem + crl), ROOT, NOW)
    problem = only(v, "ca-refused")
    assert problem.file == CA
    assert "is refused by OpenSSL" in problem.message
    assert problem.fix


# --------------------------------------------------------------------------- the chain


def test_without_ca_file_the_system_store_is_judged(leaf: certs.Issued) -> None:
    """No CA file (--ca system): a private CA's leaf does not chain; the fix names the store."""
    v = judge(pems(leaf.cert_pem, leaf.key_pem, None), ROOT, NOW)
    problem = only(v, "chain")
    assert problem.fix.endswith("chain in the system trust store")
    assert v.files == {"cert": CERT, "key": KEY}


def test_missing_intermediate_fix_names_both_files(ca: certs.Issued) -> None:
    """A missing intermediate gets its own fix (not the generic one), naming tls.crt and ca.crt."""
    inter = certs.make_intermediate(ca, cn="Issuing CA 9")
    orphan = certs.make_leaf(inter, dns_sans=["db.example.com"])
    problem = only(judge(pems(orphan.cert_pem, orphan.key_pem, ca.cert_pem), ROOT, NOW), "chain")
    assert "missing intermediate" in problem.fix
    assert f"after the leaf in {CERT}" in problem.fix
    assert f"chain in {CA}" in problem.fix


def test_missing_root_names_the_last_certificate_of_tls_crt(ca: certs.Issued) -> None:
    """tls.crt holds leaf and intermediate, ca.crt another root: the words name the
    intermediate as the certificate whose issuer is missing, not the leaf.
    """
    inter = certs.make_intermediate(ca, cn="Issuing CA 9")
    chained = certs.make_leaf(inter, dns_sans=["db.example.com"])
    stranger = certs.make_root_ca(cn="Some other root")
    bundle = certs.concat(chained.cert_pem, inter.cert_pem)
    problem = only(judge(pems(bundle, chained.key_pem, stranger.cert_pem), ROOT, NOW), "chain")
    assert "of 'Issuing CA 9' was found" in problem.message


def test_client_auth_leaf_gets_the_purpose_fix(ca: certs.Issued) -> None:
    """A clientAuth-only leaf chains fine but is refused: the fix speaks of serverAuth, and the
    message adds no 'missing issuer' words since the path is complete.
    """
    client = certs.make_leaf(ca, dns_sans=["db.example.com"], eku=[certs.CLIENT_AUTH])
    problem = only(judge(pems(client.cert_pem, client.key_pem, ca.cert_pem), ROOT, NOW), "chain")
    assert "serverAuth" in problem.fix
    assert problem.message.endswith("'")
    assert "issuer" not in problem.message


def test_other_verify_errors_get_the_generic_chain_fix() -> None:
    """A refusal the fix table does not know (path length exceeded) gets the generic fix: the
    ``openssl verify`` command for these very files, exactly as it must be typed.
    """
    root = certs.make_root_ca(basic_constraints=x509.BasicConstraints(ca=True, path_length=0))
    inter = certs.make_intermediate(root)
    deep = certs.make_leaf(inter, dns_sans=["db.example.com"])
    bundle = certs.concat(deep.cert_pem, inter.cert_pem)
    problem = only(judge(pems(bundle, deep.key_pem, root.cert_pem), ROOT, NOW), "chain")
    assert "path length" in problem.message
    assert problem.fix.endswith(f"openssl verify -CAfile {CA} -untrusted {CERT} {CERT}")


# --------------------------------------------------------------------------- refusal words


def test_small_leaf_key_is_explained(ca: certs.Issued) -> None:
    """An RSA-1024 leaf: the words say it is the security level and what size is needed."""
    weak = certs.make_leaf(ca, dns_sans=["db.example.com"], key_kind="rsa1024")
    problem = only(judge(pems(weak.cert_pem, weak.key_pem, ca.cert_pem), ROOT, NOW), "cert-refused")
    assert "security level" in problem.message
    assert "2048 bits" in problem.message


def test_small_chain_key_is_explained() -> None:
    """An intermediate with an RSA-1024 key in tls.crt: refused as a chain certificate."""
    root = certs.make_root_ca(key_kind="rsa1024")
    inter = certs.make_intermediate(root, key_kind="rsa1024")
    chained = certs.make_leaf(inter, dns_sans=["db.example.com"])
    bundle = certs.concat(chained.cert_pem, inter.cert_pem)
    v = judge(pems(bundle, chained.key_pem, root.cert_pem), ROOT, NOW)
    problem = only(v, "cert-refused")
    assert "chain certificate whose key is too small" in problem.message
    assert "2048-bit" in problem.fix


# --------------------------------------------------------------------------- dates


def dated(ca: certs.Issued, not_before: datetime, not_after: datetime) -> Snapshot:
    """A good set whose leaf has these dates."""
    issued = certs.make_leaf(
        ca, dns_sans=["db.example.com"], not_before=not_before, not_after=not_after
    )
    return pems(issued.cert_pem, issued.key_pem, ca.cert_pem)


def test_expired_leaf_is_called_the_leaf(ca: certs.Issued) -> None:
    """An expired leaf is 'its leaf' in the words, not a chain certificate."""
    v = judge(dated(ca, NOW - timedelta(days=30), NOW - timedelta(days=1)), ROOT, NOW)
    assert f"{CERT} its leaf expired on" in only(v, "expired").message


def test_valid_from_the_not_before_second(ca: certs.Issued) -> None:
    """At notBefore exactly the leaf is valid (as OpenSSL says); a second earlier it is not."""
    start = NOW + timedelta(days=1)
    later = dated(ca, start, start + timedelta(days=90))
    assert judge(later, ROOT, start).valid
    problem = only(judge(later, ROOT, start - timedelta(seconds=1)), "not-yet-valid")
    assert f"its leaf is not valid before {start:%Y-%m-%d %H:%M:%S} UTC" in problem.message


def test_expired_from_the_not_after_second(ca: certs.Issued, tmp_path: Path) -> None:
    """At notAfter exactly the leaf is expired, a second earlier it is valid: the verdict
    says what the real ``openssl verify -attime`` says at both seconds.
    """
    end = NOW + timedelta(days=1)
    s = dated(ca, NOW - timedelta(days=1), end)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(s.cert.data or b"")
    for at, valid in ((end - timedelta(seconds=1), True), (end, False)):
        openssl = subprocess.run(
            ["openssl", "verify", "-attime", str(int(at.timestamp())), "-CAfile",
             tmp_path / "ca.pem", tmp_path / "leaf.pem"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (openssl.returncode == 0) is valid, openssl.stdout + openssl.stderr
        v = judge(s, ROOT, at)
        assert v.valid is valid, (at, v.problems)
    assert f"its leaf expired on {end:%Y-%m-%d %H:%M:%S} UTC" in only(v, "expired").message


def test_a_client_bundle_openssl_cannot_load_is_a_problem_not_an_exception(
    leaf: certs.Issued, ca: certs.Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not reached with real bytes (the server side has just loaded the same bundle with the
    same call), so the client's load is made to fail: the verdict names ca.crt, or tls.crt
    when the system store is used, instead of raising.  Control: unpatched, the set is valid.
    """
    assert judge(good(leaf, ca), ROOT, NOW).valid

    def refuse(ca_data: bytes | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata="-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        return ctx  # not reached: OpenSSL raises

    monkeypatch.setattr(openssl, "client_context", refuse)
    problem = only(judge(good(leaf, ca), ROOT, NOW), "ca-refused")
    assert problem.file == CA
    assert "cannot be loaded as a client's root bundle" in problem.message
    assert "PEM" in problem.fix
    system = judge(pems(leaf.cert_pem, leaf.key_pem, None), ROOT, NOW)
    assert only(system, "ca-refused").file == CERT


def test_expiring_warning_says_when(ca: certs.Issued) -> None:
    """The 'expiring' warning names tls.crt, the date, and the days and hours left."""
    end = NOW + timedelta(days=90)
    v = judge(dated(ca, NOW - timedelta(days=1), end), ROOT, end - timedelta(days=2, hours=5))
    assert v.valid
    warning = v.warnings[0]
    assert warning.code == "expiring"
    assert warning.file == CERT
    assert f"expires on {end:%Y-%m-%d %H:%M:%S} UTC, in 2 days 5 hours" in warning.message
    assert "renewBefore" in warning.fix


def test_expiring_window_is_strict(ca: certs.Issued) -> None:
    """With a 14-day window, exactly 14 days before notAfter is not yet 'expiring'."""
    end = NOW + timedelta(days=90)
    s = dated(ca, NOW - timedelta(days=1), end)
    assert not judge(s, ROOT, end - timedelta(days=14)).expiring
    assert judge(s, ROOT, end - timedelta(days=14) + timedelta(seconds=1)).expiring


# --------------------------------------------------------------------------- names in the verdict


def named(
    ca: certs.Issued,
    sans: tuple[str, ...],
    *,
    dns_sans: tuple[str, ...] = (),
    ip_sans: tuple[str, ...] = (),
    cn: str | None = "db.example.com",
) -> Problem:
    """The one 'name' problem of a set judged for ``sans``."""
    issued = certs.make_leaf(ca, cn=cn, dns_sans=dns_sans, ip_sans=ip_sans)
    v = judge(
        pems(issued.cert_pem, issued.key_pem, ca.cert_pem),
        dataclasses.replace(ROOT, sans=sans),
        NOW,
    )
    return only(v, "name")


def test_name_problem_lists_what_the_certificate_offers(ca: certs.Issued) -> None:
    """The words list every DNS and IP SAN; the fix asks for a DNS SAN for a DNS name."""
    problem = named(
        ca,
        ("c.example.com",),
        dns_sans=("a.example.com", "b.example.com"),
        ip_sans=("10.0.0.1",),
    )
    assert "(the certificate offers: a.example.com, b.example.com, 10.0.0.1)" in problem.message
    assert problem.fix == "reissue it with subjectAltName DNS:c.example.com"


def test_name_problem_for_an_address_asks_for_an_ip_san(ca: certs.Issued) -> None:
    """An address clients use gets an IP SAN in the fix, not a DNS one."""
    problem = named(ca, ("10.0.0.9",), dns_sans=("db.example.com",))
    assert problem.fix == "reissue it with subjectAltName IP:10.0.0.9"


def test_name_problem_without_sans_shows_the_cn(ca: certs.Issued) -> None:
    """No SANs: the words say so and show the CN libpq falls back to."""
    problem = named(ca, ("other.example.com",), cn="db.example.com")
    assert "(the certificate offers: no SANs; CN 'db.example.com')" in problem.message


def test_name_problem_without_any_name(ca: certs.Issued) -> None:
    """Neither SAN nor CN: the certificate offers 'none'."""
    problem = named(ca, ("db.example.com",), cn=None)
    assert "(the certificate offers: none)" in problem.message


def test_ca_of_only_trusted_blocks_is_refused_with_the_command(
    leaf: certs.Issued, ca: certs.Issued
) -> None:
    """A ca.crt holding its root only as OpenSSL's TRUSTED CERTIFICATE: the server's list of
    client CAs cannot be read from it (the oracle measured the refusal), so 'ca-refused' on
    ca.crt says why and gives the command that writes a plain block.  Control: the same root
    as a plain block beside the trusted one is accepted.
    """
    trusted = certs.trusted(ca.cert_pem, "-addtrust", "serverAuth")
    problem = only(judge(pems(leaf.cert_pem, leaf.key_pem, trusted), ROOT, NOW), "ca-refused")
    assert problem.file == CA
    assert "no plain CERTIFICATE block" in problem.message
    assert "TRUSTED CERTIFICATE blocks" in problem.message
    assert "openssl x509 -in FILE -out ca.crt" in problem.fix
    both = certs.concat(trusted, ca.cert_pem)
    assert judge(pems(leaf.cert_pem, leaf.key_pem, both), ROOT, NOW).valid


def test_trust_settings_and_trusted_intermediates_point_at_their_file(
    leaf: certs.Issued, ca: certs.Issued
) -> None:
    """A root whose trust settings reject server use is ca.crt's problem ('ca-trust'), with
    the command that writes it plainly; an intermediate in TRUSTED form after the leaf is
    skipped by the server, so the chain fix says so.  Controls: the same files in plain form
    are valid.
    """
    other = certs.make_root_ca(cn="unrelated root")
    rejected = certs.concat(other.cert_pem, certs.trusted(ca.cert_pem, "-addreject", "serverAuth"))
    problem = only(judge(pems(leaf.cert_pem, leaf.key_pem, rejected), ROOT, NOW), "ca-trust")
    assert problem.file == CA
    assert "trust settings do not allow a server certificate" in problem.message
    assert "openssl x509 -in FILE -out ca.crt" in problem.fix
    plain = certs.concat(other.cert_pem, ca.cert_pem)
    assert judge(pems(leaf.cert_pem, leaf.key_pem, plain), ROOT, NOW).valid

    inter = certs.make_intermediate(ca, cn="issuing")
    chained = certs.make_leaf(inter, dns_sans=["db.example.com"])
    cert = certs.concat(chained.cert_pem, certs.trusted(inter.cert_pem))
    problem = only(judge(pems(cert, chained.key_pem, ca.cert_pem), ROOT, NOW), "chain")
    assert "as plain CERTIFICATE blocks" in problem.fix
    assert "skips TRUSTED CERTIFICATE blocks after the leaf (openssl x509 -in FILE)" in problem.fix
    cert = certs.concat(chained.cert_pem, inter.cert_pem)
    assert judge(pems(cert, chained.key_pem, ca.cert_pem), ROOT, NOW).valid
