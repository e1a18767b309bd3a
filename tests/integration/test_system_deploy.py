"""Deployment files: what can be checked without Docker or a Kubernetes cluster.

- docker-compose.yml parses and has the shape we promise (and `docker compose config` accepts it
  wherever the compose plugin is installed);
- the Dockerfile is multi-stage, non-root, with a health check, and copies only what exists;
- deploy/nginx.conf passes `nginx -t` (nginx is installed by scripts/setup.sh);
- kubernetes/ manifests validate against the Kubernetes JSON schemas (kubernetes-validate, a test
  dependency that bundles them), and fit together (selectors, ports, probes, grace periods);
- every environment variable any of them sets is a real setting (a typo would be silently ignored).
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema

import kubernetes_validate
import msgspec
import pytest
import yaml

from app.config import PROJECT_ROOT, Settings

ROOT = PROJECT_ROOT
K8S = ROOT / "kubernetes"
SETTINGS = {f.name.upper() for f in msgspec.structs.fields(Settings)}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _k8s_docs() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _by_kind(kind: str) -> dict:
    found = [d for docs in _k8s_docs().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


# --- docker compose ---------------------------------------------------------------------------------

def test_compose_file_has_the_promised_services():
    compose = _compose()
    services = compose["services"]
    assert {"db", "redis", "app1", "app2", "nginx"} <= set(services)
    assert services["db"]["image"].startswith("timescale/timescaledb:")
    assert services["redis"]["image"].startswith("redis:")
    for name in ("db", "redis", "app1", "app2", "nginx"):
        assert "healthcheck" in services[name], name
    for name in ("app1", "app2"):
        app = services[name]
        assert app["build"]["dockerfile"] == "Dockerfile"
        assert app["depends_on"] == {"db": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
        env = app["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@db:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["JWT_SECRET"].startswith("${JWT_SECRET:?")  # required, never a default
        assert set(env) <= SETTINGS, set(env) - SETTINGS
        # Only nginx's fixed address is trusted for X-Forwarded-For.
        nginx_ip = services["nginx"]["networks"]["backend"]["ipv4_address"]
        assert env["TRUSTED_PROXIES"] == f"{nginx_ip}/32"
        # Longer than SHUTDOWN_TIMEOUT before Docker sends SIGKILL.
        assert int(app["stop_grace_period"].rstrip("s")) > float(env["SHUTDOWN_TIMEOUT"])
    assert services["app1"]["environment"] == services["app2"]["environment"]
    assert services["nginx"]["depends_on"]["app1"]["condition"] == "service_healthy"
    mount = services["nginx"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).resolve() == ROOT / "deploy" / "nginx.conf" and mount[1] == "/etc/nginx/nginx.conf"
    assert set(compose["volumes"]) == {"pgdata", "redisdata"}


def test_compose_file_validates_against_the_compose_specification():
    # The Compose Specification's JSON schema, as vendored by check-jsonschema (a test dependency).
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    compose = _compose()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # A misspelt key is caught (so a pass means something).
    broken = {**compose, "services": {**compose["services"],
                                      "redis": {**compose["services"]["redis"], "helthcheck": {}}}}
    assert list(validator.iter_errors(broken))


def test_docker_compose_config_accepts_it_where_the_client_exists(tmp_path):
    # Docker itself cannot run here; when the compose plugin is installed, it must accept the file.
    docker = shutil.which("docker")
    has_compose = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if has_compose:
        out = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                             capture_output=True, text=True, env={"JWT_SECRET": "x" * 40, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
    # And without JWT_SECRET it must refuse to start rather than run with a guessable key.
    assert "${JWT_SECRET:?" in (ROOT / "docker-compose.yml").read_text()


# --- Dockerfile -------------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2 and any(" AS build" in f for f in froms)
    assert "slim" in text
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines)
    assert "/health/ready" in text
    assert lines[-1].startswith("CMD") and '"app", "serve"' in lines[-1]
    # Every COPY source from the build context exists (a missing one fails `docker build`).
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            parts = [p for p in ln.split()[1:] if not p.startswith("--")]
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    # And everything the app reads next to its package at run time is copied.
    copied = {p for ln in lines if ln.startswith("COPY ") and "--from=" not in ln
              for p in [q for q in ln.split()[1:] if not q.startswith("--")][:-1]}
    used = set()
    for path in (ROOT / "app").rglob("*.py"):
        used |= set(re.findall(r'PROJECT_ROOT / "([^"/]+)"', path.read_text()))
    assert used - {".data", ".env"} <= copied, (used, copied)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".data" in ignored and ".git" in ignored


# --- nginx --------------------------------------------------------------------------------------------

def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is missing: scripts/setup.sh installs it"
    return found


def test_nginx_config_passes_nginx_t(tmp_path):
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    # Inside compose, app1/app2 resolve through Docker's DNS; here, point them at loopback.
    assert "server app1:8000" in conf and "server app2:8000" in conf
    local = conf.replace("server app1:8000", "server 127.0.0.1:18001").replace("server app2:8000",
                                                                                 "server 127.0.0.1:18002")
    (tmp_path / "nginx.conf").write_text(local)
    out = subprocess.run([_nginx(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr",
                          "-g", f"pid {tmp_path}/nginx.pid;"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr
    # And nginx -t does fail on a broken file (so the check above means something).
    (tmp_path / "bad.conf").write_text(local.replace("proxy_pass http://wealth_api;", "proxy_pass;", 1))
    bad = subprocess.run([_nginx(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "bad.conf"), "-e", "stderr",
                          "-g", f"pid {tmp_path}/nginx.pid;"], capture_output=True, text=True)
    assert bad.returncode != 0


def test_nginx_config_routes_websocket_limits_and_forwarded_headers():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    ws = conf[conf.index("location = /market-feed"):]
    ws = ws[:ws.index("}")]
    assert "proxy_set_header Upgrade $http_upgrade" in ws and "proxy_set_header Connection $connection_upgrade" in ws
    assert "proxy_read_timeout 1h" in ws
    assert re.search(r"limit_req_zone .* zone=api:", conf) and re.search(r"limit_req zone=api", conf)
    assert re.search(r"limit_req zone=auth", conf)
    assert "proxy_set_header X-Forwarded-For $remote_addr" in conf
    assert "location = /metrics" in conf  # not exposed through the gateway


# --- Kubernetes ---------------------------------------------------------------------------------------

def test_kubernetes_manifests_validate_against_the_schemas():
    docs = _k8s_docs()
    kinds = {d["kind"] for ds in docs.values() for d in ds}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "Ingress"} <= kinds
    version = kubernetes_validate.utils.latest_version()
    for name, ds in docs.items():
        for doc in ds:
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
    # The validator rejects what Kubernetes would reject (so a pass means something).
    broken = _by_kind("Deployment")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    typo = _by_kind("Service")
    typo["spec"]["selecter"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


def test_kubernetes_manifests_fit_together():
    dep = _by_kind("Deployment")
    svc = _by_kind("Service")
    hpa = _by_kind("HorizontalPodAutoscaler")
    ing = _by_kind("Ingress")
    cm = _by_kind("ConfigMap")
    secret = _by_kind("Secret")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in port_names
    assert port_names["http"] == int(cm["data"]["PORT"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # SIGTERM drain fits in the grace period: preStop pause + SHUTDOWN_TIMEOUT + flush.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + float(cm["data"]["SHUTDOWN_TIMEOUT"]) + 5
    refs = {e.get("configMapRef", {}).get("name") or e.get("secretRef", {}).get("name") for e in container["envFrom"]}
    assert refs == {cm["metadata"]["name"], secret["metadata"]["name"]}
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    assert container["resources"]["requests"]["cpu"]  # the HPA's CPU target needs a request
    paths = {p["path"]: p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
    assert "/market-feed" in paths and "/api" in paths
    assert not any(p in ("/", "/metrics") for p in paths)  # /metrics is not published
    for backend in paths.values():
        assert backend["name"] == svc["metadata"]["name"] and backend["port"]["name"] == "http"
    assert int(ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    # Every variable set is a real setting; the secret carries the secrets, the ConfigMap none of them.
    assert set(cm["data"]) <= SETTINGS, set(cm["data"]) - SETTINGS
    assert set(secret["stringData"]) <= SETTINGS
    assert {"JWT_SECRET", "DATABASE_URL", "REDIS_URL"} <= set(secret["stringData"])
    assert not {"JWT_SECRET", "DATABASE_URL", "POLYGON_API_KEY"} & set(cm["data"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.template.yaml"}


# --- systemd -----------------------------------------------------------------------------------------

def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string((ROOT / "deploy" / name).read_text())
    return parser


def test_systemd_units():
    unit = _unit("wealth-terminal.service")
    svc = unit["Service"]
    assert svc["ExecStart"].endswith("python -m app serve")
    assert svc["KillSignal"] == "SIGTERM" and svc["User"] != "root"
    assert int(svc["TimeoutStopSec"]) > Settings().shutdown_timeout
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    db = _unit("wealth-terminal-db.service")
    assert db["Service"]["ExecStart"].endswith("python -m app db start")
    assert db["Service"]["ExecStop"].endswith("python -m app db stop")
    assert db["Service"]["Type"] == "forking"
