"""Where certreload runs: the systemd unit, the Dockerfile and the Kubernetes manifests.

No Docker engine or systemd runs here; what can be checked is: the unit's hardening score
(``systemd-analyze security --offline``), the manifests against the Kubernetes schemas
(``kubernetes-validate --strict``), that every flag and key they use is one certreload takes,
that the image ends as a non-root user running certreload, and that its pinned requirements
install into a clean venv whose ``certreload`` parses its command line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from certreload.settings import OPTIONS, load

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd/certreload.service"
MANIFESTS = sorted((ROOT / "deploy/kubernetes").glob("*.yaml"))
FLAGS = {option.flag for option in OPTIONS} | {"--help", "--version"}


def test_unit_is_notify_with_reload_and_no_restart_on_config_errors() -> None:
    """Type=notify, ExecReload, User=postgres, Restart=on-failure, RestartPreventExitStatus=64."""
    text = UNIT.read_text()
    for line in ("Type=notify", "User=postgres", "Restart=on-failure",
                 "RestartPreventExitStatus=64", "WatchdogSec="):  # fmt: skip
        assert re.search(rf"^{re.escape(line)}", text, re.M), line
    assert re.search(r"^ExecReload=.*kill -HUP \$MAINPID", text, re.M)


def test_unit_exposure_is_at_most_1_5() -> None:
    """systemd-analyze security --offline=yes rates the unit 1.5 or lower."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.5


def test_unit_and_example_config_use_real_options(tmp_path: Path) -> None:
    """The unit's command line parses, and the example TOML loads with no unknown key."""
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", UNIT.read_text(), re.M)
    assert exec_start
    args = exec_start.group(2).split()
    assert {a for a in args if a.startswith("--")} <= FLAGS
    example = ROOT / "systemd/certreload.toml.example"
    keys = set(tomllib.loads(example.read_text()))
    assert keys <= {o.name for o in OPTIONS}
    settings = load(["--config", str(example)], {})
    assert settings.install_dir == Path("/var/lib/postgresql/tls")
    assert settings.ca is None  # "system"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_validates_strictly(manifest: Path) -> None:
    """kubernetes-validate --strict accepts each manifest."""
    tool = Path(sys.prefix) / "bin/kubernetes-validate"
    if not tool.exists():
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    result = subprocess.run(
        [str(tool), "--strict", str(manifest)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def _containers(manifest: Path) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "StatefulSet":
            spec = doc["spec"]["template"]["spec"]
            found += spec.get("initContainers", []) + spec.get("containers", [])
    return found


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifest_runs_certreload_with_the_secret_mounted(manifest: Path) -> None:
    """certreload's args are real flags; the secret is mounted 0640 without subPath; probes."""
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    certreload = next(c for c in _containers(manifest) if c["name"] == "certreload")
    args = certreload["args"]
    assert isinstance(args, list)
    assert {a.split("=")[0] for a in args if a.startswith("--")} <= FLAGS
    load([a for a in args if a.startswith("--")], {"CERTRELOAD_DSN": "dbname=postgres"})
    tls = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert tls["secret"]["defaultMode"] == 0o640
    assert spec["securityContext"]["fsGroup"] == 103
    for container in _containers(manifest):
        for mount in container.get("volumeMounts", []):  # type: ignore[attr-defined]
            assert "subPath" not in mount
    probe = certreload["livenessProbe"]
    assert isinstance(probe, dict)
    assert probe["httpGet"]["path"] == "/healthz"
    security = certreload["securityContext"]
    assert isinstance(security, dict)
    assert security["readOnlyRootFilesystem"] is True
    env = certreload["env"]
    assert isinstance(env, list)
    assert all("value" not in e for e in env if e["name"] == "CERTRELOAD_DSN")


def test_native_sidecar_starts_postgres_after_readyz() -> None:
    """The native sidecar is an init container with restartPolicy Always and /readyz startup."""
    manifest = ROOT / "deploy/kubernetes/statefulset-native-sidecar.yaml"
    sts = next(
        d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "StatefulSet"
    )
    sidecar = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_dockerfile_ends_as_non_root_running_certreload() -> None:
    """Multi-stage; the last stage has a numeric non-root USER and ENTRYPOINT certreload."""
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    assert len(stages) >= 3, "a build stage and a final stage"
    final = stages[-1]
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user
    assert user.group(1) not in ("root", "0", "0:0")
    assert re.search(r"^ARG UID=101$", final, re.M)
    assert re.search(r'^ENTRYPOINT \["certreload"\]', final, re.M)
    assert "HEALTHCHECK" in final
    assert "gcc" not in final
    assert "build-essential" not in final
    for line in re.findall(r"^FROM (\S+)", text, re.M):
        assert re.search(r":\d+\.\d+\.\d+", line), f"unpinned base image {line}"


def test_pinned_requirements_install_in_a_clean_venv(tmp_path: Path) -> None:
    """The image's install steps work: requirements.lock, then certreload, then --help."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements.lock")], check=True)
    subprocess.run([*pip, str(ROOT)], check=True, capture_output=True)
    check = subprocess.run(
        [str(venv / "bin/pip"), "check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout
    result = subprocess.run(
        [str(venv / "bin/certreload"), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "--dir" in result.stdout
    bad = subprocess.run(
        [str(venv / "bin/certreload"), "--no-such"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 64
