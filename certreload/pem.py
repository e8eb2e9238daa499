"""Reading certificates and keys with ``cryptography``: to describe them and explain refusals.

Nothing here decides whether a set is valid: OpenSSL does (judge.py).  This module says what
the files hold, in words a person can act on, and gives the fields (dates, names) that the
verdict checks itself.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import types
from cryptography.x509.oid import NameOID

from certreload.names import NameFacts

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_END = re.compile(rb"-----END ([A-Z0-9 ]+)-----")
_CERT_LABELS = {b"CERTIFICATE", b"TRUSTED CERTIFICATE", b"X509 CERTIFICATE"}


# what cryptography raises for a certificate it cannot read (fields are parsed lazily)
PARSE_ERRORS = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class UnreadableError(Exception):
    """The file's content is not what it must be; the message says what it is instead."""


@dataclass(frozen=True)
class CertInfo:
    """The fields of one certificate that people and the verdict look at."""

    subject: str
    common_name: str | None
    issuer: str
    serial: str  # hex
    not_before: datetime  # UTC
    not_after: datetime  # UTC
    fingerprint_sha256: str  # hex of the DER
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    self_issued: bool

    @property
    def label(self) -> str:
        """A short name for messages: the CN, else the subject."""
        return self.common_name or self.subject or f"serial {self.serial}"


@dataclass(frozen=True)
class ParsedCert:
    """A certificate with both its parsed object and its facts."""

    cert: x509.Certificate
    info: CertInfo
    names: NameFacts


def _labels(data: bytes) -> tuple[list[bytes], list[bytes]]:
    return _BLOCK.findall(data), _END.findall(data)


def looks_like_der(data: bytes) -> bool:
    """DER starts with an ASN.1 SEQUENCE and holds no PEM armour."""
    return data[:1] == b"\x30" and b"-----BEGIN" not in data


def _describe_missing_pem(data: bytes, what: str) -> str:
    if not data.strip():
        return "is empty"
    if looks_like_der(data):
        return f"holds DER (binary), not PEM; PostgreSQL reads only PEM {what}s"
    return f"holds no PEM {what} (no '-----BEGIN' line)"


def _first_cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def describe(cert: x509.Certificate) -> ParsedCert:
    """Extract the facts of a certificate."""
    dns: list[str] = []
    ips: list[bytes] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (x509.ExtensionNotFound, ValueError):
            san = None
        subject = cert.subject.rfc4514_string()
        issuer = cert.issuer.rfc4514_string()
        common_name = _first_cn(cert.subject)
    if san is not None:
        dns = [str(name) for name in san.get_values_for_type(x509.DNSName)]
        ips = [
            address.packed
            for address in san.get_values_for_type(x509.IPAddress)
            if isinstance(address, IPv4Address | IPv6Address)
        ]
    addresses = [str(IPv4Address(p) if len(p) == 4 else IPv6Address(p)) for p in ips]
    info = CertInfo(
        subject=subject,
        common_name=common_name,
        issuer=issuer,
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        dns_names=tuple(dns),
        ip_addresses=tuple(addresses),
        self_issued=cert.subject == cert.issuer,
    )
    return ParsedCert(cert, info, NameFacts(tuple(dns), tuple(ips), common_name))


def describe_der(der: bytes) -> CertInfo | None:
    """The facts of a DER certificate (as a server presents it); None if it cannot be parsed."""
    try:
        return describe(x509.load_der_x509_certificate(der)).info
    except PARSE_ERRORS:
        return None


_TRUSTED = re.compile(
    rb"-----BEGIN TRUSTED CERTIFICATE-----(.*?)-----END TRUSTED CERTIFICATE-----", re.DOTALL
)


def _first_tlv(der: bytes) -> bytes | None:
    """The first DER element of ``der`` (a SEQUENCE), or None when its header is broken."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    if der[1] < 0x80:
        end = 2 + der[1]
    else:
        size = der[1] & 0x7F
        if not 1 <= size <= 4 or len(der) < 2 + size:
            return None
        end = 2 + size + int.from_bytes(der[2 : 2 + size], "big")
    return der[:end] if end <= len(der) else None


def _untrusted(match: re.Match[bytes]) -> bytes:
    """The block as a plain CERTIFICATE block holding only the certificate."""
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except binascii.Error:
        return match.group(0)  # left as it is: cryptography says what is wrong with it
    # with a broken header, all of it: cryptography names the damage (a block under another
    # label would be skipped without a word)
    body = _first_tlv(der) or der
    return (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----"
    )


def trusted_after_first(data: bytes) -> bool:
    """Does a TRUSTED CERTIFICATE block follow the first PEM block (the server skips those)?"""
    return b"TRUSTED CERTIFICATE" in _BLOCK.findall(data)[1:]


def parse_certs(data: bytes) -> list[ParsedCert]:
    """Every certificate of a PEM file, in order; raises UnreadableError saying what is wrong."""
    begins, ends = _labels(data)
    if not begins:
        raise UnreadableError(_describe_missing_pem(data, "certificate"))
    if len(ends) < len(begins):
        raise UnreadableError("is truncated: a '-----BEGIN' line has no matching '-----END' line")
    if not any(label in _CERT_LABELS for label in begins):
        found = ", ".join(sorted({b.decode() for b in begins}))
        raise UnreadableError(f"holds no certificate, only PEM blocks of type {found}")
    # OpenSSL's TRUSTED CERTIFICATE blocks (written by `openssl x509 -trustout`) are read by
    # PostgreSQL and libpq: the certificate, followed by trust settings that OpenSSL's own
    # verification applies.  cryptography reads only the certificate part.
    if b"TRUSTED CERTIFICATE" in begins:
        data = _TRUSTED.sub(_untrusted, data)
    try:
        # cryptography parses fields lazily: a damaged name or date fails in describe()
        return [describe(cert) for cert in x509.load_pem_x509_certificates(data)]
    except PARSE_ERRORS as exc:
        raise UnreadableError(f"holds a certificate that cannot be parsed ({exc})") from None


def parse_key(data: bytes) -> types.PrivateKeyTypes:
    """The private key of a PEM file; raises UnreadableError saying what is wrong.

    Messages never quote the file's content.
    """
    begins, ends = _labels(data)
    if not begins:
        raise UnreadableError(_describe_missing_pem(data, "private key"))
    if len(ends) < len(begins):
        raise UnreadableError("is truncated: a '-----BEGIN' line has no matching '-----END' line")
    if b"ENCRYPTED PRIVATE KEY" in begins or b"Proc-Type: 4,ENCRYPTED" in data:
        raise UnreadableError(
            "is encrypted with a passphrase, which PostgreSQL cannot use on reload"
        )
    if not any(label.endswith(b"PRIVATE KEY") for label in begins):
        found = ", ".join(sorted({b.decode() for b in begins}))
        raise UnreadableError(f"holds no private key, only PEM blocks of type {found}")
    try:
        # The RSA consistency check (tens of ms for 2048 bits) is left to OpenSSL's load and
        # the handshake that judges the set: PostgreSQL does not run it either.
        return serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=True
        )
    except TypeError:
        raise UnreadableError(
            "is encrypted with a passphrase, which PostgreSQL cannot use on reload"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UnreadableError(
            "holds a private key that cannot be parsed (damaged or of an unknown kind)"
        ) from None


def public_der(key: types.PrivateKeyTypes | types.CertificatePublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER of a key (the public half, for a private key)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Does ``issuer``'s name and key match ``cert``'s issuer and signature?"""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def chain_path(
    leaf: ParsedCert, extra: list[ParsedCert], trusted: list[ParsedCert], now: datetime
) -> tuple[list[ParsedCert], bool]:
    """The path a verifier builds from the leaf: trusted issuers first, then tls.crt's extras.

    Returns the path (leaf first) and whether it ends at a trusted certificate.  Among several
    candidate issuers a currently valid one is preferred, as OpenSSL does.
    """
    path = [leaf]
    current = leaf
    for _ in range(10):
        fingerprint = current.info.fingerprint_sha256
        if current.info.self_issued and any(
            fingerprint == t.info.fingerprint_sha256 for t in trusted
        ):
            return path, True
        for pool in (trusted, extra):
            candidates = [c for c in pool if c is not current and issued_by(current.cert, c.cert)]
            if candidates:
                candidates.sort(key=lambda c: not (c.info.not_before <= now < c.info.not_after))
                break
        else:
            return path, False
        current = candidates[0]
        if current in path:
            return path, False
        path.append(current)
    return path, False
