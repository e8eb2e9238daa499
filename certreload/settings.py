"""Settings: flags, environment variables and the TOML file, turned into one frozen value.

Every option is declared once in ``OPTIONS``: its flag, its environment variable, its TOML
key (the flag's name with ``_`` for ``-``), how to parse it and its default.  Precedence is
flag > environment > file > default.  Every error is collected and reported together, each
naming where the bad value came from.

This module imports nothing heavy: ``certreload --check`` goes through it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

Mode = Literal["run", "once", "check"]
LogFormat = Literal["json", "console", "auto"]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SYSTEM_CA = "system"


class ConfigError(Exception):
    """The command line, the environment or the config file holds a bad value.

    ``problems`` lists every bad value, each naming where it came from.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Address:
    """A host and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class PgUser:
    """The server's OS user: PostgreSQL's key-file rule is stated in terms of it."""

    name: str
    uid: int
    gids: frozenset[int]


@dataclass(frozen=True)
class Settings:
    """Everything certreload was told, resolved and checked."""

    mode: Mode
    cert: Path
    key: Path
    ca: Path | None  # None: the operating system's trust store
    sans: tuple[str, ...]
    server_addr: Address | None  # None: do not read the served certificate
    pg_user: PgUser
    expiry_warning: timedelta
    log_format: LogFormat
    log_level: str
    dsn: str | None = field(default=None, repr=False)  # may hold a password: never printed
    interval: float = 300.0
    json: bool = False
    listen: Address | None = None
    config: Path | None = None
    install_dir: Path | None = None
    pgbouncer_dsn: str | None = field(default=None, repr=False)
    pgbouncer_addr: Address | None = None
    on_change: str | None = None
    on_change_timeout: float = 60.0

    @property
    def watched_dirs(self) -> tuple[Path, ...]:
        """The folders holding the files, each once, in a stable order."""
        paths = [self.cert, self.key] + ([self.ca] if self.ca is not None else [])
        return tuple(dict.fromkeys(p.parent for p in paths))


# --- parsers: each takes the raw text (or TOML value) and returns a value or raises ValueError


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _positive_number(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a number of seconds greater than 0")
    return number


def _days(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number of days")
    try:
        days = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError("must be a whole number of days") from None
    if days < 0:
        raise ValueError("must be 0 or more days")
    return days


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return text

    return parse


def parse_address(value: object, *, allow_none: bool = False) -> Address | None:
    """``HOST:PORT`` or ``[V6]:PORT``; ``none`` when allowed."""
    text = _text(value)
    if allow_none and text.lower() == "none":
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    return Address(host, port)


def _names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("must be a list of host names or IP addresses")
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("must be a list of host names or IP addresses")
        name = item.strip()
        if not name:
            continue
        if any(ch.isspace() for ch in name) or "/" in name:
            raise ValueError(f"{name!r} is not a host name or IP address")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable, TOML key, parser and help."""

    name: str  # also the TOML key
    parse: Callable[[object], Any]
    help: str
    metavar: str | None = None  # None: a switch without a value (flag only)
    repeat: bool = False  # the flag may be given more than once

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str | None:
        return None if self.metavar is None else "CERTRELOAD_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("config", _text, "TOML file with any of these options", "FILE"),
    Option("dir", _text, "folder of a mounted secret holding tls.crt, tls.key, ca.crt", "DIR"),
    Option("cert", _text, "server certificate, PEM, leaf first (default DIR/tls.crt)", "FILE"),
    Option("key", _text, "its private key, PEM (default DIR/tls.key)", "FILE"),
    Option("ca", _text, "CA bundle clients trust, or 'system' (default DIR/ca.crt)", "FILE"),
    Option("san", _names, "a name clients connect with; repeatable", "NAME", repeat=True),
    Option(
        "server_addr",
        _text,
        "where to read the served certificate, or 'none' (default 127.0.0.1:<port>)",
        "HOST:PORT",
    ),
    Option("pg_user", _text, "the server's OS user (default: the user running certreload)", "NAME"),
    Option("expiry_warning", _days, "warn this many days before notAfter (default 14)", "DAYS"),
    Option("log_format", _choice("json", "console", "auto"), "json, console or auto", "FORMAT"),
    Option("log_level", _choice(*LOG_LEVELS), "debug, info, warning or error", "LEVEL"),
    Option("dsn", _text, "conninfo or URI for pg_reload_conf() (default: libpq's PG*)", "CONNINFO"),
    Option(
        "interval", _positive_number, "seconds between periodic checks (default 300)", "SECONDS"
    ),
    Option("listen", _text, "serve /metrics, /healthz and /readyz on HOST:PORT", "HOST:PORT"),
    Option("install_dir", _text, "install each valid set here (key 0600) for the server", "DIR"),
    Option("pgbouncer_dsn", _text, "PgBouncer admin console conninfo: RELOAD it too", "CONNINFO"),
    Option("pgbouncer_addr", _text, "where PgBouncer presents its certificate", "HOST:PORT"),
    Option("on_change", _text, "command run (by /bin/sh) after a change is confirmed", "CMD"),
    Option("on_change_timeout", _positive_number, "seconds --on-change may run (60)", "SECONDS"),
    Option("check", bool, "check once, print a Nagios-style status line, never reload"),
    Option("once", bool, "run one reconcile pass and exit"),
    Option("json", bool, "with --check: print the whole report as one JSON document"),
)
_BY_NAME = {option.name: option for option in OPTIONS}
_FILE_KEYS = frozenset(o.name for o in OPTIONS if o.metavar is not None and o.name != "config")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError([message])


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default is None so that precedence can be applied later."""
    parser = _Parser(
        prog="certreload",
        description="Keep a PostgreSQL server's TLS certificate current and correct.",
        epilog="Every option FOO-BAR can also be set as CERTRELOAD_FOO_BAR or foo_bar in --config.",
    )
    from certreload import __version__

    parser.add_argument("--version", action="version", version=f"certreload {__version__}")
    for option in OPTIONS:
        if option.metavar is None:
            parser.add_argument(option.flag, action="store_true", default=None, help=option.help)
        elif option.repeat:
            parser.add_argument(
                option.flag, action="append", metavar=option.metavar, help=option.help
            )
        else:
            parser.add_argument(option.flag, metavar=option.metavar, help=option.help)
    return parser


def _read_file(path: str) -> dict[str, object]:
    import tomllib  # only when a config file is given: --check stays light

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"config file {path}: cannot read it ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: not valid TOML ({exc})"]) from None
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        known = ", ".join(sorted(_FILE_KEYS))
        raise ConfigError(
            [f"config file {path}: unknown key {key!r} (known keys: {known})" for key in unknown]
        )
    return data


def _gather(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Apply precedence; return raw-parsed values by option name, and the problems found."""
    args = vars(build_parser().parse_args(list(argv)))
    raw: dict[str, tuple[str, object]] = {}  # name -> (where it came from, raw value)
    config_path = args.get("config") or environ.get("CERTRELOAD_CONFIG")
    if config_path:
        for key, value in _read_file(config_path).items():
            raw[key] = (f"config file {config_path}: key {key!r}", value)
    for option in OPTIONS:
        if option.env and environ.get(option.env, "").strip():
            raw[option.name] = (f"environment {option.env}", environ[option.env])
        value = args.get(option.name)
        if value is not None:
            if option.repeat:
                value = ",".join(value)
            raw[option.name] = (option.flag, value)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, (where, value) in raw.items():
        try:
            values[name] = _BY_NAME[name].parse(value)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return values, problems


def _pg_user(name: str | None) -> PgUser:
    if name is None:
        uid = os.geteuid()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return PgUser(str(uid), uid, frozenset({os.getegid(), *os.getgroups()}))
        return PgUser(entry.pw_name, uid, frozenset({os.getegid(), *os.getgroups()}))
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name.isdigit():
            return PgUser(name, int(name), frozenset())
        raise ValueError(f"no OS user named {name!r}") from None
    gids = {entry.pw_gid, *_groups_of(entry.pw_name)}
    if entry.pw_uid == os.geteuid():
        # the kernel's view too: in a user namespace (systemd's PrivateUsers=yes) unmapped
        # groups read as the overflow gid, on files and in getgroups() alike
        gids |= {os.getegid(), *os.getgroups()}
    return PgUser(name, entry.pw_uid, frozenset(gids))


def _groups_of(user: str) -> list[int]:
    import grp

    return [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]


def _default_port(dsn: str | None, environ: Mapping[str, str]) -> int:
    """The port of the DSN, else PGPORT, else 5432."""
    port: str | None = None
    if dsn:
        from psycopg.conninfo import conninfo_to_dict  # only when a DSN was given

        try:
            port = str(conninfo_to_dict(dsn).get("port") or "") or None
        except Exception:
            port = None
    port = port or environ.get("PGPORT") or "5432"
    first = port.split(",")[0].strip()
    return int(first) if first.isdigit() else 5432


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Turn a command line and an environment into Settings, or raise ConfigError."""
    env = os.environ if environ is None else environ
    values, problems = _gather(argv, env)

    def path(name: str, default_name: str) -> Path | None:
        if name in values:
            return Path(values[name])
        if "dir" in values:
            return Path(values["dir"]) / default_name
        return None

    cert, key = path("cert", "tls.crt"), path("key", "tls.key")
    for name, value in (("cert", cert), ("key", key)):
        if value is None:
            problems.append(f"no {name} file: give --dir DIR (or --{name} FILE)")
    ca_value = values.get("ca")
    ca = None if ca_value == SYSTEM_CA else path("ca", "ca.crt")
    if ca is None and ca_value != SYSTEM_CA:
        problems.append("no CA bundle: give --dir DIR, --ca FILE, or --ca system")

    sans = values.get("san", ())
    for name in sans:
        _check_name(name, problems)

    server_addr: Address | None = None
    if "server_addr" in values:
        try:
            server_addr = parse_address(values["server_addr"], allow_none=True)
        except ValueError as exc:
            problems.append(f"--server-addr: {exc}")
    else:
        server_addr = Address("127.0.0.1", _default_port(values.get("dsn"), env))

    listen = _address_option(values, "listen", problems)
    pgbouncer_addr = _address_option(values, "pgbouncer_addr", problems)
    if values.get("pgbouncer_dsn") and pgbouncer_addr is None:
        problems.append("--pgbouncer-dsn needs --pgbouncer-addr (where PgBouncer presents TLS)")
    if pgbouncer_addr is not None and not values.get("pgbouncer_dsn"):
        problems.append("--pgbouncer-addr needs --pgbouncer-dsn (its admin console, to RELOAD it)")

    try:
        pg_user = _pg_user(values.get("pg_user"))
    except ValueError as exc:
        problems.append(f"--pg-user: {exc}")
        pg_user = PgUser("?", -1, frozenset())

    mode: Mode = "check" if values.get("check") else "once" if values.get("once") else "run"
    if values.get("check") and values.get("once"):
        problems.append("--check and --once exclude each other")
    if values.get("json") and mode != "check":
        problems.append("--json goes with --check")
    if problems:
        raise ConfigError(problems)
    assert cert is not None
    assert key is not None
    return Settings(
        mode=mode,
        cert=cert,
        key=key,
        ca=ca,
        sans=sans,
        server_addr=server_addr,
        pg_user=pg_user,
        expiry_warning=timedelta(days=values.get("expiry_warning", 14)),
        log_format=values.get("log_format", "auto"),
        log_level=values.get("log_level", "info"),
        dsn=values.get("dsn"),
        interval=values.get("interval", 300.0),
        json=bool(values.get("json")),
        listen=listen,
        config=Path(values["config"]) if "config" in values else None,
        install_dir=Path(values["install_dir"]) if "install_dir" in values else None,
        pgbouncer_dsn=values.get("pgbouncer_dsn"),
        pgbouncer_addr=pgbouncer_addr,
        on_change=values.get("on_change"),
        on_change_timeout=values.get("on_change_timeout", 60.0),
    )


def _address_option(values: dict[str, Any], name: str, problems: list[str]) -> Address | None:
    if name not in values:
        return None
    try:
        return parse_address(values[name])
    except ValueError as exc:
        problems.append(f"--{name.replace('_', '-')}: {exc}")
        return None


def _check_name(name: str, problems: list[str]) -> None:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if not all(part for part in name.rstrip(".").split(".")):
            problems.append(f"--san: {name!r} is not a valid host name")
