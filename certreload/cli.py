"""The command line: ``certreload [--check | --once] ...``; see ``--help``.

Exit codes: ``--check`` uses the Nagios plugin codes (check.py); otherwise 0 success,
64 a usage or configuration error, and for ``--once`` the codes in daemon.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from certreload import settings as settings_mod

EXIT_USAGE = 64


def main(argv: Sequence[str] | None = None) -> int:
    """Run certreload; return the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    checking = "--check" in args
    try:
        settings = settings_mod.load(args)
    except settings_mod.ConfigError as exc:
        return _config_error(exc, checking)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)

    if settings.mode == "check":
        from certreload import check

        outcome = check.run(settings)
        print(check.render(outcome, settings.json))
        return int(outcome.status)

    from certreload import daemon

    return int(daemon.main(settings))


def _config_error(exc: settings_mod.ConfigError, checking: bool) -> int:
    if checking:
        print(f"CERTRELOAD UNKNOWN - configuration error: {exc.problems[0]}")
        for problem in exc.problems[1:]:
            print(f"problem: {problem}")
        return 3
    for problem in exc.problems:
        print(f"certreload: error: {problem}", file=sys.stderr)
    print("certreload: see certreload --help", file=sys.stderr)
    return EXIT_USAGE
