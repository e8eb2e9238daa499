"""Shared fixtures: a world-traversable workspace, the docs' certificates, a real PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import DocsSet, TlsFiles, docs_openssl_set, install_tls_files
from tests.support.pgserver import PgServer, pg_binaries_missing, world_traversable_dir


@pytest.fixture(scope="session")
def tls_workspace() -> Iterator[Path]:
    """A folder under /tmp (0755) that the postgres user can traverse; removed at the end."""
    path = world_traversable_dir("certreload-tests-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def docs_set(tls_workspace: Path) -> DocsSet:
    """Certificates made by the CPO docs' own openssl commands."""
    return docs_openssl_set(tls_workspace / "docs")


@pytest.fixture(scope="session")
def good_tls_files(docs_set: DocsSet) -> TlsFiles:
    """The known good set the session server starts on (docs' set, key 0600 postgres)."""
    return docs_set.tls_files(key_mode=0o600, key_owner="postgres")


@pytest.fixture(scope="session")
def pg_live_dir(tls_workspace: Path) -> Path:
    """The folder whose tls.crt / tls.key / ca.crt the session server is configured to read."""
    path = tls_workspace / "live"
    path.mkdir(mode=0o755, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def pg_server(good_tls_files: TlsFiles, pg_live_dir: Path) -> Iterator[PgServer]:
    """One PostgreSQL 15 server for the session, started on the known good set."""
    missing = pg_binaries_missing()
    if missing is not None:
        pytest.skip(missing)
    cert, key, ca = install_tls_files(good_tls_files, pg_live_dir)
    server = PgServer(cert, key, ca)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
