"""The running daemon fed every bad set of the oracle corpus, one after another.

For each: an error-level line naming a file, the server keeps presenting the last good
certificate, the daemon stays up; at the end a good set is served.  Nothing the daemon prints
holds private key material.  The sets whose point is the key file's owner or mode are left to
test_beyond.py/test_faults.py: a kubelet volume gives every file one mode and owner.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.corpus import CASES, DEFAULT_NAMES, Pki, build_case
from tests.support import certs
from tests.support.wait import eventually
from tests.test_faults import Rig, make_rig
from tests.test_metrics_notify import CERTRELOAD, as_postgres

pytestmark = pytest.mark.pg


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A server on a kubelet-style secret (see test_faults)."""
    yield from make_rig()


def key_fragments(key: bytes) -> list[str]:
    """Pieces of a key's PEM body long enough to recognise it."""
    body = b"".join(line for line in key.splitlines() if line and not line.startswith(b"-----"))
    try:
        raw = base64.b64decode(body, validate=False)
    except ValueError:
        raw = b""
    text = body.decode("ascii", "replace")
    return [text[i : i + 24] for i in range(0, max(len(text) - 24, 1), 24)] + [raw[:16].hex()]


def test_every_bad_corpus_set_is_refused_while_running(rig: Rig) -> None:
    """Each bad set: an error line, the good certificate kept; then a good set is served."""
    pki = Pki(rig.base / "pki")
    bad = []
    for name in sorted(CASES):
        case = build_case(name, pki)
        if case.expect_valid or name.startswith("key_0"):
            continue
        if case.expect_loaded and case.names != DEFAULT_NAMES:
            continue  # refused only for its own names: the daemon checks DEFAULT_NAMES
        bad.append(case)
    assert len(bad) >= 20
    rig.server.start()
    good = certs.make_leaf(pki.root, cn="db.example.com", dns_sans=list(DEFAULT_NAMES))
    root = pki.root.cert_pem
    rig.volume.write({"tls.crt": good.cert_pem, "tls.key": good.key_pem, "ca.crt": root},
                     mode=0o640, gid=rig.gid)  # fmt: skip
    argv = as_postgres(
        [CERTRELOAD, "--dir", str(rig.volume.path), "--san", DEFAULT_NAMES[0],
         "--dsn", rig.server.superuser_dsn(), "--server-addr", f"127.0.0.1:{rig.server.port}",
         "--log-format", "json"]
    )  # fmt: skip
    rig.daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eventually(lambda: rig.serves(good), "the good set served")
    for case in bad:
        rig.volume.write(
            {"tls.crt": case.files.cert, "tls.key": case.files.key, "ca.crt": case.files.ca},
            mode=0o640,
            gid=rig.gid,
        )
        # longer than the settle time, so each set is judged on its own
        time.sleep(1.4)
        assert rig.daemon.poll() is None, case.name
        assert rig.serves(good), case.name
    final = certs.make_leaf(pki.root, cn="db.example.com", dns_sans=list(DEFAULT_NAMES))
    rig.volume.write({"tls.crt": final.cert_pem, "tls.key": final.key_pem, "ca.crt": root},
                     mode=0o640, gid=rig.gid)  # fmt: skip
    eventually(lambda: rig.serves(final), "a good set after the bad ones")
    code, err = rig.stop()
    assert code == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    rejected = [e for e in lines if e.get("outcome") == "rejected" and e.get("level") == "error"]
    assert len(rejected) >= len(bad) - 1  # two corpus sets may share one content
    for event in rejected:
        problems = event["problems"]
        assert isinstance(problems, list)
        assert any(name in str(problems) for name in ("tls.crt", "tls.key", "ca.crt"))
    everything = err  # the daemon writes nothing on stdout
    assert "PRIVATE KEY" not in everything
    for case in bad:
        for fragment in key_fragments(case.files.key):
            if len(fragment) >= 16:
                assert fragment not in everything, case.name
