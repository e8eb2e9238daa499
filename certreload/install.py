"""Install mode: each valid set is copied into a folder the server reads, atomically as a set.

The layout is the kubelet's own: ``DIR/..certreload-<ns>/{tls.crt,tls.key,ca.crt,digest}``,
``DIR/..data -> ..certreload-<ns>`` and ``DIR/tls.crt -> ..data/tls.crt`` (likewise the key
and the CA).  A new generation is written and flushed in a new folder, then ``..data`` is
renamed over in one atomic step: whoever opens ``DIR/tls.crt`` sees the old set or the new
one, also when certreload dies in the middle.  The key is 0600 and owned by the user
certreload runs as, which must be the server's user: that copy is what PostgreSQL's key-file
rule then applies to.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from certreload.snapshot import Snapshot

DATA = "..data"
_PREFIX = "..certreload-"
_FILES = (("tls.crt", "cert", 0o644), ("tls.key", "key", 0o600), ("ca.crt", "ca", 0o644))


class InstallError(Exception):
    """The set could not be installed; the message names the folder and the reason."""


def installed_digest(folder: Path) -> str | None:
    """The digest of the set installed in ``folder``, or None."""
    try:
        return (folder / DATA / "digest").read_text().strip() or None
    except OSError:
        return None


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(folder: Path, snapshot: Snapshot) -> Path:
    """Install the snapshot's files into ``folder``; return the new generation's folder."""
    try:
        return _install(folder, snapshot)
    except OSError as exc:
        where = exc.filename or folder
        raise InstallError(
            f"cannot install into {folder}: {where}: {exc.strerror}; the folder must be "
            "writable by the user certreload runs as (the server's user)"
        ) from None


def _install(folder: Path, snapshot: Snapshot) -> Path:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    generation = folder / f"{_PREFIX}{time.time_ns()}"
    generation.mkdir(mode=0o755)
    contents = {"cert": snapshot.cert.data, "key": snapshot.key.data}
    if snapshot.ca is not None:
        contents["ca"] = snapshot.ca.data
    for name, role, mode in _FILES:
        data = contents.get(role)
        if data is not None:
            _write(generation / name, data, mode)
    _write(generation / "digest", snapshot.digest.encode() + b"\n", 0o644)
    _fsync_dir(generation)

    tmp = folder / (DATA + "_tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(generation.name, tmp)
    os.replace(tmp, folder / DATA)  # the one atomic step
    for name, role, _ in _FILES:
        link = folder / name
        if role in contents and not link.is_symlink():
            link_tmp = folder / (name + ".tmp")
            link_tmp.unlink(missing_ok=True)
            os.symlink(f"{DATA}/{name}", link_tmp)
            os.replace(link_tmp, link)
    _fsync_dir(folder)
    for old in folder.iterdir():
        if old.name.startswith(_PREFIX) and old != generation:
            shutil.rmtree(old, ignore_errors=True)
    return generation
