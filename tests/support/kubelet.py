"""File writers as they happen in the field, done for real in a folder.

- ``SecretVolume``: the kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go). Layout::

      DIR/..2026_11_28_14_05_00.123456789/tls.crt
      DIR/..data -> ..2026_11_28_14_05_00.123456789
      DIR/tls.crt -> ..data/tls.crt

  An update writes a new timestamped folder, points ``..data_tmp`` at it, renames
  ``..data_tmp`` over ``..data`` (the one atomic step), adds missing user-visible links,
  removes names no longer in the secret and removes the old folder.
- ``certbot_style_update``: certbot's ``live/`` links replaced one at a time (unlink, then
  symlink): for a moment a link is missing, then the set mixes old and new files.
- ``cp_in_place``: ``cp new tls.crt``: the same inode truncated and rewritten.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"
_TS_DIR = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}$")


def _timestamped_name() -> str:
    ns = time.time_ns()
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y_%m_%d_%H_%M_%S")
    return f"..{stamp}.{ns % 1_000_000_000:09d}"


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".."):
        raise ValueError(f"{name!r} is not a key a secret volume can hold here")


class SecretVolume:
    """A folder updated exactly the way the kubelet updates a mounted secret."""

    def __init__(self, path: Path) -> None:
        """Manage the secret volume at ``path`` (created on the first write)."""
        self.path = path

    def current_dir(self) -> Path | None:
        """The timestamped folder ``..data`` points at, if any."""
        link = self.path / DATA
        if not link.is_symlink():
            return None
        return self.path / os.readlink(link)

    def visible_names(self) -> set[str]:
        """The user-visible names (links into ``..data``)."""
        if not self.path.exists():
            return set()
        return {
            entry.name
            for entry in self.path.iterdir()
            if not entry.name.startswith("..") and entry.is_symlink()
        }

    def write(self, files: Mapping[str, bytes], mode: int = 0o644, gid: int | None = None) -> Path:
        """Publish a new generation holding exactly ``files``; return its folder.

        Each file gets ``mode`` (the secret's ``defaultMode``) and, when ``gid`` is given, that
        group (the pod's ``fsGroup``), as the kubelet does.
        """
        for name in files:
            _check_name(name)
        self.path.mkdir(parents=True, exist_ok=True)
        old_dir = self.current_dir()
        old_names = self.visible_names()

        # 1. a new timestamped folder (the kubelet makes it with TempDir, then chmods 0755)
        while True:
            new_dir = self.path / _timestamped_name()
            try:
                new_dir.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        os.chmod(new_dir, 0o755)  # noqa: S103 - the kubelet's own mode for the folder

        # 2. the payload, each file with the secret's mode and the fsGroup
        for name, data in files.items():
            target = new_dir / name
            target.write_bytes(data)
            os.chmod(target, mode)
            if gid is not None:
                os.chown(target, -1, gid)

        # 3. ..data_tmp -> new folder; rename over ..data (the atomic step)
        tmp_link = self.path / DATA_TMP
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(new_dir.name, tmp_link)
        os.rename(tmp_link, self.path / DATA)

        # 4. user-visible links for names not yet present
        for name in files:
            link = self.path / name
            if not link.is_symlink():
                os.symlink(f"{DATA}/{name}", link)

        # 5. names no longer in the secret
        for name in old_names - set(files):
            (self.path / name).unlink()

        # 6. the old generation
        if old_dir is not None and old_dir != new_dir and _TS_DIR.match(old_dir.name):
            shutil.rmtree(old_dir)
        return new_dir


def _archive_name(name: str, version: int) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem}{version}{ext}"


def certbot_style_update(
    live_dir: Path,
    archive_dir: Path,
    files: Mapping[str, bytes],
    *,
    pause: float = 0.0,
    modes: Mapping[str, int] | None = None,
) -> int:
    """Write a new version into ``archive_dir`` and repoint ``live_dir``'s links one by one.

    ``files`` maps live names (``cert.pem``, ``privkey.pem``, or ``tls.crt``...) to bytes; the
    archive copy of ``privkey.pem`` version 3 is ``privkey3.pem``.  Like certbot's
    ``_update_link_to``, each link is unlinked and then created again (not atomic), with
    ``pause`` seconds between links.  Returns the version written.
    """
    for name in files:
        _check_name(name)
    live_dir.mkdir(parents=True, exist_ok=True)
    archive_dir.mkdir(parents=True, exist_ok=True)
    version = 1
    while any((archive_dir / _archive_name(n, version)).exists() for n in files):
        version += 1
    for name, data in files.items():
        target = archive_dir / _archive_name(name, version)
        target.write_bytes(data)
        os.chmod(target, (modes or {}).get(name, 0o644))
    for index, name in enumerate(files):
        if index and pause:
            time.sleep(pause)
        link = live_dir / name
        relative = os.path.relpath(archive_dir / _archive_name(name, version), live_dir)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(relative, link)
    return version


def cp_in_place(
    folder: Path,
    files: Mapping[str, bytes],
    *,
    pause: float = 0.0,
    mode: int | None = None,
) -> None:
    """Overwrite each file in place, as ``cp`` does: same inode, truncated, then written.

    With ``pause`` > 0 each file is written in two halves with a pause between (a reader can
    see it half-written), and files are written one after another with the same pause.
    ``mode`` applies to files that did not exist yet (``cp`` keeps an existing file's mode).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, data) in enumerate(files.items()):
        _check_name(name)
        if index and pause:
            time.sleep(pause)
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else mode)
        try:
            if pause:
                half = len(data) // 2
                os.write(fd, data[:half])
                os.fsync(fd)
                time.sleep(pause)
                os.write(fd, data[half:])
            else:
                os.write(fd, data)
        finally:
            os.close(fd)
