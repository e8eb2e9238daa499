"""Let the system's OpenSSL decide, called the way PostgreSQL and libpq call it.

PostgreSQL (be-secure-openssl.c) loads ``ssl_cert_file`` with
``SSL_CTX_use_certificate_chain_file``, ``ssl_key_file`` with ``SSL_CTX_use_PrivateKey_file``,
checks the pair with ``SSL_CTX_check_private_key`` and loads ``ssl_ca_file`` with
``SSL_CTX_load_verify_locations``.  Python's ``load_cert_chain`` and ``load_verify_locations``
make those very calls, at the same OpenSSL security level, so the outcome is the server's.

libpq with ``sslmode=verify-full`` verifies the chain with OpenSSL against ``sslrootcert``.
An in-memory TLS handshake between a server context loaded as above and a client context set
up like libpq's gives OpenSSL's own answer.  Certificate dates are left out of that handshake
(``X509_V_FLAG_NO_CHECK_TIME``) so that the caller can judge them at a ``now`` of its choosing;
host names are libpq's own rules (names.py), not OpenSSL's.

The bytes are handed to OpenSSL through anonymous in-memory files (memfd): nothing is written
to disk and the files judged are exactly the bytes that were read.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME
_PG_CIPHERS = "HIGH:MEDIUM:+3DES:!aNULL"  # ssl_ciphers' default
_PG_ECDH_CURVE = "prime256v1"  # ssl_ecdh_curve's default
# SSL_load_client_CA_file, which the server also reads ssl_ca_file with, takes only these
_CLIENT_CA_BLOCK = re.compile(rb"-----BEGIN (?:X509 )?CERTIFICATE-----")
NO_CLIENT_CA = "NO_CLIENT_CA"
# what SSL_CTX_check_private_key says when both files loaded but do not pair (a key of another
# kind goes into another slot than the certificate: "no certificate assigned")
_KEY_CHECK_REASONS = frozenset(
    {"KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "UNKNOWN_KEY_TYPE", "NO_CERTIFICATE_ASSIGNED"}
)


@dataclass(frozen=True)
class Refusal:
    """OpenSSL refused something; ``reason`` is its own text."""

    reason: str
    code: str = ""  # OpenSSL's reason mnemonic (e.g. EE_KEY_TOO_SMALL) or verify code
    verify_code: int = 0


@dataclass(frozen=True)
class LoadResult:
    """What the server's OpenSSL said of each file, and of the pair."""

    cert: Refusal | None
    key: Refusal | None
    pair: Refusal | None
    ca: Refusal | None

    @property
    def loaded(self) -> bool:
        return not (self.cert or self.key or self.pair or self.ca)


@contextlib.contextmanager
def _memfile(data: bytes, name: str) -> Iterator[str]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _refusal(exc: ssl.SSLError) -> Refusal:
    reason = exc.reason or ""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    text = text.split("] ", 1)[-1].split(" (_ssl.c")[0]
    return Refusal(text, reason)


def _server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_PG_CIPHERS)
    ctx.set_ecdh_curve(_PG_ECDH_CURVE)
    return ctx


def _no_password() -> bytes:
    # PostgreSQL's reload-time passphrase callback returns an empty passphrase: an encrypted
    # key cannot be loaded on reload.  Without a callback OpenSSL would prompt on the terminal.
    return b""


@cache
def _stand_in() -> tuple[bytes, bytes]:
    """A certificate and key that match nothing else: to load the other file of a pair alone."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certreload stand-in")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _load_pair(ctx: ssl.SSLContext, cert_path: str, key_path: str) -> Refusal | None:
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as exc:
        return _refusal(exc)
    return None


def load_as_server(
    cert: bytes, key: bytes, ca: bytes | None
) -> tuple[LoadResult, ssl.SSLContext | None]:
    """Load the set as PostgreSQL does; return what was refused and, if all loaded, the context.

    When the pair does not load, each file is loaded again beside a stand-in partner, so that
    the refusal is pinned on the file it concerns (a mismatch means the file itself loaded).
    """
    ctx = _server_context()
    cert_refusal = key_refusal = pair_refusal = ca_refusal = None
    with _memfile(cert, "tls.crt") as cert_path, _memfile(key, "tls.key") as key_path:
        pair_refusal = _load_pair(ctx, cert_path, key_path)
        if pair_refusal is not None:
            stand_cert, stand_key = _stand_in()
            with _memfile(stand_cert, "x.crt") as sc, _memfile(stand_key, "x.key") as sk:
                cert_refusal = _load_pair(_server_context(), cert_path, sk)
                key_refusal = _load_pair(_server_context(), sc, key_path)
            if cert_refusal is not None and cert_refusal.code in _KEY_CHECK_REASONS:
                cert_refusal = None
            if key_refusal is not None and key_refusal.code in _KEY_CHECK_REASONS:
                key_refusal = None
            if cert_refusal or key_refusal:
                pair_refusal = None
    if ca is not None:
        with _memfile(ca, "ca.crt") as ca_path:
            try:
                ctx.load_verify_locations(cafile=ca_path)
            except ssl.SSLError as exc:
                ca_refusal = _refusal(exc)
        if ca_refusal is None and not _CLIENT_CA_BLOCK.search(ca):
            # e.g. only TRUSTED CERTIFICATE blocks: verify locations load, the CA list does not
            ca_refusal = Refusal("no start line (no CERTIFICATE block for the client CA list)",
                                 NO_CLIENT_CA)  # fmt: skip
    result = LoadResult(cert_refusal, key_refusal, pair_refusal, ca_refusal)
    return result, (ctx if result.loaded else None)


def client_context(ca: bytes | None) -> ssl.SSLContext:
    """A client set up like libpq's verify-full, minus dates and host name (judged elsewhere).

    Raises ssl.SSLError when the bundle cannot be loaded (libpq: "could not read root
    certificate file").
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags = ctx.verify_flags | _NO_CHECK_TIME
    if ca is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        with _memfile(ca, "ca.crt") as ca_path:
            ctx.load_verify_locations(cafile=ca_path)
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> Refusal | None:
    """Run a TLS handshake in memory; return the client's (or server's) refusal, if any."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_side=False)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(8):
        for label, side, out, peer_in in (
            ("client", client_side, c_out, s_in),
            ("server", server_side, s_out, c_in),
        ):
            if not done[label]:
                try:
                    side.do_handshake()
                    done[label] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLCertVerificationError as exc:
                    return Refusal(exc.verify_message, "verify", exc.verify_code)
                except ssl.SSLError as exc:
                    return _refusal(exc)
            pending = out.read()
            if pending:
                peer_in.write(pending)
        if all(done.values()):
            return None
    return Refusal("the TLS handshake did not complete", "handshake")
