"""What the manifest checks share: where things are, the product's names and ports, and
rendering (`kubectl kustomize`) and finding objects in what it renders."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
SCRIPTS = ROOT / "scripts"

# The Kubernetes version every rendered object is validated against (kubernetes-validate,
# strict mode: unknown fields are errors).
KUBERNETES_VERSION = "1.30.0"

OVERLAYS = ("gpu", "cpu", "gpu-s3")
JOBS = ("tensorrt-build", "training")

DEPLOYMENT = "plantdx-triton"
TRITON_CONTAINER = "triton"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_POOL_LABEL = "plantdx.io/node-pool"
GPU_POOL_VALUE = "gpu"
RUN_AS_USER = 1000

# The Triton command line of the product (the repository comes from an env var; the supervisor
# adds the restricted-API flags with the key from the Secret mounted as a file).
TRITON_ARGS = {
    "--model-repository": "$(MODEL_REPOSITORY)",
    "--model-control-mode": "explicit",
    "--load-model": "plantdx",
    "--strict-readiness": "true",
    "--http-port": "8000",
    "--grpc-port": "8001",
    "--metrics-port": "8002",
    "--allow-metrics": "true",
    "--allow-gpu-metrics": "true",
    "--metrics-config": "summary_latencies=true",
    "--exit-timeout-secs": "30",
    "--cache-config": "local,size=268435456",
}
# Where the supervisor reads the admin key: a file of the Secret's volume.
ADMIN_KEY_FILE = "/var/run/secrets/plantdx/admin-key"
ADMIN_SECRET = "plantdx-triton-admin"
# Triton under the supervisor that restarts dead stubs and drains on SIGTERM.
SUPERVISED = ["python3", "-m", "plantdx.serving.supervise", "--"]
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PROBE_PATHS = {
    "startupProbe": "/v2/health/live",
    "livenessProbe": "/v2/health/live",
    "readinessProbe": "/v2/health/ready",
}


# --- rendering ----------------------------------------------------------------------------------
def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise FileNotFoundError("kubectl")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for obj in objs:
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name):
            return obj
    raise KeyError(f"no {kind} {name or ''} in the rendered objects")


def find_all(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objs if obj["kind"] == kind]


def ref(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_specs(objs: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every object that runs pods."""
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_template["spec"]
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def triton(objs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    dep = find(objs, "Deployment", DEPLOYMENT)
    for c in dep["spec"]["template"]["spec"]["containers"]:
        if c["name"] == TRITON_CONTAINER:
            return c
    raise KeyError(f"no container {TRITON_CONTAINER} in Deployment/{DEPLOYMENT}")


def parse_args(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        key, _, value = arg.partition("=")
        out[key] = value
    return out


def env_value(container: dict[str, Any], name: str) -> Any:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value", e.get("valueFrom"))
    return None


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) or a plain map against labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        match_labels, exprs = selector, []
    else:
        match_labels, exprs = selector.get("matchLabels", {}), selector.get("matchExpressions", [])
    if not match_labels and not exprs:
        return False  # an empty selector selects everything: never what these objects mean
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in exprs:
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (
            op == "NotIn" and labels.get(key) in values
        ):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10}
_SUFFIX.update({"Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


def quantity(value: str | int | float) -> float:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"unsupported quantity {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def overlay_copy(renders: dict[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(renders[f"overlays/{name}"])


def deployment_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod spec of the Triton Deployment."""
    return find(objs, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
