"""Certificates for tests: the CPO docs' own openssl commands, and a factory for variants.

Two ways to make certificates:

- ``docs_openssl_set`` runs the commands of the CPO documentation ("TLS/SSL connections")
  as written, through the real ``openssl`` CLI, so tests see exactly what users make.
- ``make_root_ca`` / ``make_intermediate`` / ``make_leaf`` build variants with ``cryptography``
  (key kinds, names, dates, extensions).  ``cryptography`` refuses to sign with SHA-1, so a
  SHA-1 certificate is signed by ``openssl x509 -req -sha1`` from a CSR made here.

``TlsFiles`` is the three files of a Kubernetes TLS secret plus the key file's mode and owner;
``install_tls_files`` writes them into a folder the way the server (or certreload) will read
them.  Nothing here prints key bytes.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import pwd
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ec256", "ec384", "rsa2048", "rsa1024", "ed25519"]
HashName = Literal["sha256", "sha384", "sha512", "sha1"]
Owner = Literal["postgres", "root"]

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


# --------------------------------------------------------------------------- the docs' commands


@dataclass(frozen=True)
class DocsSet:
    """Paths of what the CPO docs' commands produce (the CA key is encrypted, as in the docs)."""

    ca_cert: Path
    ca_key: Path
    ca_key_password: str = field(repr=False)
    cert: Path
    key: Path
    csr: Path

    @property
    def fingerprint_sha256(self) -> str:
        """sha256 of the leaf certificate's DER, lowercase hex."""
        return pem_fingerprint(self.cert.read_bytes())

    def tls_files(self, *, key_mode: int = 0o600, key_owner: Owner = "postgres") -> TlsFiles:
        """The secret's three files: tls.crt = leaf, tls.key = leaf key, ca.crt = the CA."""
        return TlsFiles(
            cert=self.cert.read_bytes(),
            key=self.key.read_bytes(),
            ca=self.ca_cert.read_bytes(),
            key_mode=key_mode,
            key_owner=key_owner,
        )


def _openssl(args: Sequence[str], cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        # openssl's own messages never hold key bytes; show them to explain the failure
        raise RuntimeError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr}")


def docs_openssl_set(
    workdir: Path, cn: str = "cluster-1", org: str = "MyCustomOrganization"
) -> DocsSet:
    """Run the CPO docs' openssl commands in ``workdir``; return the paths they make.

    The only changes: ``-pass``/``-passin`` so the encrypted CA key never prompts, and a real
    file instead of bash process substitution for ``-extfile``.
    """
    password = "docs-ca-" + os.urandom(8).hex()
    ca = f"{org}-RootCA"
    ca_dir = workdir / ca
    ca_dir.mkdir(parents=True, exist_ok=True)

    # Creating the CA-Key
    _openssl(
        [
            "genpkey", "-algorithm", "EC", "-out", f"{ca}.key",
            "-pkeyopt", "ec_paramgen_curve:secp384r1", "-pkeyopt", "ec_param_enc:named_curve",
            "-aes256", "-pass", f"pass:{password}",
        ],
        ca_dir,
    )  # fmt: skip
    # Creating the CA-Certificate
    _openssl(
        [
            "req", "-x509", "-new", "-nodes", "-key", f"{ca}.key", "-passin", f"pass:{password}",
            "-sha512", "-days", "1826", "-out", f"{ca}.crt",
            "-subj", f"/CN={org} Root-CA/C=AT/ST=Lower Austria/L=Woellersdorf/O={org}",
        ],
        ca_dir,
    )  # fmt: skip
    _docs_leaf(ca_dir, ca, password, cn, org)
    return DocsSet(
        ca_cert=ca_dir / f"{ca}.crt",
        ca_key=ca_dir / f"{ca}.key",
        ca_key_password=password,
        cert=ca_dir / f"{cn}.crt",
        key=ca_dir / f"{cn}.key",
        csr=ca_dir / f"{cn}.csr",
    )


def _docs_leaf(ca_dir: Path, ca: str, password: str, cn: str, org: str) -> None:
    """The docs' second block: key, CSR with the four DNS names, signed by the CA."""
    dns2, dns3, dns4 = f"{cn}-repl", f"{cn}-pooler", f"{cn}-pooler-repl"
    san = f"subjectAltName=DNS:{cn},DNS:{dns2},DNS:{dns3},DNS:{dns4}"
    # Creating the private Key
    _openssl(
        [
            "genpkey", "-algorithm", "EC", "-out", f"{cn}.key",
            "-pkeyopt", "ec_paramgen_curve:secp384r1", "-pkeyopt", "ec_param_enc:named_curve",
        ],
        ca_dir,
    )  # fmt: skip
    # Creating Certificate Signing Request (CSR)
    _openssl(
        [
            "req", "-new", "-key", f"{cn}.key", "-out", f"{cn}.csr",
            "-subj", f"/C=AT/ST=Lower Austria/L=Woellersdorf/O={org}/OU=OrgUnit/CN={cn}",
            "-addext", san,
        ],
        ca_dir,
    )  # fmt: skip
    # Sign CSR with the CA; the docs' <(echo -e "[ v3_req ]\n...") as a real file
    extfile = ca_dir / "v3_req.ext"
    extfile.write_text(f"[ v3_req ]\n{san}\n")
    _openssl(
        [
            "x509", "-req", "-in", f"{cn}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-passin", f"pass:{password}", "-CAcreateserial", "-out", f"{cn}.crt",
            "-days", "365", "-extfile", str(extfile), "-extensions", "v3_req",
        ],
        ca_dir,
    )  # fmt: skip


def docs_renew_leaf(
    docs: DocsSet, cn: str = "cluster-1", org: str = "MyCustomOrganization"
) -> None:
    """Run the docs' certificate block again with the same CA: a renewal, in place."""
    ca = docs.ca_cert.stem
    _docs_leaf(docs.ca_cert.parent, ca, docs.ca_key_password, cn, org)


# --------------------------------------------------------------------------- the factory


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        """The certificate, DER."""
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM (``BEGIN PRIVATE KEY``)."""
        return key_to_pem(self.key)

    @property
    def key_der(self) -> bytes:
        """The private key, unencrypted PKCS#8 DER."""
        return self.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def fingerprint_sha256(self) -> str:
        """sha256 of the certificate's DER, lowercase hex without colons."""
        return hashlib.sha256(self.cert_der).hexdigest()

    def key_pem_encrypted(self, password: bytes = b"secret-passphrase") -> bytes:
        """The private key, PKCS#8 PEM encrypted with ``password``."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )


def key_to_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """An unencrypted PKCS#8 PEM of ``key``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_key(kind: KeyKind) -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key of the given kind."""
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - a key the server must refuse
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def pem_fingerprint(cert_pem: bytes) -> str:
    """sha256 of the first certificate in ``cert_pem`` (its DER), lowercase hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(cn: str | None, org: str | None = None) -> x509.Name:
    attrs: list[x509.NameAttribute[str]] = []
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _dates(not_before: datetime | None, not_after: datetime | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    start = not_before if not_before is not None else now - timedelta(hours=1)
    end = not_after if not_after is not None else now + timedelta(days=365)
    return start, end


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A keyUsage extension value with the named bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    *,
    subject: x509.Name,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: Issued | None,
    not_before: datetime | None,
    not_after: datetime | None,
    hash_alg: HashName,
    dns_sans: Sequence[str],
    ip_sans: Sequence[str],
    eku: Sequence[x509.ObjectIdentifier] | None,
    usage: x509.KeyUsage | None,
    basic_constraints: x509.BasicConstraints | None,
) -> Issued:
    """Build and sign one certificate (self-signed when ``issuer`` is None)."""
    start, end = _dates(not_before, not_after)
    signer_key = issuer.key if issuer is not None else key
    issuer_name = issuer.cert.subject if issuer is not None else subject
    extensions: list[tuple[x509.ExtensionType, bool]] = []
    if basic_constraints is not None:
        extensions.append((basic_constraints, True))
    if usage is not None:
        extensions.append((usage, True))
    if eku is not None:
        extensions.append((x509.ExtendedKeyUsage(list(eku)), False))
    if dns_sans or ip_sans:
        general: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_sans]
        general += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_sans]
        extensions.append((x509.SubjectAlternativeName(general), False))
    extensions.append((x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    if issuer is not None:
        extensions.append(
            (
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                False,
            )
        )
    if hash_alg == "sha1":
        return _issue_sha1_with_openssl(subject, key, issuer, end, extensions)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else _HASHES[hash_alg]()
    return Issued(builder.sign(signer_key, algorithm), key)


def _issue_sha1_with_openssl(
    subject: x509.Name,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: Issued | None,
    not_after: datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> Issued:
    """Sign with SHA-1 through ``openssl x509 -req -sha1`` (``cryptography`` refuses SHA-1).

    The certificate is valid from now until ``not_after`` (OpenSSL 3.0's ``x509`` has no
    ``-not_before``).  Extensions travel in the CSR and are copied with ``-copy_extensions``.
    """
    if issuer is None:
        raise ValueError("a SHA-1 certificate here needs an issuer (the CSR is self-signed)")
    csr_builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for ext, critical in extensions:
        if isinstance(ext, x509.AuthorityKeyIdentifier | x509.SubjectKeyIdentifier):
            continue  # openssl x509 adds these itself
        csr_builder = csr_builder.add_extension(ext, critical=critical)
    csr_algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = csr_builder.sign(key, csr_algorithm)
    days = max(1, (not_after - datetime.now(UTC)).days)
    with tempfile.TemporaryDirectory(prefix="certreload-sha1-") as tmp:
        work = Path(tmp)
        (work / "leaf.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        (work / "ca.crt").write_bytes(issuer.cert_pem)
        ca_key = work / "ca.key"
        fd = os.open(ca_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(issuer.key_pem)
        _openssl(
            [
                "x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", str(x509.random_serial_number()), "-sha1",
                "-days", str(days), "-copy_extensions", "copyall", "-out", "leaf.crt",
            ],
            work,
        )  # fmt: skip
        cert = x509.load_pem_x509_certificate((work / "leaf.crt").read_bytes())
    return Issued(cert, key)


def make_root_ca(
    *,
    cn: str | None = "certreload test root CA",
    org: str | None = "certreload tests",
    key_kind: KeyKind = "ec384",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    hash_alg: HashName = "sha256",
    usage: x509.KeyUsage | None = CA_KEY_USAGE,
    basic_constraints: x509.BasicConstraints | None = None,
) -> Issued:
    """A self-signed CA (CA:TRUE critical, keyCertSign+cRLSign unless told otherwise)."""
    if not_after is None:
        not_after = datetime.now(UTC) + timedelta(days=3650)
    return _issue(
        subject=_name(cn, org),
        key=make_key(key_kind),
        issuer=None,
        not_before=not_before,
        not_after=not_after,
        hash_alg=hash_alg,
        dns_sans=(),
        ip_sans=(),
        eku=None,
        usage=usage,
        basic_constraints=basic_constraints or x509.BasicConstraints(ca=True, path_length=None),
    )


def make_intermediate(
    issuer: Issued,
    *,
    cn: str | None = "certreload test intermediate CA",
    org: str | None = "certreload tests",
    key_kind: KeyKind = "ec384",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    hash_alg: HashName = "sha256",
    usage: x509.KeyUsage | None = CA_KEY_USAGE,
    basic_constraints: x509.BasicConstraints | None = None,
) -> Issued:
    """A CA certificate signed by ``issuer``."""
    if not_after is None:
        not_after = datetime.now(UTC) + timedelta(days=1825)
    return _issue(
        subject=_name(cn, org),
        key=make_key(key_kind),
        issuer=issuer,
        not_before=not_before,
        not_after=not_after,
        hash_alg=hash_alg,
        dns_sans=(),
        ip_sans=(),
        eku=None,
        usage=usage,
        basic_constraints=basic_constraints or x509.BasicConstraints(ca=True, path_length=0),
    )


def make_leaf(
    issuer: Issued,
    *,
    key_kind: KeyKind = "ec256",
    cn: str | None = "db.example.com",
    org: str | None = None,
    dns_sans: Sequence[str] = (),
    ip_sans: Sequence[str] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    hash_alg: HashName = "sha256",
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    usage: x509.KeyUsage | None = None,
    basic_constraints: x509.BasicConstraints | None = None,
) -> Issued:
    """A server certificate signed by ``issuer``.

    Like the docs' leaf, it carries only the extensions asked for (plus SKI/AKI): no
    keyUsage, no extendedKeyUsage and no basicConstraints unless given.
    """
    return _issue(
        subject=_name(cn, org),
        key=make_key(key_kind),
        issuer=issuer,
        not_before=not_before,
        not_after=not_after,
        hash_alg=hash_alg,
        dns_sans=dns_sans,
        ip_sans=ip_sans,
        eku=eku,
        usage=usage,
        basic_constraints=basic_constraints,
    )


# --------------------------------------------------------------------------- damaged bytes


def truncated(pem: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``pem``: no END line, a cut base64 body."""
    return pem[: max(1, int(len(pem) * keep))]


def with_crlf(pem: bytes) -> bytes:
    """``pem`` with CRLF line endings (as a file edited on Windows)."""
    return pem.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def with_trailing_garbage(pem: bytes, garbage: bytes = b"\nthis is not PEM at all\n") -> bytes:
    """``pem`` followed by text that is not a PEM block."""
    return pem + garbage


def with_wrong_rsa_crt_coefficient(pem: bytes) -> bytes:
    """An RSA key whose CRT coefficient (iqmp) is off by one: the public half and ``d`` are
    right, so OpenSSL loads and uses it (it checks each CRT signature and falls back to
    ``d``), but ``openssl rsa -check`` and cryptography's key validation refuse it.
    """
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()

    def integer(value: int) -> bytes:
        body = value.to_bytes(value.bit_length() // 8 + 1, "big")
        return b"\x02" + _der_length(len(body)) + body

    fields = (0, numbers.public_numbers.n, numbers.public_numbers.e, numbers.d, numbers.p,
              numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp + 1)  # fmt: skip
    body = b"".join(integer(v) for v in fields)
    der = b"\x30" + _der_length(len(body)) + body
    lines = base64.encodebytes(der).replace(b"\n", b"")
    wrapped = b"\n".join(lines[i : i + 64] for i in range(0, len(lines), 64))
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + wrapped + b"\n-----END RSA PRIVATE KEY-----\n"


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(size)]) + size


def trusted(pem: bytes, *trust: str) -> bytes:
    """``pem`` as OpenSSL's TRUSTED CERTIFICATE, by ``openssl x509 -trustout`` with ``trust``
    options (e.g. ``-addtrust serverAuth``, ``-addreject serverAuth``).
    """
    result = subprocess.run(
        ["openssl", "x509", "-trustout", *trust], input=pem, capture_output=True, check=True,
        timeout=60,
    )  # fmt: skip
    assert result.stdout.startswith(b"-----BEGIN TRUSTED CERTIFICATE-----")
    return result.stdout


def concat(*pems: bytes) -> bytes:
    """PEM blocks one after another, each ending in a newline."""
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in pems)


# --------------------------------------------------------------------------- files on disk


@dataclass(frozen=True)
class TlsFiles:
    """The files of a Kubernetes TLS secret, and how the key file is protected.

    ``key_owner``: "postgres" means the server's OS user owns the key (group postgres);
    "root" means root owns it with group postgres (Kubernetes ``fsGroup``).
    """

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    ca: bytes = field(repr=False)
    key_mode: int = 0o600
    key_owner: Owner = "postgres"


def server_user() -> str:
    """The OS user the PostgreSQL server runs as: postgres when we are root, else ourselves."""
    if os.geteuid() == 0:
        return "postgres"
    return pwd.getpwuid(os.geteuid()).pw_name


def owner_ids(owner: Owner) -> tuple[int, int]:
    """(uid, gid) for an owner label; the group is always the server user's group."""
    user = pwd.getpwnam(server_user())
    if owner == "root":
        return 0, user.pw_gid
    return user.pw_uid, user.pw_gid


def can_apply_owner(owner: Owner) -> bool:
    """Whether this process can give a file that owner (only root can chown to root)."""
    return os.geteuid() == 0 or owner == "postgres"


def write_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename) with mode and owner."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    tmp.replace(path)


def install_tls_files(files: TlsFiles, folder: Path) -> tuple[Path, Path, Path]:
    """Write tls.crt, tls.key and ca.crt into ``folder``; return their paths.

    The key gets ``files.key_mode`` and owner; the certificate and CA bundle get 0644 with the
    same owner.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid, gid = owner_ids(files.key_owner)
    cert, key, ca = folder / "tls.crt", folder / "tls.key", folder / "ca.crt"
    write_file(cert, files.cert, 0o644, uid, gid)
    write_file(key, files.key, files.key_mode, uid, gid)
    write_file(ca, files.ca, 0o644, uid, gid)
    return cert, key, ca
