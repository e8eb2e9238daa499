"""Reading the certificate set: the only code that opens the files.

A snapshot is one consistent generation of the set.  Kubernetes swaps a secret by renaming
its ``..data`` link; a read that straddles the swap could pair a new certificate with an old
key.  So every path is resolved once, each file is read through its resolved path, and the
set is read again when any path resolved differently afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["cert", "key", "ca"]
ROLES: tuple[Role, ...] = ("cert", "key", "ca")
MAX_FILE_BYTES = 1024 * 1024
_ATTEMPTS = 20


@dataclass(frozen=True)
class FileRead:
    """One file of the set as read: its bytes and metadata, or why it could not be read."""

    role: Role
    path: Path  # as configured
    resolved: str | None = None
    data: bytes | None = field(default=None, repr=False)
    error: str | None = None  # what went wrong, in words; None when data was read
    mode: int = 0
    uid: int = -1
    gid: int = -1
    ctime: float = 0.0  # st_ctime: when the file was last written, renamed or chmod-ed

    @property
    def name(self) -> str:
        """How messages name the file: its configured path."""
        return str(self.path)


@dataclass(frozen=True)
class Snapshot:
    """One generation of the set. ``ca`` is None when the OS trust store is used."""

    cert: FileRead
    key: FileRead
    ca: FileRead | None
    digest: str  # sha256 over the roles and contents: changes when any content changes
    consistent: bool = True  # False: the files kept changing while read (see read())

    @property
    def files(self) -> tuple[FileRead, ...]:
        return (self.cert, self.key) + ((self.ca,) if self.ca is not None else ())

    @property
    def changed_at(self) -> float:
        """The newest st_ctime of the files (seconds since the epoch)."""
        return max(item.ctime for item in self.files)


def _read_one(role: Role, path: Path) -> FileRead:
    try:
        resolved = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return FileRead(role, path, error="is a symbolic link loop")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return FileRead(role, path, error="does not exist")
        return FileRead(role, path, error=f"cannot be resolved ({exc.strerror})")
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return FileRead(role, path, resolved, error="cannot be read: permission denied")
        if exc.errno == errno.ENOENT:
            return FileRead(role, path, resolved, error="does not exist")
        return FileRead(role, path, resolved, error=f"cannot be opened ({exc.strerror})")
    try:
        info = os.fstat(fd)

        def result(data: bytes | None = None, error: str | None = None) -> FileRead:
            mode = stat.S_IMODE(info.st_mode)
            uid, gid, ctime = info.st_uid, info.st_gid, info.st_ctime
            return FileRead(role, path, resolved, data, error, mode, uid, gid, ctime)

        if stat.S_ISDIR(info.st_mode):
            return result(error="is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            return result(error="is not a regular file (a FIFO, socket or device)")
        if info.st_size > MAX_FILE_BYTES:
            return result(error=_too_large(info.st_size))
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            return result(error=_too_large(size))
        return result(data=b"".join(chunks))
    except OSError as exc:
        return FileRead(role, path, resolved, error=f"cannot be read ({exc.strerror})")
    finally:
        os.close(fd)


def _too_large(size: int) -> str:
    return f"is {size} bytes, more than the {MAX_FILE_BYTES} a certificate file can need"


def _resolve(path: Path) -> str | None:
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return None


def digest_of(files: tuple[FileRead, ...]) -> str:
    """sha256 over each file's role, length and content (or its error)."""
    h = hashlib.sha256()
    for item in files:
        body = item.data if item.data is not None else ("!" + (item.error or "")).encode()
        h.update(item.role.encode() + b"\0" + str(len(body)).encode() + b"\0" + body)
    return h.hexdigest()


def read(cert: Path, key: Path, ca: Path | None) -> Snapshot:
    """Read one consistent generation of the set (see the module docstring).

    When the paths resolve differently after every one of _ATTEMPTS reads (the files are
    being swapped without pause), the snapshot says so: ``consistent`` is False and the
    verdict refuses it, rather than judge a set that may pair files of two generations.
    """
    paths: list[tuple[Role, Path]] = [("cert", cert), ("key", key)]
    if ca is not None:
        paths.append(("ca", ca))
    reads: list[FileRead] = []
    consistent = False
    for _ in range(_ATTEMPTS):
        reads = [_read_one(role, path) for role, path in paths]
        if all(_resolve(r.path) == r.resolved for r in reads):
            consistent = True
            break
    by_role = {r.role: r for r in reads}
    files = tuple(reads)
    digest = digest_of(files)
    return Snapshot(by_role["cert"], by_role["key"], by_role.get("ca"), digest, consistent)
