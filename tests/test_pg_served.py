"""The edges: psycopg errors turned into kinds and words, and the served-certificate reader.

Against a real server (the session's): a role without permission, a wrong password, a port
where nothing listens, a server with TLS off, a peer that is not PostgreSQL.  The password
never appears in a message.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from certreload import pg
from certreload.served import ServedError, read_served
from certreload.settings import Address
from tests.support.pgserver import PgServer, free_port

pytestmark = pytest.mark.pg
SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def roles(pg_server: PgServer) -> PgServer:
    """A login role without reload permission, and one with it granted."""
    with pg_server.connect() as conn:
        for name in ("nobody_reloads", "may_reload"):
            conn.execute(f"DROP ROLE IF EXISTS {name}")
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")
        conn.execute("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO may_reload")
    return pg_server


def dsn(server: PgServer, user: str, password: str = SECRET) -> str:
    """A TCP conninfo with a password (pg_hba trusts 127.0.0.1, so any password logs in)."""
    return (
        f"host=127.0.0.1 port={server.port} dbname=postgres user={user} "
        f"password={password} sslmode=disable"
    )


def test_permission_kind_and_the_granted_control(roles: PgServer) -> None:
    """A role without EXECUTE on pg_reload_conf(): 'permission'; with the grant: reloads."""
    with pytest.raises(pg.PgError) as caught:
        pg.reload(dsn(roles, "nobody_reloads"))
    assert caught.value.kind == "permission"
    assert SECRET not in str(caught.value)
    facts = pg.reload(dsn(roles, "may_reload"))
    assert facts.ssl_cert_file.endswith("tls.crt")
    assert pg.conf_load_time(dsn(roles, "may_reload")) >= facts.conf_load_time


def test_nothing_listening_is_connect(roles: PgServer) -> None:
    """A closed port: kind 'connect', the password scrubbed."""
    with pytest.raises(pg.PgError) as caught:
        pg.reload(f"host=127.0.0.1 port={free_port()} user=x password={SECRET} connect_timeout=2")
    assert caught.value.kind == "connect"
    assert SECRET not in str(caught.value)


def test_unknown_role_is_auth_or_connect(roles: PgServer) -> None:
    """A role that does not exist: the server refuses the login (not 'permission')."""
    with pytest.raises(pg.PgError) as caught:
        pg.reload(dsn(roles, "no_such_role_here"))
    assert caught.value.kind in ("auth", "connect")
    assert "no_such_role_here" in str(caught.value)


def test_bad_dsn_and_redaction() -> None:
    """An unparsable DSN is 'other'; redact() drops the password and keeps the rest."""
    with pytest.raises(pg.PgError) as caught:
        pg.reload("host=x port")
    assert caught.value.kind == "other"
    text = pg.redact(f"host=db user=u password={SECRET}")
    assert SECRET not in text
    assert "host=db" in text
    assert pg.redact(None) == "libpq defaults (PG* variables)"
    assert SECRET not in pg.redact(f"postgresql://u:{SECRET}@db/x")


def test_served_reads_the_leaf_and_nothing_listening_is_named(pg_server: PgServer) -> None:
    """The live server: a fingerprint; a closed port: 'cannot connect'."""
    served = read_served(Address("127.0.0.1", pg_server.port))
    assert served.fingerprint_sha256 == pg_server.served_fingerprint()
    with pytest.raises(ServedError, match="cannot connect"):
        read_served(Address("127.0.0.1", free_port()))


@pytest.fixture
def fake_peer() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP peer that answers the SSLRequest with whatever the test puts in the list."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    answers: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(8)
                if answers:
                    conn.sendall(answers.pop(0))
                conn.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], answers
    server.close()


def test_served_refusals_are_named(fake_peer: tuple[int, list[bytes]]) -> None:
    """'N' (TLS off), another answer (not PostgreSQL), silence (timeout)."""
    port, answers = fake_peer
    address = Address("127.0.0.1", port)
    answers.append(b"N")
    with pytest.raises(ServedError, match="does not offer TLS"):
        read_served(address)
    answers.append(b"E")
    with pytest.raises(ServedError, match="did not answer the SSLRequest"):
        read_served(address)
    with pytest.raises(ServedError, match="did not answer in"):
        read_served(address, timeout=0.5)
    answers.append(b"S" + b"not a TLS server hello" * 4)
    with pytest.raises(ServedError, match="TLS with"):
        read_served(address)
