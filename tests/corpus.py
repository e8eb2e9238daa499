"""The corpus of the test of record: certificate sets and what the real parts do with them.

Each case builds one ``CertSet``: the three files of a TLS secret, the key file's mode and
owner, the names clients connect with, and the expected truth (does the server load it, do
clients accept every name).  The expectation is a sanity field: the oracle test measures the
truth with the real PostgreSQL and libpq and asserts that it matches, so the corpus cannot
silently turn into a list of sets that all pass (or all fail).

Every case makes its own leaf, so "the server serves this set's leaf" means "this set loaded".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509

from tests.support.certs import (
    CLIENT_AUTH,
    SERVER_AUTH,
    Issued,
    Owner,
    TlsFiles,
    concat,
    docs_openssl_set,
    key_usage,
    make_intermediate,
    make_leaf,
    make_root_ca,
    truncated,
    trusted,
    with_crlf,
    with_trailing_garbage,
    with_wrong_rsa_crt_coefficient,
)

TLS_CRT, TLS_KEY, CA_CRT = "tls.crt", "tls.key", "ca.crt"
DEFAULT_NAMES = ("db.example.com",)


@dataclass(frozen=True)
class CertSet:
    """One certificate set and its expected truth."""

    name: str
    files: TlsFiles
    names: tuple[str, ...]
    leaf_fingerprint: str  # of the leaf this set means to serve
    expect_loaded: bool  # the server loads it on reload
    expect_valid: bool  # loaded, and libpq verify-full accepts every name
    # where a rejection should point; also given for surprising accepted sets, in case a
    # future OpenSSL or libpq flips them to rejected
    problem_files: frozenset[str] = frozenset()
    note: str = ""


class Pki:
    """CAs shared by the cases (made once; leaves are made per case)."""

    def __init__(self, workdir: Path) -> None:
        """Make the CAs lazily; ``workdir`` holds what the openssl CLI writes."""
        self.workdir = workdir
        self.now = datetime.now(UTC)

    @cached_property
    def root(self) -> Issued:
        """The root CA most cases chain to (EC P-384, like the docs')."""
        return make_root_ca(cn="certreload corpus root CA")

    @cached_property
    def intermediate(self) -> Issued:
        """An intermediate CA under ``root``."""
        return make_intermediate(self.root, cn="certreload corpus intermediate CA")

    @cached_property
    def expired_intermediate(self) -> Issued:
        """An intermediate under ``root`` that expired yesterday."""
        return make_intermediate(
            self.root,
            cn="certreload corpus expired intermediate CA",
            not_before=self.now - timedelta(days=400),
            not_after=self.now - timedelta(days=1),
        )

    @cached_property
    def expired_root(self) -> Issued:
        """A self-signed root that expired yesterday."""
        return make_root_ca(
            cn="certreload corpus expired root CA",
            not_before=self.now - timedelta(days=3650),
            not_after=self.now - timedelta(days=1),
        )

    @cached_property
    def other_root(self) -> Issued:
        """A root that clients of these sets do not trust."""
        return make_root_ca(cn="certreload corpus other root CA")


Builder = Callable[[Pki], CertSet]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    """Register a case builder under ``name``."""

    def register(builder: Builder) -> Builder:
        if name in CASES:
            raise ValueError(f"duplicate case {name!r}")
        CASES[name] = builder
        return builder

    return register


def build_case(name: str, pki: Pki) -> CertSet:
    """Build the named case."""
    return dataclasses.replace(CASES[name](pki), name=name)


def _set(
    leaf: Issued,
    *,
    cert: bytes | None = None,
    key: bytes | None = None,
    ca: bytes,
    names: tuple[str, ...] = DEFAULT_NAMES,
    loaded: bool,
    valid: bool,
    problems: frozenset[str] = frozenset(),
    key_mode: int = 0o600,
    key_owner: Owner = "postgres",
    note: str = "",
) -> CertSet:
    assert valid or problems, "a rejected set names where its problem is"
    return CertSet(
        name="",
        files=TlsFiles(
            cert=leaf.cert_pem if cert is None else cert,
            key=leaf.key_pem if key is None else key,
            ca=ca,
            key_mode=key_mode,
            key_owner=key_owner,
        ),
        names=names,
        leaf_fingerprint=leaf.fingerprint_sha256,
        expect_loaded=loaded,
        expect_valid=valid,
        problem_files=problems,
        note=note,
    )


def _plain(pki: Pki, **leaf_options: object) -> Issued:
    """A leaf for db.example.com signed by the root, with options for make_leaf."""
    options: dict[str, object] = {"cn": "db.example.com", "dns_sans": ["db.example.com"]}
    options.update(leaf_options)
    return make_leaf(pki.root, **options)  # type: ignore[arg-type]


CERT = frozenset({TLS_CRT})
KEY = frozenset({TLS_KEY})
CA = frozenset({CA_CRT})
CERT_OR_KEY = frozenset({TLS_CRT, TLS_KEY})
CERT_OR_CA = frozenset({TLS_CRT, CA_CRT})


# ----------------------------------------------------------------------------- accepted shapes


@case("docs_openssl")
def _docs_openssl(pki: Pki) -> CertSet:
    docs = docs_openssl_set(pki.workdir / "docs-case")
    files = docs.tls_files()
    return CertSet(
        name="",
        files=files,
        names=("cluster-1", "cluster-1-repl", "cluster-1-pooler", "cluster-1-pooler-repl"),
        leaf_fingerprint=docs.fingerprint_sha256,
        expect_loaded=True,
        expect_valid=True,
        note="the CPO docs' openssl commands, as written",
    )


@case("rsa2048_leaf")
def _rsa2048(pki: Pki) -> CertSet:
    leaf = _plain(pki, key_kind="rsa2048")
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=True)


@case("ec256_leaf")
def _ec256(pki: Pki) -> CertSet:
    leaf = _plain(pki, key_kind="ec256")
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=True)


@case("ec384_leaf")
def _ec384(pki: Pki) -> CertSet:
    leaf = _plain(pki, key_kind="ec384")
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=True)


@case("ed25519_leaf")
def _ed25519(pki: Pki) -> CertSet:
    leaf = _plain(pki, key_kind="ed25519")
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=True)


@case("leaf_plus_intermediate")
def _leaf_plus_intermediate(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(
        leaf,
        cert=concat(leaf.cert_pem, pki.intermediate.cert_pem),
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
    )


@case("full_chain_with_root_in_tls_crt")
def _full_chain(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(
        leaf,
        cert=concat(leaf.cert_pem, pki.intermediate.cert_pem, pki.root.cert_pem),
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
    )


@case("intermediate_only_in_ca")
def _intermediate_only_in_ca(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(
        leaf,
        ca=concat(pki.root.cert_pem, pki.intermediate.cert_pem),
        loaded=True,
        valid=True,
        note="the server's OpenSSL builds the chain from ssl_ca_file (auto-chain); "
        "the client has the intermediate too",
    )


@case("ca_bundle_with_other_root_too")
def _ca_bundle_two_roots(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=concat(pki.other_root.cert_pem, pki.root.cert_pem),
        loaded=True,
        valid=True,
    )


@case("cn_only_no_san")
def _cn_only(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="db.example.com")
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
        note="libpq falls back to the CN when there is no dNSName SAN",
    )


@case("wildcard_one_label")
def _wildcard_one_label(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="wildcard", dns_sans=["*.db.example.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("a.db.example.com", "replica-1.db.example.com"),
        loaded=True,
        valid=True,
    )


@case("wildcard_tld")
def _wildcard_tld(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="tld", dns_sans=["*.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("example.com",),
        loaded=True,
        valid=True,
        problems=CERT,
        note="libpq's wildcard rule has no public-suffix or label-count limit",
    )


@case("uppercase_san")
def _uppercase_san(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="DB.EXAMPLE.COM", dns_sans=["DB.EXAMPLE.COM"])
    return _set(leaf, ca=pki.root.cert_pem, names=("db.example.com",), loaded=True, valid=True)


@case("ip_san")
def _ip_san(pki: Pki) -> CertSet:
    leaf = make_leaf(
        pki.root, cn="db.example.com", dns_sans=["db.example.com"], ip_sans=["10.1.2.3"]
    )
    return _set(
        leaf, ca=pki.root.cert_pem, names=("10.1.2.3", "db.example.com"), loaded=True, valid=True
    )


@case("ip_only_in_cn")
def _ip_only_in_cn(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="10.1.2.3")
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("10.1.2.3",),
        loaded=True,
        valid=True,
        problems=CERT,
        note="no SAN at all: libpq compares the CN text",
    )


@case("ip_in_cn_with_dns_sans")
def _ip_in_cn_with_dns_sans(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="10.1.2.3", dns_sans=["db.example.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("10.1.2.3",),
        loaded=True,
        valid=True,
        problems=CERT,
        note="for an IP host libpq checks the CN unless an iPAddress SAN exists",
    )


@case("ip_as_dns_san")
def _ip_as_dns_san(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="db", dns_sans=["10.1.2.3"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("10.1.2.3",),
        loaded=True,
        valid=True,
        problems=CERT,
        note="libpq compares dNSName text with the host text",
    )


@case("trailing_garbage_after_cert")
def _trailing_garbage_cert(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        cert=with_trailing_garbage(leaf.cert_pem),
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
        problems=CERT,
    )


@case("trailing_garbage_after_key")
def _trailing_garbage_key(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        key=with_trailing_garbage(leaf.key_pem),
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
        problems=KEY,
    )


@case("rsa_key_wrong_crt_coefficient")
def _rsa_wrong_crt(pki: Pki) -> CertSet:
    leaf = _plain(pki, key_kind="rsa2048")
    return _set(
        leaf,
        key=with_wrong_rsa_crt_coefficient(leaf.key_pem),
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
        problems=KEY,
        note="openssl rsa -check refuses the key, PostgreSQL and its clients do not mind",
    )


@case("trusted_certificate_leaf")
def _trusted_leaf(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    # openssl x509 -trustout: the server reads the leaf's block, trust settings and all
    return _set(leaf, cert=trusted(leaf.cert_pem), ca=pki.root.cert_pem, loaded=True, valid=True)


@case("trusted_certificate_leaf_and_intermediate")
def _trusted_chain(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    cert = concat(trusted(leaf.cert_pem), trusted(pki.intermediate.cert_pem))
    # the server reads chain certificates without trust settings: it skips the intermediate
    return _set(leaf, cert=cert, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT)


@case("trusted_certificate_ca_for_server_auth")
def _trusted_ca(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = trusted(pki.root.cert_pem, "-addtrust", "serverAuth")
    # ssl_ca_file is also read as the list of client CAs, which takes no TRUSTED blocks
    return _set(leaf, ca=ca, loaded=False, valid=False, problems=CA)


@case("trusted_certificate_ca_rejected_for_server_auth")
def _rejected_ca(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = trusted(pki.root.cert_pem, "-addreject", "serverAuth")
    return _set(leaf, ca=ca, loaded=False, valid=False, problems=CA)


@case("trusted_certificate_ca_for_client_auth_only")
def _client_auth_ca(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = trusted(pki.root.cert_pem, "-addtrust", "clientAuth")
    return _set(leaf, ca=ca, loaded=False, valid=False, problems=CA)


# A plain block of a CA the leaf does not chain to gives the server its client-CA list, so
# these sets load and the clients' reading of the TRUSTED block's trust settings decides.


@case("trusted_ca_beside_plain_ca")
def _trusted_beside_plain(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = concat(pki.other_root.cert_pem, trusted(pki.root.cert_pem))
    return _set(leaf, ca=ca, loaded=True, valid=True)


@case("trusted_ca_for_server_auth_beside_plain_ca")
def _server_auth_beside_plain(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = concat(pki.other_root.cert_pem, trusted(pki.root.cert_pem, "-addtrust", "serverAuth"))
    return _set(leaf, ca=ca, loaded=True, valid=True)


@case("trusted_ca_rejected_for_server_auth_beside_plain_ca")
def _rejected_beside_plain(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = concat(pki.other_root.cert_pem, trusted(pki.root.cert_pem, "-addreject", "serverAuth"))
    # libpq's verification honours the rejection: "certificate rejected"
    return _set(leaf, ca=ca, loaded=True, valid=False, problems=CA)


@case("trusted_ca_for_client_auth_only_beside_plain_ca")
def _client_auth_beside_plain(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    ca = concat(pki.other_root.cert_pem, trusted(pki.root.cert_pem, "-addtrust", "clientAuth"))
    # trust settings that do not name serverAuth leave the root untrusted for a server
    return _set(leaf, ca=ca, loaded=True, valid=False, problems=CA)


@case("crlf_line_endings")
def _crlf(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        cert=with_crlf(leaf.cert_pem),
        key=with_crlf(leaf.key_pem),
        ca=with_crlf(pki.root.cert_pem),
        loaded=True,
        valid=True,
    )


@case("leaf_basic_constraints_ca_true")
def _leaf_ca_true(pki: Pki) -> CertSet:
    leaf = _plain(pki, basic_constraints=x509.BasicConstraints(ca=True, path_length=None))
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        loaded=True,
        valid=True,
        problems=CERT,
        note="OpenSSL without X509_STRICT accepts a CA:TRUE leaf",
    )


@case("eku_server_auth")
def _eku_server_auth(pki: Pki) -> CertSet:
    leaf = _plain(pki, eku=[SERVER_AUTH])
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=True)


@case("ku_digital_signature")
def _ku_digital_signature(pki: Pki) -> CertSet:
    leaf = _plain(pki, usage=key_usage(digital_signature=True))
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=True)


@case("key_0600_postgres")
def _key_0600_postgres(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf, ca=pki.root.cert_pem, key_mode=0o600, key_owner="postgres", loaded=True, valid=True
    )


@case("key_0640_root_postgres")
def _key_0640_root(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        key_mode=0o640,
        key_owner="root",
        loaded=True,
        valid=True,
        note="Kubernetes defaultMode 0640 + fsGroup",
    )


# ----------------------------------------------------------------------------- loaded, refused


@case("intermediate_missing")
def _intermediate_missing(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT_OR_CA)


@case("name_only_in_cn_with_dns_sans")
def _name_only_in_cn(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="db.example.com", dns_sans=["other.example.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        loaded=True,
        valid=False,
        problems=CERT,
        note="a dNSName SAN exists, so libpq ignores the CN",
    )


@case("wildcard_two_labels")
def _wildcard_two_labels(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="wildcard", dns_sans=["*.db.example.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("a.b.db.example.com",),
        loaded=True,
        valid=False,
        problems=CERT,
    )


@case("wildcard_not_apex")
def _wildcard_not_apex(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="wildcard", dns_sans=["*.db.example.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("db.example.com",),
        loaded=True,
        valid=False,
        problems=CERT,
    )


@case("partial_label_wildcard")
def _partial_wildcard(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="partial", dns_sans=["db*.example.com"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("db1.example.com",),
        loaded=True,
        valid=False,
        problems=CERT,
        note="libpq only knows a whole '*.' label",
    )


@case("ip_not_covered")
def _ip_not_covered(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.root, cn="10.1.2.3", ip_sans=["10.9.9.9"])
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("10.1.2.3",),
        loaded=True,
        valid=False,
        problems=CERT,
        note="an iPAddress SAN exists, so the CN is not checked",
    )


@case("name_not_covered")
def _name_not_covered(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("other.example.com",),
        loaded=True,
        valid=False,
        problems=CERT,
    )


@case("second_name_not_covered")
def _second_name_not_covered(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        names=("db.example.com", "db-repl.example.com"),
        loaded=True,
        valid=False,
        problems=CERT,
    )


@case("expired_leaf")
def _expired(pki: Pki) -> CertSet:
    leaf = _plain(
        pki, not_before=pki.now - timedelta(days=30), not_after=pki.now - timedelta(days=1)
    )
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT)


@case("not_yet_valid")
def _not_yet_valid(pki: Pki) -> CertSet:
    leaf = _plain(
        pki, not_before=pki.now + timedelta(days=1), not_after=pki.now + timedelta(days=365)
    )
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT)


@case("expired_intermediate")
def _expired_intermediate(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.expired_intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(
        leaf,
        cert=concat(leaf.cert_pem, pki.expired_intermediate.cert_pem),
        ca=pki.root.cert_pem,
        loaded=True,
        valid=False,
        problems=CERT,
    )


@case("expired_root")
def _expired_root(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.expired_root, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(leaf, ca=pki.expired_root.cert_pem, loaded=True, valid=False, problems=CA)


@case("other_ca")
def _other_ca(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.other_root, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT_OR_CA)


@case("eku_client_auth_only")
def _eku_client_auth(pki: Pki) -> CertSet:
    leaf = _plain(pki, eku=[CLIENT_AUTH])
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT)


@case("ku_key_cert_sign_only")
def _ku_key_cert_sign(pki: Pki) -> CertSet:
    leaf = _plain(pki, usage=key_usage(key_cert_sign=True))
    return _set(leaf, ca=pki.root.cert_pem, loaded=True, valid=False, problems=CERT)


# ----------------------------------------------------------------------------- not loaded


@case("rsa1024_leaf")
def _rsa1024(pki: Pki) -> CertSet:
    leaf = _plain(pki, key_kind="rsa1024")
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=CERT_OR_KEY,
        note="OpenSSL security level 2: 'ee key too small'",
    )


@case("sha1_leaf")
def _sha1(pki: Pki) -> CertSet:
    leaf = _plain(pki, hash_alg="sha1")
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=CERT,
        note="OpenSSL security level 2: 'ca md too weak'",
    )


@case("key_mismatch")
def _key_mismatch(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    other = _plain(pki)
    return _set(
        leaf,
        key=other.key_pem,
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=CERT_OR_KEY,
    )


@case("encrypted_key")
def _encrypted_key(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        key=leaf.key_pem_encrypted(),
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=KEY,
    )


@case("der_cert")
def _der_cert(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf, cert=leaf.cert_der, ca=pki.root.cert_pem, loaded=False, valid=False, problems=CERT
    )


@case("der_key")
def _der_key(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf, key=leaf.key_der, ca=pki.root.cert_pem, loaded=False, valid=False, problems=KEY
    )


@case("empty_cert")
def _empty_cert(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(leaf, cert=b"", ca=pki.root.cert_pem, loaded=False, valid=False, problems=CERT)


@case("empty_key")
def _empty_key(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(leaf, key=b"", ca=pki.root.cert_pem, loaded=False, valid=False, problems=KEY)


@case("truncated_cert")
def _truncated_cert(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        cert=truncated(leaf.cert_pem),
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=CERT,
    )


@case("truncated_key")
def _truncated_key(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        key=truncated(leaf.key_pem),
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=KEY,
    )


@case("empty_ca")
def _empty_ca(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(leaf, ca=b"", loaded=False, valid=False, problems=CA)


@case("ca_garbage")
def _ca_garbage(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf, ca=b"this is not a certificate bundle\n", loaded=False, valid=False, problems=CA
    )


@case("wrong_order_in_tls_crt")
def _wrong_order(pki: Pki) -> CertSet:
    leaf = make_leaf(pki.intermediate, cn="db.example.com", dns_sans=["db.example.com"])
    return _set(
        leaf,
        cert=concat(pki.intermediate.cert_pem, leaf.cert_pem),
        ca=pki.root.cert_pem,
        loaded=False,
        valid=False,
        problems=CERT_OR_KEY,
        note="the first certificate is taken as the server's: it does not match the key",
    )


@case("key_0644_postgres")
def _key_0644_postgres(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        key_mode=0o644,
        key_owner="postgres",
        loaded=False,
        valid=False,
        problems=KEY,
    )


@case("key_0640_postgres")
def _key_0640_postgres(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        key_mode=0o640,
        key_owner="postgres",
        loaded=False,
        valid=False,
        problems=KEY,
    )


@case("key_0644_root")
def _key_0644_root(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        key_mode=0o644,
        key_owner="root",
        loaded=False,
        valid=False,
        problems=KEY,
    )


@case("key_0600_root")
def _key_0600_root(pki: Pki) -> CertSet:
    leaf = _plain(pki)
    return _set(
        leaf,
        ca=pki.root.cert_pem,
        key_mode=0o600,
        key_owner="root",
        loaded=False,
        valid=False,
        problems=KEY,
        note="allowed by the permission rule, but postgres cannot read it",
    )


# a cheap guard so the corpus keeps both sides well populated
_MIN_CASES = 40


def check_corpus_shape() -> None:
    """Fail loudly if the corpus shrinks below what the test of record promises."""
    if len(CASES) < _MIN_CASES:
        raise AssertionError(f"the corpus has {len(CASES)} cases, fewer than {_MIN_CASES}")
