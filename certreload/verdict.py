"""The verdict on a certificate set: valid exactly when PostgreSQL would load it on reload and
a libpq ``verify-full`` client would accept the server under every required name.

``judge(snapshot, policy, now)`` reads no file and no clock: everything comes in as values.
It lists every problem, each with the file it concerns, what is wrong and what to do.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.exceptions import UnsupportedAlgorithm

from certreload import judge as openssl
from certreload.names import host_matches
from certreload.pem import (
    CertInfo,
    ParsedCert,
    UnreadableError,
    chain_path,
    parse_certs,
    parse_key,
    public_der,
    trusted_after_first,
)
from certreload.snapshot import FileRead, Snapshot


@dataclass(frozen=True)
class Policy:
    """What the set is judged against."""

    sans: tuple[str, ...]
    pg_uid: int  # the server's OS user
    pg_user: str
    pg_gids: frozenset[int] = frozenset()
    expiry_warning: timedelta = timedelta(days=14)
    key_rule: bool = True  # False in install mode: the installed copy is what the server reads


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the set (or, as a warning, worth knowing)."""

    file: str  # the file it concerns, as configured; "" when it concerns the whole set
    code: str  # a stable identifier, e.g. "key-mismatch"
    message: str  # what is wrong, starting with the file's name
    fix: str  # what to do

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


@dataclass(frozen=True)
class Verdict:
    """The outcome of judging one snapshot."""

    digest: str
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    leaf: CertInfo | None
    chain: tuple[CertInfo, ...] = ()  # the path clients build, leaf first, when known
    names: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # role -> configured path

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def expiring(self) -> bool:
        return any(w.code == "expiring" for w in self.warnings)


# X509_V_ERR_CERT_UNTRUSTED, X509_V_ERR_CERT_REJECTED: only trust settings give these
_TRUST_SETTINGS = frozenset({27, 28})
_VERIFY_FIX = {
    2: "put the missing intermediate certificate after the leaf in {cert}, or its CA in {ca}",
    20: "put the missing intermediate after the leaf in {cert}, and the root CA that issued "
    "the chain in {ca}",
    18: "a self-signed server certificate must itself be in {ca}, or have it signed by that CA",
    19: "the chain ends at a root that is not in {ca}: give clients that root in {ca}",
    7: "a certificate's signature does not verify: reissue it from the right CA",
    24: "a certificate of the chain is not marked as a CA (basicConstraints CA:TRUE): "
    "reissue it, or fix the order of {cert} (leaf first)",
    26: "the leaf's extendedKeyUsage must include serverAuth (or be absent), and its keyUsage "
    "must allow digitalSignature or keyEncipherment: reissue it",
}


def _problem(file: FileRead, code: str, what: str, fix: str) -> Problem:
    return Problem(file.name, code, f"{file.name} {what}", fix)


def _key_rule(key: FileRead, policy: Policy) -> Problem | None:
    """PostgreSQL's ssl_key_file rule (be-secure-common.c), applied to the file as read."""
    mode, uid = key.mode, key.uid
    if uid not in (policy.pg_uid, 0):
        return _problem(
            key,
            "key-owner",
            f"is owned by uid {uid}; PostgreSQL requires the key file to be owned by the "
            f"server's user ({policy.pg_user}) or by root",
            f"chown {policy.pg_user} the file (mode 0600), or make it root-owned with mode "
            "0640; in Kubernetes mount the secret with defaultMode: 0640 and an fsGroup",
        )
    if uid == policy.pg_uid and uid != 0 and mode & 0o077:
        return _problem(
            key,
            "key-mode",
            f"has mode {mode:04o} and is owned by {policy.pg_user}; PostgreSQL refuses a key "
            "file owned by the server's user with any group or world access",
            "chmod 0600 it; in Kubernetes use defaultMode: 0640 with an fsGroup, which makes "
            "the key root-owned, or certreload's install mode",
        )
    if uid == 0 and mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        return _problem(
            key,
            "key-mode",
            f"has mode {mode:04o} and is owned by root; PostgreSQL allows at most 0640 for a "
            "root-owned key file",
            "chmod 0640 it (0600 if the server runs as root's group); in Kubernetes set "
            "defaultMode: 0640 and an fsGroup so the server's user can read it",
        )
    return None


def _readable_by(item: FileRead, policy: Policy) -> bool:
    if policy.pg_uid == 0:
        return True
    if item.uid == policy.pg_uid:
        return bool(item.mode & stat.S_IRUSR)
    if item.gid in policy.pg_gids:
        return bool(item.mode & stat.S_IRGRP)
    return bool(item.mode & stat.S_IROTH)


def _file_problems(snapshot: Snapshot, policy: Policy) -> list[Problem]:
    problems = []
    for item in snapshot.files:
        if item.error is not None:
            fix = {
                "cert": "check the path (--cert / --dir) and that the secret holds tls.crt",
                "key": "check the path (--key / --dir) and that the secret holds tls.key",
                "ca": "check the path (--ca / --dir); the CA may live in a second secret",
            }[item.role]
            if "permission" in item.error:
                fix = f"let the user running certreload read it (it runs as uid {policy.pg_uid})"
            problems.append(_problem(item, "unreadable", item.error, fix))
        elif policy.key_rule and not _readable_by(item, policy):
            problems.append(
                _problem(
                    item,
                    "unreadable-by-server",
                    f"(owner uid {item.uid}, group gid {item.gid}, mode {item.mode:04o}) "
                    f"cannot be read by the server's user {policy.pg_user}",
                    "give the server's user read access (owner, or group via fsGroup)",
                )
            )
    if snapshot.key.data is not None and policy.key_rule:
        rule = _key_rule(snapshot.key, policy)
        if rule is not None:
            problems.append(rule)
    return problems


@dataclass
class _Judgement:
    """Working state of one verdict."""

    snapshot: Snapshot
    policy: Policy
    now: datetime
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    certs: list[ParsedCert] = field(default_factory=list)
    trusted: list[ParsedCert] = field(default_factory=list)
    chain: list[ParsedCert] = field(default_factory=list)
    explained: set[str] = field(default_factory=set)  # roles that already have a problem
    server_ctx: ssl.SSLContext | None = None  # the set as the server loaded it

    def add(self, file: FileRead, code: str, what: str, fix: str) -> None:
        self.problems.append(_problem(file, code, what, fix))
        self.explained.add(file.role)

    def fix_text(self, template: str) -> str:
        ca = self.snapshot.ca.name if self.snapshot.ca is not None else "the system trust store"
        return template.format(cert=self.snapshot.cert.name, ca=ca)


def _parse_files(j: _Judgement) -> None:
    cert, key, ca = j.snapshot.cert, j.snapshot.key, j.snapshot.ca
    if cert.data is not None:
        try:
            j.certs = parse_certs(cert.data)
        except UnreadableError as exc:
            j.add(
                cert,
                "cert-unreadable",
                str(exc),
                "write the server certificate as PEM, "
                "leaf first: openssl x509 -in FILE -out tls.crt",
            )
    private_key = None
    if key.data is not None:
        try:
            private_key = parse_key(key.data)
        except UnreadableError as exc:
            fix = "write the unencrypted key as PEM: openssl pkey -in FILE -out tls.key"
            j.add(key, "key-unreadable", str(exc), fix)
    if ca is not None and ca.data is not None:
        try:
            j.trusted = parse_certs(ca.data)
        except UnreadableError as exc:
            j.add(ca, "ca-unreadable", str(exc), "write the CA certificate(s) as PEM")
    if private_key is not None and j.certs:
        try:
            matches = public_der(private_key) == public_der(j.certs[0].cert.public_key())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            matches = True  # an unusual key kind: let OpenSSL judge the pair
        if not matches:
            j.add(
                key,
                "key-mismatch",
                f"does not belong to the certificate in {cert.name} ({j.certs[0].info.label})",
                "put the key that was issued with this certificate in the secret "
                "(the first certificate of tls.crt must be the leaf)",
            )


def _openssl_load(j: _Judgement) -> None:
    """The server's OpenSSL loads the set; its refusals become problems unless explained."""
    cert, key, ca = j.snapshot.cert, j.snapshot.key, j.snapshot.ca
    if cert.data is None or key.data is None or (ca is not None and ca.data is None):
        return
    result, j.server_ctx = openssl.load_as_server(cert.data, key.data, ca.data if ca else None)
    for item, refusal, code in (
        (cert, result.cert, "cert-refused"),
        (key, result.key, "key-refused"),
        (ca, result.ca, "ca-refused"),
    ):
        if refusal is None or item is None or item.role in j.explained:
            continue
        j.add(item, code, _refusal_words(refusal), _refusal_fix(refusal))
    if result.pair is not None and not ({"cert", "key"} & j.explained):
        j.add(
            key,
            "key-mismatch",
            f"does not belong to the certificate in {cert.name} (OpenSSL: {result.pair.reason})",
            "put the key issued with this certificate",
        )


def _refusal_words(refusal: openssl.Refusal) -> str:
    words = {
        "EE_KEY_TOO_SMALL": "holds a key too small for OpenSSL's security level "
        "(RSA and DSA keys need 2048 bits or more)",
        "CA_KEY_TOO_SMALL": "holds a chain certificate whose key is too small for OpenSSL's "
        "security level",
        "CA_MD_TOO_WEAK": "holds a certificate signed with a digest too weak for OpenSSL's "
        "security level (SHA-1 or MD5)",
        openssl.NO_CLIENT_CA: "holds no plain CERTIFICATE block: the server also reads it as "
        "its list of client CAs, which takes no TRUSTED CERTIFICATE blocks",
    }.get(refusal.code)
    return words or f"is refused by OpenSSL: {refusal.reason}"


def _refusal_fix(refusal: openssl.Refusal) -> str:
    return {
        "EE_KEY_TOO_SMALL": "reissue the certificate with an RSA-2048 or larger, or an EC key",
        "CA_KEY_TOO_SMALL": "reissue the chain from a CA with a 2048-bit or larger key",
        "CA_MD_TOO_WEAK": "reissue the certificate signed with SHA-256 or better",
        openssl.NO_CLIENT_CA: "write each CA as a plain block: openssl x509 -in FILE -out ca.crt",
    }.get(refusal.code, "replace the file with one that `openssl x509`/`openssl pkey` reads")


def _client_check(j: _Judgement) -> None:
    """The libpq side: chain to the bundle (OpenSSL decides), dates, names."""
    snap = j.snapshot
    if j.server_ctx is None:
        return  # the server would not load the set: said already
    try:
        client_ctx = openssl.client_context(snap.ca.data if snap.ca is not None else None)
    except ssl.SSLError as exc:  # the server has just loaded this bundle with the same call
        j.add(
            snap.ca or snap.cert,
            "ca-refused",
            f"cannot be loaded as a client's root bundle ({exc.reason or exc})",
            "write the CA certificate(s) as PEM",
        )
        return
    refusal = openssl.handshake(j.server_ctx, client_ctx)
    if refusal is not None and refusal.verify_code in _TRUST_SETTINGS and snap.ca is not None:
        # OpenSSL's trust settings (a TRUSTED CERTIFICATE block) on a root of the bundle
        j.add(
            snap.ca,
            "ca-trust",
            f"holds the root in a form whose trust settings do not allow a server "
            f"certificate: OpenSSL says '{refusal.reason}'",
            "write each CA as a plain block, without trust settings: "
            "openssl x509 -in FILE -out ca.crt",
        )
        return
    if refusal is not None:
        where = _chain_words(j)
        what = f"is not accepted by a verify-full client: OpenSSL says '{refusal.reason}'{where}"
        template = _VERIFY_FIX.get(
            refusal.verify_code,
            "check the chain: openssl verify -CAfile {ca} -untrusted {cert} {cert}",
        )
        fix = j.fix_text(template)
        if snap.cert.data is not None and trusted_after_first(snap.cert.data):
            fix = (
                f"write the chain certificates of {snap.cert.name} as plain CERTIFICATE "
                "blocks: the server skips TRUSTED CERTIFICATE blocks after the leaf "
                "(openssl x509 -in FILE)"
            )
        j.add(snap.cert, "chain", what, fix)


def _chain_words(j: _Judgement) -> str:
    if not j.certs:
        return ""
    path, complete = chain_path(j.certs[0], j.certs[1:], j.trusted, j.now)
    if complete:
        return ""
    last = path[-1].info
    return f"; no certificate for the issuer '{last.issuer}' of '{last.label}' was found"


def _dates(j: _Judgement) -> None:
    if not j.certs:
        return
    path, _ = chain_path(j.certs[0], j.certs[1:], j.trusted, j.now)
    j.chain = path
    for index, parsed in enumerate(path):
        info = parsed.info
        kind = "its leaf" if index == 0 else f"chain certificate '{info.label}'"
        ca = j.snapshot.ca  # a chain certificate that tls.crt does not hold came from ca.crt
        file = ca if ca is not None and parsed not in j.certs else j.snapshot.cert
        if info.not_before > j.now:
            j.add(
                file,
                "not-yet-valid",
                f"{kind} is not valid before {info.not_before:%Y-%m-%d %H:%M:%S} UTC",
                "wait, or reissue it with a start date in the past (check the issuer's clock)",
            )
        elif info.not_after <= j.now:  # OpenSSL: expired from the notAfter second on
            j.add(
                file,
                "expired",
                f"{kind} expired on {info.not_after:%Y-%m-%d %H:%M:%S} UTC",
                "renew the certificate and update the secret",
            )
        elif info.not_after - j.now < j.policy.expiry_warning:
            left = info.not_after - j.now
            j.warnings.append(
                _problem(
                    file,
                    "expiring",
                    f"{kind} expires on {info.not_after:%Y-%m-%d %H:%M:%S} UTC, "
                    f"in {left.days} days {left.seconds // 3600} hours",
                    "renew it soon (check cert-manager's renewBefore, or the renewal job)",
                )
            )


def _names(j: _Judgement) -> None:
    if not j.certs:
        return
    leaf = j.certs[0]
    for name in j.policy.sans:
        if not host_matches(leaf.names, name):
            offered = ", ".join([*leaf.info.dns_names, *leaf.info.ip_addresses]) or (
                f"no SANs; CN {leaf.info.common_name!r}" if leaf.info.common_name else "none"
            )
            j.add(
                j.snapshot.cert,
                "name",
                f"does not cover the name {name!r} that clients use "
                f"(the certificate offers: {offered})",
                f"reissue it with subjectAltName DNS:{name}"
                if not _is_ip(name)
                else f"reissue it with subjectAltName IP:{name}",
            )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def judge(snapshot: Snapshot, policy: Policy, now: datetime) -> Verdict:
    """Judge one snapshot; see the module docstring."""
    j = _Judgement(snapshot, policy, now)
    if not snapshot.consistent:
        j.problems.append(
            Problem(
                "",
                "unsettled",
                "the files kept changing while they were "
                "read: no consistent generation could be read",
                "nothing to do if a writer is busy: certreload reads them again",
            )
        )
    j.problems.extend(_file_problems(snapshot, policy))
    j.explained.update(p_role for p_role in _roles_with_errors(snapshot))
    _parse_files(j)
    _openssl_load(j)
    _client_check(j)
    _dates(j)
    _names(j)
    if not policy.sans:
        j.warnings.append(
            Problem(
                "",
                "no-names",
                "no --san given: the names clients connect with are not being checked",
                "give each with --san NAME",
            )
        )
    files: dict[str, str] = {item.role: item.name for item in snapshot.files}
    return Verdict(
        digest=snapshot.digest,
        problems=tuple(j.problems),
        warnings=tuple(j.warnings),
        leaf=j.certs[0].info if j.certs else None,
        chain=tuple(p.info for p in j.chain),
        names=policy.sans,
        files=files,
    )


def _roles_with_errors(snapshot: Snapshot) -> list[str]:
    return [item.role for item in snapshot.files if item.error is not None]
