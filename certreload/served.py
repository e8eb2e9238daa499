"""Reading the certificate a PostgreSQL (or PgBouncer) server presents.

The client sends the 8-byte SSLRequest; the server answers ``S`` and the TLS handshake
starts.  The probe verifies nothing (it only reads the leaf), then closes with a TLS
close_notify so that the server sees a clean end before any startup packet: PostgreSQL
logs nothing for such a connection.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from certreload.settings import Address

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_ENCODING_DER = 2  # _ssl.ENCODING_DER, for the certificate objects of Python before 3.13


class ServedError(Exception):
    """The served certificate could not be read; the message says why, in words."""


@dataclass(frozen=True)
class Served:
    """The leaf certificate a server presents, and the chain certificates it sends with it."""

    der: bytes
    chain: tuple[bytes, ...] | None = None  # DER, after the leaf; None: this Python cannot say

    @property
    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # reading, not trusting: the verdict judges the files
    return ctx


def _sent_chain(tls: ssl.SSLSocket) -> tuple[bytes, ...] | None:
    """The certificates the peer sent after its leaf, or None when this Python cannot tell.

    Python 3.13 has ``SSLSocket.get_unverified_chain()``; 3.10 to 3.12 have it only on the
    internal ``_sslobj``, returning certificate objects instead of DER bytes.
    """
    sslobj = getattr(tls, "_sslobj", None)
    get = getattr(tls, "get_unverified_chain", None) or getattr(
        sslobj, "get_unverified_chain", None
    )
    if get is None:
        return None
    sent: list[Any] = get() or []
    return tuple(
        item if isinstance(item, bytes) else item.public_bytes(_ENCODING_DER) for item in sent[1:]
    )


def read_served(address: Address, timeout: float = 5.0) -> Served:
    """Connect, negotiate TLS the PostgreSQL way and return the presented leaf."""
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        raise ServedError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    try:
        # Without TCP_NODELAY the close_notify waits for a delayed ACK (40 ms on Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(SSL_REQUEST)
        answer = sock.recv(1)
        if answer == b"N":
            raise ServedError(f"the server at {address} does not offer TLS (is ssl = on?)")
        if answer != b"S":
            raise ServedError(f"the server at {address} did not answer the SSLRequest")
        tls = _context().wrap_socket(sock, do_handshake_on_connect=True)
        try:
            der = tls.getpeercert(binary_form=True)
            chain = _sent_chain(tls)
        finally:
            try:
                sock = tls.unwrap()  # close_notify: no "connection reset" line in the server log
            except (OSError, ValueError):
                sock = tls
        if not der:
            raise ServedError(f"the server at {address} presented no certificate")
        return Served(der, chain)
    except ssl.SSLError as exc:
        raise ServedError(f"TLS with {address} failed: {exc.reason or exc}") from None
    except OSError as exc:
        if isinstance(exc, TimeoutError | socket.timeout):
            raise ServedError(f"the server at {address} did not answer in {timeout:g} s") from None
        raise ServedError(f"reading from {address} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
