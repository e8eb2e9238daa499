"""Mount diagnostics: files that will never update, and writers that are not atomic.

A secret mounted with ``subPath`` is a bind mount of one file: the kubelet never updates it
(``/proc/self/mountinfo`` lists the file itself as a mount point).  A folder without
``..data`` is not written by the kubelet's atomic writer: a renewal may be seen half-written
for a moment, which the daemon's settle-and-retry absorbs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Finding:
    """One diagnostic: ``code`` is ``subpath-mount`` or ``not-atomic``."""

    file: str
    code: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}"


def mount_points(mountinfo: str) -> set[str]:
    """The mount points listed in a mountinfo text (field 5, octal escapes undone)."""
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.add(_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def diagnose(files: Iterable[Path], mountinfo: str | None = None) -> list[Finding]:
    """Findings for the given files (paths as configured)."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            mountinfo = ""
    points = mount_points(mountinfo)
    findings = []
    folders_seen: set[Path] = set()
    for path in files:
        absolute = Path(os.path.abspath(path))
        # mountinfo lists the resolved path: a folder reached through a link must match too
        resolved_parent = Path(os.path.realpath(absolute.parent)) / absolute.name
        if str(absolute) in points or str(resolved_parent) in points:
            findings.append(
                Finding(
                    str(path),
                    "subpath-mount",
                    f"{path} is a mount of its own (a Kubernetes subPath mount?): it is never "
                    "updated when the secret changes",
                    "mount the whole secret as a folder and point certreload and the server "
                    "at the files in it",
                )
            )
        folder = absolute.parent
        if folder not in folders_seen and folder.is_dir():
            folders_seen.add(folder)
            if not (folder / "..data").exists():
                findings.append(
                    Finding(
                        str(folder),
                        "not-atomic",
                        f"{folder} has no ..data: its files are not swapped atomically (not a "
                        "kubelet secret volume)",
                        "nothing to do: certreload re-reads a half-written set for up to 1 s "
                        "before reporting it",
                    )
                )
    return findings
