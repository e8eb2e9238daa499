"""Settings: precedence flag > environment > file > default, and errors naming their source."""

from __future__ import annotations

from pathlib import Path

import pytest

from certreload.cli import main
from certreload.settings import Address, ConfigError, load


def test_dir_gives_the_three_files() -> None:
    """--dir DIR means DIR/tls.crt, DIR/tls.key and DIR/ca.crt."""
    s = load(["--dir", "/s"], {})
    assert (s.cert, s.key, s.ca) == (Path("/s/tls.crt"), Path("/s/tls.key"), Path("/s/ca.crt"))
    assert s.mode == "run"


def test_ca_in_a_second_folder_and_system() -> None:
    """--ca overrides DIR's ca.crt; 'system' means the OS trust store."""
    assert load(["--dir", "/s", "--ca", "/ca/ca.crt"], {}).ca == Path("/ca/ca.crt")
    assert load(["--dir", "/s", "--ca", "system"], {}).ca is None


def test_flag_beats_environment_beats_default() -> None:
    """A flag wins over its environment variable, which wins over the default."""
    env = {"CERTRELOAD_DIR": "/env", "CERTRELOAD_EXPIRY_WARNING": "3"}
    assert load([], env).cert == Path("/env/tls.crt")
    assert load(["--dir", "/flag"], env).cert == Path("/flag/tls.crt")
    assert load([], env).expiry_warning.days == 3
    assert load(["--dir", "/d"], {}).expiry_warning.days == 14


def test_config_file_is_below_environment(tmp_path: Path) -> None:
    """The TOML file gives values below the environment and flags."""
    config = tmp_path / "c.toml"
    config.write_text('dir = "/file"\nsan = ["a", "b"]\ninterval = 7\n')
    assert load(["--config", str(config)], {}).sans == ("a", "b")
    assert load(["--config", str(config)], {}).interval == 7
    assert load(["--config", str(config)], {"CERTRELOAD_DIR": "/env"}).cert == Path("/env/tls.crt")
    assert load(["--config", str(config), "--san", "c"], {}).sans == ("c",)


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    """An unknown key is refused by name; a known one beside it is not."""
    config = tmp_path / "c.toml"
    config.write_text('dir = "/d"\nsna = ["x"]\n')
    with pytest.raises(ConfigError, match="unknown key 'sna'"):
        load(["--config", str(config)], {})
    config.write_text('dir = "/d"\nsan = ["x"]\n')
    assert load(["--config", str(config)], {}).sans == ("x",)


def test_san_list_from_environment() -> None:
    """CERTRELOAD_SAN is comma-separated; repeated --san flags add up."""
    assert load(["--dir", "/d"], {"CERTRELOAD_SAN": "a, b,10.0.0.1"}).sans == ("a", "b", "10.0.0.1")
    assert load(["--dir", "/d", "--san", "a", "--san", "b"], {}).sans == ("a", "b")


def test_server_addr_default_follows_dsn_then_pgport() -> None:
    """127.0.0.1 and the DSN's port, else PGPORT, else 5432; 'none' turns it off."""
    assert load(["--dir", "/d"], {}).server_addr == Address("127.0.0.1", 5432)
    assert load(["--dir", "/d"], {"PGPORT": "6000"}).server_addr == Address("127.0.0.1", 6000)
    assert load(["--dir", "/d", "--dsn", "port=7000"], {"PGPORT": "6000"}).server_addr == Address(
        "127.0.0.1", 7000
    )
    assert load(["--dir", "/d", "--server-addr", "none"], {}).server_addr is None
    assert load(["--dir", "/d", "--server-addr", "[::1]:5"], {}).server_addr == Address("::1", 5)


def test_every_bad_value_is_reported() -> None:
    """All problems come together, each naming where the value came from."""
    with pytest.raises(ConfigError) as caught:
        load(["--interval", "-1", "--server-addr", "nowhere"], {"CERTRELOAD_LOG_LEVEL": "loud"})
    text = " | ".join(caught.value.problems)
    assert "--interval" in text
    assert "CERTRELOAD_LOG_LEVEL" in text
    assert "--server-addr" in text
    assert "no cert file" in text


def test_usage_errors_exit_3_under_check_and_64_otherwise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One clear line, no traceback: UNKNOWN (3) under --check, 64 otherwise."""
    assert main(["--check", "--dir", "/d", "--bogus"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("CERTRELOAD UNKNOWN - ")
    assert "--bogus" in out
    assert "Traceback" not in out
    assert main(["--dir", "/d", "--bogus"]) == 64
    err = capsys.readouterr().err
    assert "--bogus" in err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints every flag and exits 0."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--dir", "--cert", "--key", "--ca", "--san", "--server-addr", "--check"):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--interval", "soon"], {}, "--interval: must be a number of seconds"),
        (["--interval", "inf"], {}, "greater than 0"),
        (["--expiry-warning", "-3"], {}, "0 or more days"),
        (["--expiry-warning", "x"], {}, "whole number of days"),
        (["--log-format", "xml"], {}, "must be one of json, console, auto"),
        (["--san", "a b"], {}, "is not a host name"),
        (["--san", "a..b"], {}, "not a valid host name"),
        (["--server-addr", "db:99999"], {}, "outside 1-65535"),
        (["--server-addr", "db:http"], {}, "is not a number"),
        (["--listen", "9814"], {}, "--listen: must be HOST:PORT"),
        (["--pg-user", "no-such-user-here"], {}, "no OS user named"),
        (["--check", "--once"], {}, "exclude each other"),
        (["--json"], {}, "--json goes with --check"),
        (["--pgbouncer-dsn", "dbname=pgbouncer"], {}, "needs --pgbouncer-addr"),
        (["--pgbouncer-addr", "127.0.0.1:6432"], {}, "needs --pgbouncer-dsn"),
        ([], {"CERTRELOAD_INTERVAL": "0"}, "environment CERTRELOAD_INTERVAL"),
        (["--on-change-timeout", "0"], {}, "greater than 0"),
    ],
)
def test_bad_values_are_named(argv: list[str], env: dict[str, str], words: str) -> None:
    """Each bad value is refused, saying where it came from; the same with a good value passes."""
    with pytest.raises(ConfigError) as caught:
        load(["--dir", "/d", *argv], env)
    assert words in " | ".join(caught.value.problems)


def test_good_values_of_every_kind_pass() -> None:
    """The control for the table above."""
    s = load(
        ["--dir", "/d", "--interval", "2.5", "--expiry-warning", "0", "--log-format", "JSON",
         "--san", "db.example.com", "--server-addr", "db:6432", "--listen", "0.0.0.0:9814",
         "--pg-user", "root", "--pgbouncer-dsn", "dbname=pgbouncer", "--pgbouncer-addr",
         "127.0.0.1:6432", "--install-dir", "/run/tls", "--on-change", "true"],
        {},
    )  # fmt: skip
    assert s.interval == 2.5
    assert s.log_format == "json"
    assert s.pg_user.uid == 0
    assert str(s.listen) == "0.0.0.0:9814"
    assert s.install_dir == Path("/run/tls")
    assert "dbname" not in repr(s)  # DSNs may hold passwords: never in a repr


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    """A missing file, bad TOML and a bad value in the file each name the file."""
    with pytest.raises(ConfigError, match="cannot read it"):
        load(["--config", str(tmp_path / "none.toml")], {})
    bad = tmp_path / "bad.toml"
    bad.write_text("dir = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(["--config", str(bad)], {})
    bad.write_text('dir = "/d"\ninterval = "soon"\n')
    with pytest.raises(ConfigError, match=r"key 'interval'"):
        load(["--config", str(bad)], {})


def test_check_gives_the_same_verdict_from_toml_as_from_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check --config F agrees with the same flags; an unknown key exits 3 naming it."""
    from tests.support import certs

    ca = certs.make_root_ca()
    leaf = certs.make_leaf(ca, dns_sans=["db.example.com"])
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(leaf.key_pem)
    (tmp_path / "tls.key").chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    config = tmp_path / "c.toml"
    for san, code in (("db.example.com", 0), ("other.example.com", 2)):
        config.write_text(f'dir = "{tmp_path}"\nsan = ["{san}"]\nserver_addr = "none"\n')
        assert main(["--check", "--config", str(config)]) == code
        from_toml = capsys.readouterr().out.splitlines()[0]
        flags = ["--check", "--dir", str(tmp_path), "--san", san, "--server-addr", "none"]
        assert main(flags) == code
        assert capsys.readouterr().out.splitlines()[0] == from_toml
    config.write_text(f'dir = "{tmp_path}"\nsans = ["db.example.com"]\n')
    assert main(["--check", "--config", str(config)]) == 3
    assert "unknown key 'sans'" in capsys.readouterr().out


def test_python_dash_m_and_the_console_script() -> None:
    """``python -m certreload`` and the ``certreload`` script both run main()."""
    import subprocess
    import sys

    from certreload import __version__

    module = subprocess.run(
        [sys.executable, "-m", "certreload", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert module.returncode == 0
    assert __version__ in module.stdout
    script = Path(sys.prefix) / "bin" / "certreload"
    bad = subprocess.run(
        [str(script), "--interval", "x", "--dir", "/d"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 64
    assert "--interval" in bad.stderr
    assert "Traceback" not in bad.stderr
