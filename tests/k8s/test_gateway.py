"""The front door: the Kubernetes Ingress (k8s/base/ingress.yaml) and the compose gateway
(docker/gateway/nginx.conf) pass exactly the inference of plantdx and plantdx_explain, health
and model metadata, and agree on it; the NetworkPolicy lets the ingress controller reach only
Triton's HTTP port. The live test runs the compose gateway's nginx in front of a real Triton
(nginx from PATH or $PLANTDX_NGINX; skipped without it)."""

from __future__ import annotations

import copy
import http.client
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_manifests import DEPLOYMENT, DOCKER, KUBERNETES_VERSION, find, find_all

# What the front door passes: (method, exact path).
ALLOWED = {
    ("POST", "/v2/models/plantdx/infer"),
    ("POST", "/v2/models/plantdx_explain/infer"),
    ("GET", "/v2/models/plantdx"),
    ("GET", "/v2/models/plantdx_explain"),
    ("GET", "/v2/models/classifier"),
    ("GET", "/v2/models/plantdx/ready"),
    ("GET", "/v2/models/plantdx_explain/ready"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
}
NGINX_CONF = DOCKER / "gateway" / "nginx.conf"
INGRESS_NAMESPACE = "ingress-nginx"


def check_front_door(objs: list[dict[str, Any]]) -> list[str]:
    errors = []
    ingresses = find_all(objs, "Ingress")
    if len(ingresses) != 1:
        return [f"{len(ingresses)} Ingress objects, expected 1"]
    (ing,) = ingresses
    spec, notes = ing["spec"], ing["metadata"].get("annotations", {})
    paths = [p for rule in spec.get("rules", []) for p in rule.get("http", {}).get("paths", [])]
    if {p["path"] for p in paths} != {path for _, path in ALLOWED}:
        errors.append(f"Ingress paths {sorted(p['path'] for p in paths)} != the allowlist")
    for p in paths:
        if p.get("pathType") != "Exact":
            errors.append(f"path {p['path']} is {p.get('pathType')}, not Exact")
        svc = p["backend"].get("service", {})
        if svc.get("name") != DEPLOYMENT or svc.get("port") != {"name": "http"}:
            errors.append(f"path {p['path']} goes to {svc}, not {DEPLOYMENT}'s http port")
    if not spec.get("tls") or any(r.get("host") is None for r in spec.get("rules", [])):
        errors.append("the Ingress serves no TLS (or a rule has no host)")
    if "defaultBackend" in spec:
        errors.append("the Ingress has a default backend: unlisted paths would pass")
    prefix = "nginx.ingress.kubernetes.io/"
    if notes.get(prefix + "proxy-request-buffering") != "on":
        errors.append("request bodies are not buffered by the controller")
    if not notes.get(prefix + "proxy-body-size") or not notes.get(prefix + "limit-rps"):
        errors.append("no request body cap or rate limit")
    for np_ in find_all(objs, "NetworkPolicy"):
        for rule in np_["spec"].get("ingress", []):
            if INGRESS_NAMESPACE in str(rule.get("from", [])):
                ports = {p["port"] for p in rule.get("ports", [])}
                if ports != {8000}:
                    errors.append(f"the ingress controller reaches ports {sorted(ports)}")
    return errors


def _ingress(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objs, "Ingress")


def _paths(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _ingress(objs)["spec"]["rules"][0]["http"]["paths"]


def _add_path(path: str, kind: str = "Exact") -> Callable[[list[dict[str, Any]]], None]:
    def mutate(objs: list[dict[str, Any]]) -> None:
        _paths(objs).append({**copy.deepcopy(_paths(objs)[0]), "path": path, "pathType": kind})

    return mutate


MUTATIONS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "everything under /": _add_path("/", "Prefix"),
    "model control": _add_path("/v2/repository/index"),
    "an inner model": _add_path("/v2/models/postprocess/infer"),
    "a prefix path": lambda o: _paths(o)[0].update(pathType="Prefix"),
    "no TLS": lambda o: _ingress(o)["spec"].pop("tls"),
    "a default backend": lambda o: _ingress(o)["spec"].update(
        defaultBackend=_paths(o)[0]["backend"]
    ),
    "streamed bodies": lambda o: _ingress(o)["metadata"]["annotations"].update(
        {"nginx.ingress.kubernetes.io/proxy-request-buffering": "off"}
    ),
    "controller reaches gRPC": lambda o: next(
        r
        for r in find(o, "NetworkPolicy")["spec"]["ingress"]
        if INGRESS_NAMESPACE in str(r["from"])
    )["ports"].append({"port": 8001, "protocol": "TCP"}),
}


@pytest.mark.parametrize("overlay", ["gpu", "cpu", "gpu-s3"])
def test_the_ingress_passes_only_the_front_door(
    renders: dict[str, list[dict[str, Any]]],
    overlay: str,
) -> None:
    assert check_front_door(renders[f"overlays/{overlay}"]) == []


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_front_door_check_catches_an_open_door(
    renders: dict[str, list[dict[str, Any]]],
    mutation: str,
) -> None:
    objs = copy.deepcopy(renders["overlays/gpu"])
    MUTATIONS[mutation](objs)
    assert check_front_door(objs), mutation


def test_the_ingress_validates_strictly(renders: dict[str, list[dict[str, Any]]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    ing = _ingress(renders["overlays/gpu"])
    kv.validate(ing, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(ing)
    broken["spec"]["rules"][0]["http"]["paths"][0]["pathTyp"] = "Exact"  # misspelt
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)


def nginx_routes(conf: str) -> set[tuple[str, str]]:
    """(method, path) of every exact location that is passed on, as written in it."""
    routes = set()
    blocks = re.findall(r"location\s+=\s+(\S+)\s*\{(.*?)\n\s*\}", conf, re.S)
    for path, body in blocks:
        method = re.search(r"limit_except\s+(\w+)", body)
        passed = re.search(r"proxy_pass\s+http://triton(\S*);", body)
        assert method and passed and passed.group(1) == path, (path, body)
        routes.add((method.group(1), path))
    return routes


def test_the_compose_gateway_passes_the_same_paths() -> None:
    conf = NGINX_CONF.read_text()
    assert nginx_routes(conf) == ALLOWED
    # Nothing else: no prefix or regex location passes anything, the rest is 404.
    others = re.findall(r"location\s+(?!=)([^{]*)\{([^}]*)\}", conf)
    assert [(o.strip(), b.strip()) for o, b in others] == [("/", "return 404;")]
    assert re.search(r"^\s*proxy_request_buffering on;", conf, re.M)
    assert re.search(r'^\s*proxy_set_header plantdx-key "";', conf, re.M)
    assert re.search(r"^\s*client_max_body_size \d+m;", conf, re.M)


# -- the gateway in front of a real Triton ------------------------------------------------------
def _nginx() -> str:
    exe = os.environ.get("PLANTDX_NGINX") or shutil.which("nginx")
    if not exe:
        pytest.skip("nginx not found (set PLANTDX_NGINX to an nginx binary to run the gateway)")
    return exe


@pytest.fixture(scope="module")
def gateway(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from plantdx.serving.server import free_port

    from helpers.serving import start_server

    nginx = _nginx()
    tmp = tmp_path_factory.mktemp("gateway")
    server = start_server(tiny_repo, tmp / "triton.log", admin_key="gateway-test-key-0123456789")
    port = free_port()
    conf = (
        NGINX_CONF.read_text()
        .replace("server triton:8000;", f"server {server.http_url};")
        .replace("listen 8080;", f"listen 127.0.0.1:{port};")
        .replace("/tmp/nginx", str(tmp / "nginx"))
    )
    (tmp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-e", "stderr", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "nginx.err", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 20
        while _status(port, "GET", "/v2/health/ready") != 200:
            assert proc.poll() is None, (tmp / "nginx.err").read_text()
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.2)
        yield port, server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.stop()


def _status(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@pytest.mark.triton
def test_the_gateway_serves_the_client_and_nothing_else(
    gateway: tuple[int, Any], mini_photos: list[Path]
) -> None:
    from plantdx.client import PlantDxClient

    port, server = gateway
    with PlantDxClient(f"127.0.0.1:{port}") as client:
        prediction = client.predict(mini_photos[0])
        assert prediction.label and client.health().status == "healthy"
    key = {"plantdx-key": server.admin_key}
    for method, path in ALLOWED:
        if method == "GET":
            assert _status(port, method, path) == 200, path
    for method, path in [
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/plantdx/unload"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("GET", "/v2/trace/setting"),
        ("GET", "/v2/logging"),
        ("GET", "/v2/models/stats"),
        ("GET", "/v2/models/plantdx/config"),
        ("GET", "/v2"),
        ("POST", "/v2/models/postprocess/infer"),
        ("POST", "/v2/models/classifier/infer"),
        ("POST", "/v2/models/plantdx/versions/1/infer"),
        ("POST", "/v2/models/plantdx/../postprocess/infer"),
        ("POST", "/v2/models/plantdx%2F..%2Fpostprocess/infer"),
        ("POST", "//v2/repository/index"),
    ]:
        # Refused even with the key: the gateway routes none of these, and drops the header.
        assert _status(port, method, path, key) == 404, path
    # The key itself works, on Triton's own port only.
    triton_port = int(server.http_url.rsplit(":", 1)[1])
    assert _status(triton_port, "POST", "/v2/repository/index", key) == 200
    assert _status(port, "GET", "/v2/models/plantdx/infer") == 403  # wrong method
    assert _status(port, "DELETE", "/v2/health/ready") == 403
