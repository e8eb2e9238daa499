"""Where certreload runs: the systemd unit, the Dockerfile and the Kubernetes manifests.

No Docker engine and no systemd run here.  What is checked: the unit's hardening score
(``systemd-analyze security --offline``) and the settings it must have; the manifests against the
Kubernetes schemas (``kubernetes-validate --strict``) and the pod they describe; that every flag
and key the unit, the manifests and the example configuration use is one certreload takes; that
the image ends as a non-root user running certreload, with a HEALTHCHECK that works; and that the
image's pinned requirements install into a clean venv whose ``certreload`` parses its command
line.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from certreload.settings import OPTIONS, build_parser, load

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd/certreload.service"
EXAMPLE = ROOT / "systemd/certreload.toml.example"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
K8S = ROOT / "deploy/kubernetes"
NATIVE = K8S / "statefulset-native-sidecar.yaml"
CLASSIC = K8S / "statefulset-classic-sidecar.yaml"
MANIFESTS = sorted(K8S.glob("*.yaml"))
FLAGS = {option.flag for option in OPTIONS} | {"--help", "--version"}
FILE_KEYS = {option.name for option in OPTIONS if option.metavar is not None} - {"config"}
PORT = 9814  # /metrics, /healthz, /readyz in the image and the manifests
CI = bool(os.environ.get("CI"))


# --- helpers ------------------------------------------------------------------------------


def _unit_service() -> dict[str, list[str]]:
    """The [Service] section of the unit: each key with every value it is given, in order."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        if section == "Service":
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _flags(args: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}


def _docs(manifest: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]


def _pod_spec(manifest: Path) -> dict[str, Any]:
    sts = next(doc for doc in _docs(manifest) if doc["kind"] == "StatefulSet")
    spec: dict[str, Any] = sts["spec"]["template"]["spec"]
    return spec


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return found


def _certreload(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in _containers(spec) if c["name"] == "certreload")


def _kubernetes_validate() -> str:
    tool = Path(sys.prefix) / "bin/kubernetes-validate"
    found = str(tool) if tool.exists() else shutil.which("kubernetes-validate")
    if found is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return found


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    stages: list[list[str]] = []
    for instruction in joined:
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _instructions(stage: list[str], name: str) -> list[str]:
    return [i.split(None, 1)[1] for i in stage if i.split(None, 1)[0].upper() == name]


# --- the systemd unit ---------------------------------------------------------------------


def test_unit_is_notify_with_reload_and_no_restart_on_config_errors() -> None:
    """Type=notify for main only, ExecReload=SIGHUP, User=postgres, no restart on exit 64."""
    service = _unit_service()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "postgres",
        "Group": "postgres",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "64",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    watchdog = service["WatchdogSec"]
    assert len(watchdog) == 1
    assert re.fullmatch(r"[1-9]\d*s?", watchdog[0]), "WatchdogSec= must be set (seconds)"


def test_unit_never_removes_the_servers_ipc_nor_hides_proc_stat() -> None:
    """No RemoveIPC=yes (it deletes a running server's shared memory), no ProcSubset=pid."""
    service = _unit_service()
    assert service.get("RemoveIPC", ["no"])[-1] not in ("yes", "true", "on", "1")
    assert service.get("ProcSubset", ["all"])[-1] != "pid"


def test_unit_install_dir_write_access_is_optional() -> None:
    """ReadWritePaths= is offered commented out; nothing else is writable by default."""
    assert "ReadWritePaths" not in _unit_service()
    assert re.search(r"^#\s*ReadWritePaths=/\S+", UNIT.read_text(), re.M)
    assert _unit_service()["ProtectSystem"] == ["strict"]


def test_unit_exposure_is_at_most_1_5() -> None:
    """systemd-analyze security --offline=yes rates the unit 1.5 or lower."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.5, result.stdout


def test_unit_command_line_uses_real_flags() -> None:
    """ExecStart= runs /usr/local/bin/certreload --config FILE, and certreload parses that."""
    (exec_start,) = _unit_service()["ExecStart"]
    program, *args = shlex.split(exec_start)
    assert program == "/usr/local/bin/certreload"
    assert args == ["--config", "/etc/certreload/certreload.toml"]
    assert _flags(args) <= FLAGS
    assert build_parser().parse_args(args).config == "/etc/certreload/certreload.toml"


def test_example_config_uses_real_keys_and_loads() -> None:
    """Every key of the example TOML is an option certreload reads from a file; it loads."""
    keys = set(tomllib.loads(EXAMPLE.read_text()))
    assert keys <= FILE_KEYS, keys - FILE_KEYS
    settings = load(["--config", str(EXAMPLE)], {})
    assert settings.install_dir == Path("/var/lib/postgresql/tls")
    assert settings.ca is None  # "system": clients of a public CA trust the OS store
    assert settings.cert.name == "fullchain.pem"
    assert settings.key.name == "privkey.pem"
    assert settings.sans == ("db.example.com",)
    assert str(settings.listen) == f"127.0.0.1:{PORT}"
    assert settings.mode == "run"


def test_unit_allows_the_example_install_dir_when_uncommented() -> None:
    """The commented ReadWritePaths= names the example's install_dir, so uncommenting fits."""
    found = re.search(r"^#\s*ReadWritePaths=(\S+)", UNIT.read_text(), re.M)
    assert found
    assert tomllib.loads(EXAMPLE.read_text())["install_dir"] == found.group(1)


# --- the Kubernetes manifests -------------------------------------------------------------


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_validates_strictly(manifest: Path) -> None:
    """kubernetes-validate --strict accepts every resource of each manifest."""
    result = subprocess.run(
        [_kubernetes_validate(), "--strict", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "statefulset/cluster-1" in output
    assert "ERROR" not in output


@pytest.mark.parametrize(
    ("manifest", "version"), [(NATIVE, "1.29.0"), (CLASSIC, "1.27.0")], ids=["native", "classic"]
)
def test_manifest_validates_on_the_oldest_kubernetes_it_is_for(
    manifest: Path, version: str
) -> None:
    """Native sidecars need 1.29 (on by default); the classic variant also fits 1.27."""
    result = subprocess.run(
        [_kubernetes_validate(), "--strict", "-k", version, str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_sidecar_needs_a_schema_that_knows_restartable_init_containers() -> None:
    """Against 1.27 the native manifest fails: the strict validation does look at the fields."""
    result = subprocess.run(
        [_kubernetes_validate(), "--strict", "-k", "1.27.0", str(NATIVE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "restartPolicy" in result.stdout + result.stderr


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_runs_certreload_with_real_flags(manifest: Path) -> None:
    """certreload's args are flags it takes, and they load with the DSN from the environment."""
    container = _certreload(_pod_spec(manifest))
    args: list[str] = container["args"]
    assert _flags(args) <= FLAGS, _flags(args) - FLAGS
    settings = load(args, {"CERTRELOAD_DSN": "host=/var/run/postgresql dbname=postgres"})
    assert settings.sans == (
        "cluster-1",
        "cluster-1-repl",
        "cluster-1-pooler",
        "cluster-1-pooler-repl",
    )
    assert settings.cert == Path("/tls/tls.crt")
    assert settings.key == Path("/tls/tls.key")
    assert settings.listen is not None
    assert settings.listen.port == PORT != 9187  # 9187 is postgres_exporter's
    assert settings.listen.host == "0.0.0.0"  # the kubelet probes the pod IP
    assert settings.install_dir is None


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_mounts_whole_secret_volumes_0640_with_fsgroup(manifest: Path) -> None:
    """Secrets are whole volumes (never subPath), defaultMode 0640, read through fsGroup."""
    spec = _pod_spec(manifest)
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert secrets["tls"]["secretName"] == "cluster-1-tls"
    for secret in secrets.values():
        assert secret["defaultMode"] == 0o640
    assert spec["securityContext"]["fsGroup"] == 103
    for container in _containers(spec):
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount
            assert "subPathExpr" not in mount
            if mount["name"] in secrets:
                assert mount["readOnly"] is True
    certreload_mounts = {m["name"]: m["mountPath"] for m in _certreload(spec)["volumeMounts"]}
    assert certreload_mounts["tls"] == "/tls"
    assert certreload_mounts["run"] == "/var/run/postgresql"  # the server's socket, shared


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_probes_readyz_at_startup_and_healthz_for_liveness(manifest: Path) -> None:
    """startupProbe /readyz, livenessProbe /healthz on the named port; no readinessProbe."""
    container = _certreload(_pod_spec(manifest))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"certreload": PORT}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "certreload"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "certreload"}
    assert "readinessProbe" not in container  # a certificate problem must not cut the Service
    assert "exec" not in container["livenessProbe"]  # never --check: it reports the certificate


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_sidecar_is_locked_down_and_sized(manifest: Path) -> None:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp; 10m/64Mi, 128Mi."""
    spec = _pod_spec(manifest)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _certreload(spec)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_takes_the_dsn_from_a_secret(manifest: Path) -> None:
    """CERTRELOAD_DSN comes by secretKeyRef; no password is written into any pod spec."""
    spec = _pod_spec(manifest)
    env = {e["name"]: e for e in _certreload(spec)["env"]}
    assert env["CERTRELOAD_DSN"]["valueFrom"]["secretKeyRef"]["name"] == "certreload-dsn"
    assert "value" not in env["CERTRELOAD_DSN"]
    for container in _containers(spec):
        for variable in container.get("env", []):
            if "value" in variable:
                assert "password" not in variable["value"].lower(), variable
                assert "PASSWORD" not in variable["name"], variable
    secret = next(d for d in _docs(manifest) if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "certreload-dsn"
    assert "password" not in secret["stringData"]["dsn"]


def test_native_sidecar_is_a_restartable_init_container_with_a_ca_secret() -> None:
    """restartPolicy Always in initContainers; --dir /tls and --ca from the cpo-root-ca secret."""
    spec = _pod_spec(NATIVE)
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "certreload"
    assert sidecar["restartPolicy"] == "Always"
    assert {"--dir=/tls", "--ca=/tlsca/ca.crt"} <= set(sidecar["args"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tlsca"]["secret"]["secretName"] == "cpo-root-ca"
    for container in _containers(spec):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["tlsca"] == "/tlsca"
    assert load(sidecar["args"], {}).ca == Path("/tlsca/ca.crt")


def test_classic_sidecar_is_a_regular_container_reading_one_secret() -> None:
    """No init containers; certreload beside postgres; the CA in the same secret (--dir)."""
    spec = _pod_spec(CLASSIC)
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["postgres", "certreload"]
    assert "restartPolicy" not in _certreload(spec)
    assert load(_certreload(spec)["args"], {}).ca == Path("/tls/ca.crt")


# --- the Dockerfile -----------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_and_ends_as_non_root_running_certreload() -> None:
    """Pinned bases; a build stage makes the wheel; the last stage copies the venv only."""
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a final stage"
    for stage in stages:
        (base,) = _instructions(stage, "FROM")
        assert re.match(r"python:3\.11\.\d+-slim-bookworm\b", base), f"unpinned base {base}"
    build = " ".join(_instructions(stages[0], "RUN"))
    assert "pip wheel" in build
    assert "-r requirements.lock" in build
    assert "--only-binary=:all:" in build

    final = stages[-1]
    args = dict(a.split("=", 1) for a in _instructions(final, "ARG"))
    assert args == {"UID": "101", "GID": "103"}  # Spilo's postgres user; overridable
    (user,) = _instructions(final, "USER")
    resolved = user.replace("${UID}", args["UID"]).replace("${GID}", args["GID"])
    uid, gid = resolved.split(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) != 0
    assert _instructions(final, "ENTRYPOINT") == ['["certreload"]']
    copies = _instructions(final, "COPY")
    assert copies == ["--from=build /opt/certreload /opt/certreload"]  # the venv only
    final_text = " ".join(final)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "pip wheel"):
        assert tool not in final_text, tool


def _healthcheck_code() -> str:
    (healthcheck,) = _instructions(_dockerfile_stages()[-1], "HEALTHCHECK")
    found = re.search(r'CMD \["python", "-c", "(.*)"\]$', healthcheck)
    assert found, healthcheck
    code = found.group(1)
    assert "/healthz" in code
    assert "--check" not in healthcheck  # it reports the certificate, not the loop
    return code


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test's output clean."""


@pytest.fixture
def healthz_server() -> Iterator[int]:
    """A local HTTP server answering /healthz with 200, standing in for certreload --listen."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_probes_healthz_on_the_listen_port(healthz_server: int) -> None:
    """The HEALTHCHECK command passes against /healthz on CERTRELOAD_LISTEN's port, else fails."""
    code = _healthcheck_code()
    assert f"':{PORT}'" in code  # the default port is the one EXPOSEd and probed in Kubernetes
    assert _instructions(_dockerfile_stages()[-1], "EXPOSE") == [str(PORT)]

    def run(listen: str) -> int:
        env = {**os.environ, "CERTRELOAD_LISTEN": listen}
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=False, timeout=30
        ).returncode

    assert run(f"0.0.0.0:{healthz_server}") == 0
    closed = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    closed_port = closed.server_address[1]
    closed.server_close()
    assert run(f"0.0.0.0:{closed_port}") != 0


# --- the pinned requirements --------------------------------------------------------------


def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert found, f"not an exact pin: {line!r}"
        pins[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(2)
    return pins


def test_requirements_lock_pins_every_dependency_exactly() -> None:
    """Each line is name==version, and each of certreload's dependencies is pinned."""
    pins = _lock_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, requirement
    assert "psycopg-binary" in pins  # psycopg[binary]: no libpq or compiler in the image
    assert "certreload" not in pins


def _clean_venv(path: Path) -> Path:
    python = Path("/usr/bin/python3")
    if not python.exists() and not CI:
        pytest.skip("/usr/bin/python3 is not installed")
    made = subprocess.run(
        [str(python), "-m", "venv", str(path)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0 and "ensurepip" in made.stdout + made.stderr and not CI:
        pytest.skip("python3-venv is not installed (no ensurepip for /usr/bin/python3)")
    assert made.returncode == 0, made.stdout + made.stderr
    return path / "bin"


def test_pinned_requirements_install_in_a_clean_venv(tmp_path: Path) -> None:
    """The image's build steps work: the lock (wheels only), certreload's wheel, --help.

    Runs in CI with the rest of the suite (never skipped there); it downloads the pinned
    wheels and takes about a minute on a cold cache.
    """
    bin_dir = _clean_venv(tmp_path / "venv")
    pip = [str(bin_dir / "pip"), "--disable-pip-version-check", "-q"]

    def step(*args: str) -> None:
        result = subprocess.run([*pip, *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}{result.stderr}"

    step("install", "--no-deps", "--only-binary=:all:", "-r", str(LOCK))
    step("wheel", "--no-deps", "--wheel-dir", str(tmp_path / "wheels"), str(ROOT))
    (wheel,) = (tmp_path / "wheels").glob("certreload-*.whl")
    step("install", "--no-deps", str(wheel))
    step("check")  # every dependency of every installed package is in the lock

    frozen = subprocess.run(
        [*pip, "freeze", "--exclude", "certreload"], capture_output=True, text=True, check=True
    )
    installed = {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, _, version in (line.partition("==") for line in frozen.stdout.split())
    }
    assert installed == _lock_pins()

    certreload = str(bin_dir / "certreload")
    helped = subprocess.run([certreload, "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0, helped.stderr
    for flag in FLAGS - {"--help"}:
        assert flag in helped.stdout, flag
    bad = subprocess.run([certreload, "--no-such"], capture_output=True, text=True, check=False)
    assert bad.returncode == 64  # a usage error: systemd's RestartPreventExitStatus=64
