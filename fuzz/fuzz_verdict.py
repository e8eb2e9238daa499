"""Coverage-guided fuzzing of the reader and the verdict with atheris.

Each input is a key mode byte, then the three files of a set separated by SEP; they are
written to a private folder, read by ``snapshot.read`` and judged by ``verdict.judge``.  A
crash is any exception; a hang is caught by atheris' ``-timeout``.  Seeds, made at start in a
temporary corpus folder unless one is given: valid sets (EC, RSA, Ed25519, with an
intermediate), so that the fuzzer starts from inputs that reach deep into the verdict.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_verdict.py -max_total_time=600 -timeout=10 -rss_limit_mb=2048

(600 s = the 10 minutes the project asks for; add a corpus folder as the last argument to keep
what it finds.)
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from certreload import snapshot
    from certreload.verdict import Policy, judge

FOLDER = Path(tempfile.mkdtemp(prefix="certreload-fuzz-"))
POLICY = Policy(sans=("db.example.com", "10.0.0.1", "*.x"), pg_uid=0, pg_user="root")
NOW = datetime(2026, 11, 28, tzinfo=UTC)
MODES = (0o600, 0o640, 0o644, 0o400, 0o000)


SEP = b"\n--8<--\n"


def test_one_input(data: bytes) -> None:
    """One set from fuzzer bytes: must give a verdict whose problems name a file."""
    mode = MODES[data[0] % len(MODES)] if data else 0o600
    parts = [*data[1:].split(SEP, 2), b"", b""]
    cert, key, ca = parts[0], parts[1], parts[2]
    for name, body in (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca)):
        (FOLDER / name).write_bytes(body)
    (FOLDER / "tls.key").chmod(mode)
    snap = snapshot.read(FOLDER / "tls.crt", FOLDER / "tls.key", FOLDER / "ca.crt")
    verdict = judge(snap, POLICY, NOW)
    names = {"", str(FOLDER / "tls.crt"), str(FOLDER / "tls.key"), str(FOLDER / "ca.crt")}
    for problem in verdict.problems:
        if problem.file not in names or not problem.message:
            raise AssertionError(f"malformed problem: {problem}")


def seeds() -> str:
    """A corpus folder holding valid sets, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import NameOID

    folder = Path(tempfile.mkdtemp(prefix="certreload-fuzz-seeds-"))
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, key: object, issuer: str, signer: object, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2027, 12, 31, tzinfo=UTC))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("db.example.com"), x509.DNSName("*.x")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return builder.sign(signer, algorithm)  # type: ignore[arg-type]

    def pem(c: x509.Certificate) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    def key_pem(k: object) -> bytes:
        return k.private_bytes(  # type: ignore[attr-defined,no-any-return]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    root = cert("root", ca_key, "root", ca_key, ca=True)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = cert("inter", inter_key, "root", ca_key, ca=True)
    leaves: list[tuple[bytes, object]] = []
    for index, key in enumerate(
        [
            ec.generate_private_key(ec.SECP256R1()),
            rsa.generate_private_key(65537, 2048),
            ed25519.Ed25519PrivateKey.generate(),
        ]
    ):
        leaves.append((pem(cert(f"leaf{index}", key, "root", ca_key, ca=False)), key))
    chained_key = ec.generate_private_key(ec.SECP256R1())
    chained = pem(cert("chained", chained_key, "inter", inter_key, ca=False)) + pem(inter)
    leaves.append((chained, chained_key))
    for index, (leaf_pem, key) in enumerate(leaves):
        body = bytes([index]) + leaf_pem + SEP + key_pem(key) + SEP + pem(root)
        (folder / f"seed{index}").write_bytes(body)
    # OpenSSL's TRUSTED CERTIFICATE form (certificate + trust settings), as a leaf and a CA
    leaf_pem, key = leaves[0]
    body = b"\0" + trusted(leaf_pem) + SEP + key_pem(key) + SEP + trusted(pem(root))
    (folder / "seed-trusted").write_bytes(body)
    return str(folder)


def trusted(pem: bytes) -> bytes:
    """``pem`` as ``openssl x509 -trustout -addtrust serverAuth`` writes it."""
    import subprocess

    return subprocess.run(
        ["openssl", "x509", "-trustout", "-addtrust", "serverAuth"],
        input=pem, capture_output=True, check=True,
    ).stdout  # fmt: skip


def main() -> None:
    """Run the fuzzer (arguments as libFuzzer's; a corpus folder is made if none is given)."""
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        argv.append(seeds())
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
