"""pem.parse_certs on OpenSSL's TRUSTED CERTIFICATE blocks (``openssl x509 -trustout``).

The block holds the certificate's DER followed by OpenSSL's trust settings; PostgreSQL and
libpq read it, so the verdict must read the certificate in it.  Every test that reads a block
has a control: the same block, damaged, must be refused, never skipped without a word.
"""

from __future__ import annotations

import base64

import pytest

from certreload.pem import UnreadableError, parse_certs
from tests.support import certs

BEGIN = b"-----BEGIN TRUSTED CERTIFICATE-----\n"
END = b"-----END TRUSTED CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def root() -> certs.Issued:
    """A root CA."""
    return certs.make_root_ca(cn="pem trusted root")


@pytest.fixture(scope="module")
def intermediate(root: certs.Issued) -> certs.Issued:
    """An intermediate CA under ``root``."""
    return certs.make_intermediate(root, cn="pem trusted intermediate")


@pytest.fixture(scope="module")
def leaf(intermediate: certs.Issued) -> certs.Issued:
    """A leaf under ``intermediate``."""
    return certs.make_leaf(intermediate, cn="db.example.com", dns_sans=["db.example.com"])


def der_of(block: bytes) -> bytes:
    """The DER inside one PEM block."""
    lines = block.strip().splitlines()
    return base64.b64decode(b"".join(lines[1:-1]))


def as_trusted(der: bytes) -> bytes:
    """``der`` in a TRUSTED CERTIFICATE block."""
    return BEGIN + base64.encodebytes(der) + END


def with_longer_header(der: bytes) -> bytes:
    """``der`` whose outer SEQUENCE claims one more byte than the certificate holds."""
    assert der[:2] == b"\x30\x82", "a certificate of 256 to 65535 bytes"
    length = int.from_bytes(der[2:4], "big") + 1
    return der[:2] + length.to_bytes(2, "big") + der[4:]


def fingerprints(data: bytes) -> list[str]:
    """SHA-256 fingerprints of the certificates parse_certs reads, in order."""
    return [parsed.info.fingerprint_sha256 for parsed in parse_certs(data)]


def refusal(data: bytes) -> str:
    """parse_certs' refusal of ``data``."""
    with pytest.raises(UnreadableError) as caught:
        parse_certs(data)
    return str(caught.value)


def test_trusted_block_without_settings_reads_as_its_certificate(leaf: certs.Issued) -> None:
    """`-trustout` alone: the leaf; its header claiming a byte too many: refused."""
    block = certs.trusted(leaf.cert_pem)
    assert fingerprints(block) == [leaf.fingerprint_sha256]
    damaged = as_trusted(with_longer_header(der_of(block)))
    assert refusal(damaged).startswith("holds a certificate that cannot be parsed (")


@pytest.mark.parametrize(
    "settings",
    [
        ("-addtrust", "serverAuth"),
        ("-addreject", "serverAuth"),
        ("-addtrust", "clientAuth", "-addreject", "serverAuth", "-setalias", "db"),
    ],
)
def test_trust_settings_after_the_certificate_are_not_read_as_it(
    root: certs.Issued, settings: tuple[str, ...]
) -> None:
    """The settings that follow the certificate are left out; cut inside the certificate (the
    settings gone too): refused.
    """
    block = certs.trusted(root.cert_pem, *settings)
    der = der_of(block)
    assert len(der) > len(der_of(root.cert_pem)), "the block holds trust settings"
    assert fingerprints(block) == [root.fingerprint_sha256]
    assert refusal(as_trusted(der[: len(der) // 2])).startswith(
        "holds a certificate that cannot be parsed ("
    )


def test_blocks_keep_their_order_beside_plain_blocks(
    leaf: certs.Issued, intermediate: certs.Issued, root: certs.Issued
) -> None:
    """TRUSTED, plain, TRUSTED: read in file order; the last one damaged: the file is refused
    (not read as the two good blocks).
    """
    good = certs.trusted(leaf.cert_pem)
    last = certs.trusted(root.cert_pem, "-addtrust", "serverAuth")
    data = certs.concat(good, intermediate.cert_pem, last)
    assert fingerprints(data) == [
        leaf.fingerprint_sha256,
        intermediate.fingerprint_sha256,
        root.fingerprint_sha256,
    ]
    damaged = certs.concat(good, intermediate.cert_pem, as_trusted(der_of(last)[:200]))
    assert refusal(damaged).startswith("holds a certificate that cannot be parsed (")


@pytest.mark.parametrize(
    "der",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x31\x03\x02\x01\x01", id="a SET, not a SEQUENCE"),
        pytest.param(b"\x30\x80\x02\x01\x01\x00\x00", id="indefinite length"),
        pytest.param(b"\x30\x85\x00\x00\x00\x00\x03\x02\x01\x01", id="five length bytes"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="a SEQUENCE, not a certificate"),
    ],
)
def test_broken_blocks_are_refused_beside_a_good_one(root: certs.Issued, der: bytes) -> None:
    """A TRUSTED block that holds no certificate spoils the file, as a plain one would; the
    same file with a good TRUSTED block in its place reads.
    """
    assert (
        fingerprints(certs.concat(certs.trusted(root.cert_pem), root.cert_pem))
        == [root.fingerprint_sha256] * 2
    )
    message = refusal(certs.concat(as_trusted(der), root.cert_pem))
    assert message.startswith("holds a certificate that cannot be parsed (")


def test_bad_base64_is_refused_without_quoting_the_file(root: certs.Issued) -> None:
    """A character outside base64 in a TRUSTED block: refused, and the message quotes none of
    the file; the good block alone reads.
    """
    block = certs.trusted(root.cert_pem, "-addtrust", "serverAuth")
    assert fingerprints(block) == [root.fingerprint_sha256]
    lines = block.splitlines(keepends=True)
    lines[1] = b"!" + lines[1][1:]
    message = refusal(b"".join(lines))
    assert message.startswith("holds a certificate that cannot be parsed (")
    for line in lines[1:-1]:
        assert line.strip()[8:40].decode() not in message
