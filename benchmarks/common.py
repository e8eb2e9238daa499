"""What the benchmarks share: the server's group, running as its user, reporting figures."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def server_gid() -> int:
    """The group the secret's files get (the pod's fsGroup): postgres' when we are root."""
    return pwd.getpwnam("postgres").pw_gid if os.geteuid() == 0 else os.getegid()


def as_server_user(argv: list[str]) -> list[str]:
    """Run argv as postgres when we are root (setpriv execs: signals reach the program)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def report(figures: dict[str, object], name: str) -> None:
    """Print the figures and keep them in benchmarks/results/NAME.json."""
    text = json.dumps(figures, indent=2)
    print(text)
    out = ROOT / "benchmarks/results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(text + "\n")
