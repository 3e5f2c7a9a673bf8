"""Kubernetes manifests (k8s/), monitoring and Docker files: checks that need no cluster.

* `kubectl kustomize` renders base, monitoring, every overlay and both Jobs;
* every built-in object validates with kubernetes-validate in strict mode against
  KUBERNETES_VERSION, offline; the Prometheus Operator kinds (PodMonitor, PrometheusRule),
  which those schemas do not cover, are validated against structural schemas written here;
* policies: probes, Triton command line and ports, securityContext, resources, pinned
  images, volumes, graceful shutdown, selectors, GPU pool scheduling (and its absence on
  the CPU pool); each policy is also shown to fail on a deliberately broken copy;
* monitoring: the rule file equals the PrometheusRule, `promtool check rules` and
  `promtool test rules` pass (skipped without promtool), dashboard and adapter queries parse,
  and every PromQL expression reads only known metric names; the `triton`-marked test checks
  those names against a live Triton scrape.

No cluster, GPU or container engine is involved: nothing here shows that the manifests
schedule, that the images build, or that the GPU metrics appear.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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

# --- metric names -------------------------------------------------------------------------------
# Triton 2.51 metrics, labelled model and version (summaries need
# --metrics-config=summary_latencies=true).
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
        "nv_inference_request_summary_us",
        "nv_inference_queue_summary_us",
        "nv_inference_compute_infer_summary_us",
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "nv_cpu_utilization",
        "nv_cpu_memory_used_bytes",
    }
)
# Reported only where Triton sees an NVIDIA GPU (DCGM/NVML): a scrape of a CPU-only server
# cannot contain them, so the live-scrape test allows them to be missing. Everything else the
# manifests use must appear in a live scrape.
GPU_ONLY_METRICS = frozenset(
    {
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage",
    }
)
DRIFT_STATISTICS = (
    "brightness",
    "colourfulness",
    "sharpness",
    "green_fraction",
    "megapixels",
    "aspect_ratio",
)
# Exported by the preprocess/postprocess Python backends through Triton's custom metrics
# (model_repository/backends): three counters and the calibrated top-1 confidence histogram
# `plantdx_prediction_confidence` (buckets 0.1 ... 0.99 in the `le` label).
PLANTDX_METRICS = frozenset(
    {
        "plantdx_predictions_total",
        "plantdx_abstentions_total",
        "plantdx_prediction_confidence_bucket",
        "plantdx_prediction_confidence_count",
        "plantdx_prediction_confidence_sum",
        "plantdx_preprocess_rejections_total",
        # The preprocess's image-statistic histograms (plantdx.imagestats), the live side of
        # the drift rules.
        *(
            f"plantdx_image_{stat}_{suffix}"
            for stat in DRIFT_STATISTICS
            for suffix in ("bucket", "count", "sum")
        ),
        # Each loaded version's drift reference (its reference.json, as gauges of the
        # preprocess: plantdx.reference_series), the other side of the drift rules.
        "plantdx_reference_share",
        "plantdx_reference_abstention_share",
    }
)
# Series that do not come from Triton, used only by alerts: `up` is written by Prometheus for
# every target, kube_deployment_* by kube-state-metrics (part of kube-prometheus-stack).
PLATFORM_METRICS = frozenset(
    {"up", "kube_deployment_spec_replicas", "kube_deployment_status_replicas_available"}
)
# The raw metric names the rules, the adapter and the dashboard read (recording rules excluded);
# test_promql_uses_only_known_metric_names keeps this list equal to what the files use.
MANIFEST_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
        "nv_inference_request_summary_us",
        "nv_inference_queue_summary_us",
        "nv_inference_compute_infer_summary_us",
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "nv_cpu_utilization",
        "nv_cpu_memory_used_bytes",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage",
        "plantdx_predictions_total",
        "plantdx_prediction_confidence_bucket",
        "plantdx_prediction_confidence_count",
        "plantdx_preprocess_rejections_total",
        "plantdx_abstentions_total",
        *(f"plantdx_image_{stat}_bucket" for stat in DRIFT_STATISTICS),
        "plantdx_reference_share",
        "plantdx_reference_abstention_share",
        "up",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_available",
    }
)
# Everything a Triton /metrics scrape can contain that the manifests may use.
SCRAPED_METRICS = TRITON_METRICS | GPU_ONLY_METRICS | PLANTDX_METRICS
KNOWN_METRICS = SCRAPED_METRICS | PLATFORM_METRICS

_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names a PromQL expression selects.

    Drops strings, label matchers, ranges, grouping clauses and function names; works on
    Grafana (`$__rate_interval`, `$namespace`) and prometheus-adapter (`<<.LabelMatchers>>`)
    templates as well, since those only appear inside braces, brackets and `by (...)`.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:$<])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, call = m.group(1), m.group(2)
        if call or name in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


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


# --- policy checks ------------------------------------------------------------------------------
def check_probes(objs: list[dict[str, Any]]) -> list[str]:
    c = triton(objs)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    http_port = int(parse_args(c.get("args", [])).get("--http-port", "-1"))
    errors = []
    for probe, path in PROBE_PATHS.items():
        get = c.get(probe, {}).get("httpGet")
        if not get:
            errors.append(f"{probe} missing or not an HTTP probe")
            continue
        if get.get("path") != path:
            errors.append(f"{probe} path {get.get('path')!r} != {path!r}")
        port = get.get("port")
        port = ports.get(port, port) if isinstance(port, str) else port
        if port != http_port:
            errors.append(
                f"{probe} port {get.get('port')!r} is not Triton's --http-port {http_port}"
            )
    return errors


def check_triton_command(objs: list[dict[str, Any]]) -> list[str]:
    c = triton(objs)
    errors = []
    if c.get("command") != SUPERVISED:
        errors.append(f"command {c.get('command')!r} != {SUPERVISED}")
    if c.get("args", [])[:1] != ["tritonserver"]:
        errors.append("the supervised command line does not start with tritonserver")
    args = parse_args(c.get("args", [])[1:])
    for key, value in TRITON_ARGS.items():
        if args.get(key) != value:
            errors.append(f"Triton argument {key}={args.get(key)!r}, expected {value!r}")
    defined = {e["name"] for e in c.get("env", [])}
    for var in re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", " ".join(c.get("args", []))):
        if var not in defined:
            errors.append(f"argument refers to $({var}), which is not in the container's env")
    errors.extend(_admin_key_errors(objs, c))
    return errors


def _admin_key_errors(objs: list[dict[str, Any]], c: dict[str, Any]) -> list[str]:
    """The admin key: only in a file of a Secret volume the supervisor reads, never an
    argument or an environment value (the supervisor adds the restriction flags)."""
    errors = []
    text = json.dumps({"args": c.get("args", []), "env": c.get("env", [])})
    if "restricted-api" in text or "restricted-protocol" in text or "plantdx-key" in text:
        errors.append("the admin key or its restriction flags are in the container's spec")
    if env_value(c, "PLANTDX_ADMIN_KEY_FILE") != ADMIN_KEY_FILE:
        errors.append(f"PLANTDX_ADMIN_KEY_FILE is not {ADMIN_KEY_FILE}")
    volumes = {v["name"]: v for v in _pod(objs).get("volumes", [])}
    folder = ADMIN_KEY_FILE.rsplit("/", 1)[0]
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == folder), {})
    secret = volumes.get(mount.get("name", ""), {}).get("secret", {})
    if secret.get("secretName") != ADMIN_SECRET or not mount.get("readOnly"):
        errors.append(f"{folder} is not the Secret {ADMIN_SECRET}, mounted read-only")
    return errors


def check_ports(objs: list[dict[str, Any]]) -> list[str]:
    """Container ports, Service, PodMonitor and NetworkPolicy all agree with Triton's args."""
    c = triton(objs)
    args = parse_args(c.get("args", []))
    want = {
        "http": int(args["--http-port"]),
        "grpc": int(args["--grpc-port"]),
        "metrics": int(args["--metrics-port"]),
    }
    errors = []
    if want != PORTS:
        errors.append(f"Triton ports {want} != {PORTS}")
    container_ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if container_ports != want:
        errors.append(f"container ports {container_ports} != Triton's {want}")
    svc = find(objs, "Service", DEPLOYMENT)
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    if set(svc_ports) != set(want):
        errors.append(f"Service port names {sorted(svc_ports)} != {sorted(want)}")
    for name, p in svc_ports.items():
        target = p.get("targetPort", p["port"])
        target = container_ports.get(target) if isinstance(target, str) else target
        if p["port"] != want.get(name) or target != want.get(name):
            errors.append(f"Service port {name}: {p['port']} -> {p.get('targetPort')}")
    for pm in find_all(objs, "PodMonitor"):
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if container_ports.get(ep.get("port")) != want["metrics"]:
                errors.append(f"{ref(pm)} scrapes port {ep.get('port')!r}, not the metrics port")
    for np_ in find_all(objs, "NetworkPolicy"):
        for rule in np_["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            ports = {container_ports.get(p, p) for p in ports}
            if not ports <= set(want.values()):
                errors.append(f"{ref(np_)} opens ports {sorted(ports)} Triton does not serve")
            sources = json.dumps(rule.get("from", []))
            if want["metrics"] in ports and "monitoring" not in sources:
                errors.append(f"{ref(np_)}: metrics port open to {sources}, not monitoring")
            if ports & {want["http"], want["grpc"]} and "monitoring" in sources:
                errors.append(f"{ref(np_)}: inference ports open to the monitoring namespace")
    return errors


def check_security(objs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj, tmpl in pod_specs(objs):
        spec = tmpl["spec"]
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errors.append(f"{ref(obj)}: pod runAsNonRoot is not true")
        if spec.get("automountServiceAccountToken") is not False:
            errors.append(f"{ref(obj)}: service account token is mounted")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            errors.append(f"{ref(obj)}: uses host namespaces")
        for c in containers(tmpl):
            sc = c.get("securityContext", {})
            where = f"{ref(obj)} container {c['name']}"
            if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                errors.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) != RUN_AS_USER:
                errors.append(f"{where}: runAsUser is not {RUN_AS_USER}")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{where}: root file system is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                errors.append(f"{where}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or caps.get("add"):
                errors.append(f"{where}: capabilities are not drop ALL (and add none)")
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                errors.append(f"{where}: seccompProfile is not RuntimeDefault")
    return errors


def check_resources(objs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj, tmpl in pod_specs(objs):
        for c in containers(tmpl):
            where = f"{ref(obj)} container {c['name']}"
            res = c.get("resources", {})
            req, lim = res.get("requests", {}), res.get("limits", {})
            for r in ("cpu", "memory"):
                if r not in req or r not in lim:
                    errors.append(f"{where}: no {r} request and limit")
                elif quantity(lim[r]) < quantity(req[r]):
                    errors.append(f"{where}: {r} limit below its request")
            if GPU_RESOURCE in req and req[GPU_RESOURCE] != lim.get(GPU_RESOURCE):
                errors.append(f"{where}: GPU request differs from its limit")
    return errors


def check_images(objs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj, tmpl in pod_specs(objs):
        for c in containers(tmpl):
            image = c.get("image", "")
            errors.extend(f"{ref(obj)} container {c['name']}: {e}" for e in image_errors(image))
    return errors


def image_errors(image: str) -> list[str]:
    if "@sha256:" in image:
        return []
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return [f"image {image!r} has no tag"]
    if tag == "latest":
        return [f"image {image!r} uses the tag latest"]
    if "/" not in name:
        return [f"image {image!r} has no registry path (unreplaced kustomize image name?)"]
    return []


def check_volumes(objs: list[dict[str, Any]]) -> list[str]:
    """/dev/shm memory-backed, /tmp writable emptyDir, model repository read-only or S3."""
    errors = []
    dep = find(objs, "Deployment", DEPLOYMENT)
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    c = triton(objs)
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    shm = volumes.get(mounts.get("/dev/shm", {}).get("name", ""), {})
    if shm.get("emptyDir", {}).get("medium") != "Memory":
        errors.append("/dev/shm is not a memory-backed emptyDir")
    tmp = mounts.get("/tmp", {})
    if "emptyDir" not in volumes.get(tmp.get("name", ""), {}) or tmp.get("readOnly"):
        errors.append("/tmp is not a writable emptyDir")
    repo = str(env_value(c, "MODEL_REPOSITORY"))
    if repo.startswith("s3://"):
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            value = env_value(c, var)
            if not (isinstance(value, dict) and "secretKeyRef" in value):
                errors.append(f"{var} does not come from a Secret")
        if any(m == "/models" for m in mounts):
            errors.append("S3 repository but a /models volume is still mounted")
    else:
        mount = next((m for p, m in mounts.items() if repo.startswith(p)), None)
        if mount is None:
            errors.append(f"MODEL_REPOSITORY {repo} is not under a mounted volume")
        else:
            vol = volumes.get(mount["name"], {})
            pvc = vol.get("persistentVolumeClaim", {})
            if not mount.get("readOnly") or not pvc.get("readOnly"):
                errors.append("the model repository is not mounted read-only")
            claim = find(objs, "PersistentVolumeClaim", pvc.get("claimName"))
            if "ReadOnlyMany" not in claim["spec"]["accessModes"]:
                errors.append("the model repository claim does not offer ReadOnlyMany")
    return errors


def check_graceful_shutdown(objs: list[dict[str, Any]]) -> list[str]:
    dep = find(objs, "Deployment", DEPLOYMENT)
    spec = dep["spec"]["template"]["spec"]
    c = triton(objs)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    if sleep is None and cmd[-2:-1] and cmd[-2].endswith("sleep"):
        sleep = int(cmd[-1])
    if not sleep:
        return ["no preStop sleep"]
    exit_timeout = int(parse_args(c.get("args", [])).get("--exit-timeout-secs", "30"))
    # The supervisor drains for up to the exit timeout, then Triton may take it again.
    if grace <= sleep + 2 * exit_timeout:
        return [f"terminationGracePeriodSeconds {grace} <= preStop {sleep} + 2 × exit timeout"]
    return []


def check_selectors(objs: list[dict[str, Any]]) -> list[str]:
    """Every selector selects the pods it is meant for."""
    errors = []
    pods = {ref(o): t["metadata"].get("labels", {}) for o, t in pod_specs(objs)}
    for obj, tmpl in pod_specs(objs):
        sel = obj["spec"].get("selector")
        if obj["kind"] != "Job" and not selector_matches(sel or {}, tmpl["metadata"]["labels"]):
            errors.append(f"{ref(obj)}: selector does not match its pod template")
    dep_labels = pods.get(f"Deployment/{DEPLOYMENT}", {})
    for kind, path in (
        ("Service", ("spec", "selector")),
        ("PodDisruptionBudget", ("spec", "selector")),
        ("NetworkPolicy", ("spec", "podSelector")),
        ("PodMonitor", ("spec", "selector")),
    ):
        for obj in find_all(objs, kind):
            sel = obj
            for key in path:
                sel = sel.get(key, {})
            matched = [r for r, labels in pods.items() if selector_matches(sel, labels)]
            if not matched:
                errors.append(f"{ref(obj)} selects no pod")
            elif obj["metadata"]["name"] == DEPLOYMENT and not selector_matches(sel, dep_labels):
                errors.append(f"{ref(obj)} does not select the Triton pods")
    for hpa in find_all(objs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        try:
            obj = find(objs, target["kind"], target["name"])
        except KeyError:
            errors.append(f"{ref(hpa)} targets missing {target['kind']}/{target['name']}")
            continue
        if target.get("apiVersion") != obj["apiVersion"]:
            errors.append(f"{ref(hpa)} targets apiVersion {target.get('apiVersion')}")
    for obj, tmpl in pod_specs(objs):
        sub = tmpl["spec"].get("subdomain")
        if sub:
            svc = find(objs, "Service", sub)
            if svc["spec"].get("clusterIP") != "None" or not selector_matches(
                svc["spec"]["selector"], tmpl["metadata"]["labels"]
            ):
                errors.append(f"{ref(obj)}: subdomain {sub} is not a headless Service for it")
    return errors


def gpu_scheduling(tmpl: dict[str, Any]) -> dict[str, bool]:
    spec = tmpl["spec"]
    limits = [c.get("resources", {}).get("limits", {}) for c in containers(tmpl)]
    requests = [c.get("resources", {}).get("requests", {}) for c in containers(tmpl)]
    terms = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    affinity = bool(terms) and all(
        any(
            e["key"] == GPU_POOL_LABEL and e["operator"] == "In" and e["values"] == [GPU_POOL_VALUE]
            for e in t.get("matchExpressions", [])
        )
        for t in terms
    )
    return {
        "gpu_limit": any(int(lim.get(GPU_RESOURCE, 0)) >= 1 for lim in limits),
        "gpu_any": any(GPU_RESOURCE in r for r in limits + requests),
        "toleration": any(
            t.get("key") == GPU_RESOURCE
            and t.get("effect") == "NoSchedule"
            and t.get("operator") in ("Exists", "Equal")
            for t in spec.get("tolerations", [])
        ),
        "affinity": affinity,
        "node_selector": GPU_POOL_LABEL in spec.get("nodeSelector", {}),
    }


def check_gpu_pool(objs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj, tmpl in pod_specs(objs):
        s = gpu_scheduling(tmpl)
        for key in ("gpu_limit", "toleration", "affinity"):
            if not s[key]:
                errors.append(f"{ref(obj)}: no {key.replace('_', ' ')} for the GPU pool")
    return errors


def check_cpu_pool(objs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj, tmpl in pod_specs(objs):
        s = gpu_scheduling(tmpl)
        for key in ("gpu_any", "toleration", "affinity", "node_selector"):
            if s[key]:
                errors.append(f"{ref(obj)}: {key.replace('_', ' ')} of the GPU pool on CPU")
    return errors


def check_no_latest_anywhere(text: str) -> list[str]:
    return [
        f"line {i}: {line.strip()}"
        for i, line in enumerate(text.splitlines(), 1)
        if re.search(r"image:\s*\S+:latest\b", line)
    ]


# --- monitoring ---------------------------------------------------------------------------------
def rule_groups(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for pr in find_all(objs, "PrometheusRule") for g in pr["spec"]["groups"]]


def recorded_names(groups: list[dict[str, Any]]) -> set[str]:
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def adapter_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = find(objs, "ConfigMap", "plantdx-prometheus-adapter")
    return yaml.safe_load(cm["data"]["config.yaml"])


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and templating query of a Grafana dashboard."""
    out = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and query:
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
            out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with its Grafana variables replaced, for promtool."""
    expr = re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def adapter_to_promql(expr: str) -> str:
    expr = expr.replace("<<.LabelMatchers>>", 'namespace="plantdx",pod="plantdx-triton-0"')
    return expr.replace("<<.GroupBy>>", "pod")


def all_promql(objs: list[dict[str, Any]], dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression of the rules, adapter and dashboard."""
    out = []
    for g in rule_groups(objs):
        for r in g["rules"]:
            out.append((f"rule {r.get('record') or r.get('alert')}", r["expr"]))
    for i, rule in enumerate(adapter_config(objs)["rules"]):
        out.append((f"adapter rule {i} seriesQuery", rule["seriesQuery"]))
        out.append((f"adapter rule {i} metricsQuery", rule["metricsQuery"]))
    out.extend(dashboard_expressions(dashboard))
    return out


def check_metric_names(objs: list[dict[str, Any]], dashboard: dict[str, Any]) -> list[str]:
    recorded = recorded_names(rule_groups(objs))
    errors = []
    for where, expr in all_promql(objs, dashboard):
        unknown = metric_names(expr) - KNOWN_METRICS - recorded
        if unknown:
            errors.append(f"{where}: unknown metric(s) {sorted(unknown)}")
    return errors


def manifest_metric_names(objs: list[dict[str, Any]], dashboard: dict[str, Any]) -> set[str]:
    """The raw metric names the rules, adapter and dashboard read (recording rules excluded)."""
    recorded = recorded_names(rule_groups(objs))
    names: set[str] = set()
    for _, expr in all_promql(objs, dashboard):
        names |= metric_names(expr)
    return names - recorded


def scrape_metric_names(text: str) -> set[str]:
    """Family and sample names of a Prometheus text exposition (summary suffixes folded)."""
    names = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            name = re.match(r"[A-Za-z_:][\w:]*", line)
            if name:
                names.add(name.group(0))
                names.add(re.sub(r"_(count|sum|bucket)$", "", name.group(0)))
    return names


# ================================================================================================
# Fixtures
# ================================================================================================
def _render(directory: Path) -> list[dict[str, Any]]:
    try:
        return kustomize(directory)
    except FileNotFoundError:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the manifests)")


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization, rendered once: base, monitoring, the overlays and the Jobs."""
    dirs = {"base": K8S / "base", "monitoring": K8S / "monitoring"}
    dirs.update({f"overlays/{o}": K8S / "overlays" / o for o in OVERLAYS})
    dirs.update({f"jobs/{j}": K8S / "jobs" / j for j in JOBS})
    return {name: _render(path) for name, path in dirs.items()}


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())


@pytest.fixture(scope="session")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip(
            "promtool not found: install Prometheus's tools (Debian/Ubuntu: "
            "apt-get install prometheus) to check the rules"
        )
    return exe


def _overlay(renders: dict[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(renders[f"overlays/{name}"])


def _promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


# ================================================================================================
# Rendering and schema validation
# ================================================================================================
def test_every_kustomization_renders(renders: dict[str, list[dict[str, Any]]]) -> None:
    for name in (f"overlays/{o}" for o in OVERLAYS):
        kinds = {o["kind"] for o in renders[name]}
        assert {
            "Namespace",
            "ServiceAccount",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "PodMonitor",
            "PrometheusRule",
            "ConfigMap",
        } <= kinds, name
    assert {o["kind"] for o in renders["jobs/tensorrt-build"]} == {"Job", "PersistentVolumeClaim"}
    assert {o["kind"] for o in renders["jobs/training"]} == {
        "Job",
        "Service",
        "PersistentVolumeClaim",
    }


def test_namespaces(renders: dict[str, list[dict[str, Any]]]) -> None:
    for name, objs in renders.items():
        for obj in objs:
            ns = obj["metadata"].get("namespace")
            if obj["kind"] == "Namespace":
                assert obj["metadata"]["name"] == "plantdx"
                labels = obj["metadata"]["labels"]
                assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
            elif obj["kind"] == "ConfigMap":
                assert ns == "monitoring", (name, ref(obj))
            else:
                assert ns == "plantdx", (name, ref(obj))


def test_builtin_objects_validate_strictly(renders: dict[str, list[dict[str, Any]]]) -> None:
    """kubernetes-validate, strict (unknown fields fail), offline, against KUBERNETES_VERSION.

    Its schemas cover the built-in API only: the Prometheus Operator CRDs are checked by
    test_custom_resources_are_well_formed instead.
    """
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    errors, validated = [], 0
    seen = set()
    for name, objs in renders.items():
        for obj in objs:
            if obj["apiVersion"] == "monitoring.coreos.com/v1":
                continue
            key = json.dumps(obj, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            try:
                kv.validate(obj, KUBERNETES_VERSION, strict=True)
                validated += 1
            except kv.ValidationError as exc:
                path = ".".join(map(str, exc.path))
                errors.append(f"{name} {ref(obj)}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert validated >= 15


def test_strict_validation_rejects_unknown_and_mistyped_fields(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    dep = copy.deepcopy(find(renders["overlays/gpu"], "Deployment", DEPLOYMENT))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, KUBERNETES_VERSION, strict=True)
    svc = copy.deepcopy(find(renders["overlays/gpu"], "Service", DEPLOYMENT))
    svc["spec"]["ports"][0]["port"] = "eight thousand"
    with pytest.raises(kv.ValidationError):
        kv.validate(svc, KUBERNETES_VERSION, strict=True)


# Structural schemas for the two Prometheus Operator kinds, written from the
# monitoring.coreos.com/v1 CRDs: required fields, types, and no unknown fields where these
# manifests write them.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}},
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [
                                            {"required": ["record"]},
                                            {"required": ["alert"]},
                                        ],
                                        "properties": {
                                            "record": {"type": "string"},
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _STR_MAP,
                                            "annotations": _STR_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def crd_errors(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = CRD_SCHEMAS.get(obj["kind"])
    if schema is None:
        return [f"no structural schema for {obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{ref(obj)}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def test_custom_resources_are_well_formed(renders: dict[str, list[dict[str, Any]]]) -> None:
    """PodMonitor and PrometheusRule: no published schema offline, so a structural one here."""
    crds = [
        o
        for objs in renders.values()
        for o in objs
        if o["apiVersion"] == "monitoring.coreos.com/v1"
    ]
    assert {o["kind"] for o in crds} == {"PodMonitor", "PrometheusRule"}
    errors = [e for o in crds for e in crd_errors(o)]
    assert not errors, "\n".join(errors)
    for o in crds:
        assert o["metadata"]["labels"].get("release"), f"{ref(o)}: no Prometheus selector label"
    rule = copy.deepcopy(find(renders["overlays/gpu"], "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up"
    assert len(crd_errors(rule)) == 2


# ================================================================================================
# Policies
# ================================================================================================
SERVING_CHECKS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "probes": check_probes,
    "triton_command": check_triton_command,
    "ports": check_ports,
    "security": check_security,
    "resources": check_resources,
    "images": check_images,
    "volumes": check_volumes,
    "graceful_shutdown": check_graceful_shutdown,
    "selectors": check_selectors,
}
JOB_CHECKS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "security": check_security,
    "resources": check_resources,
    "images": check_images,
    "selectors": check_selectors,
    "gpu_pool": check_gpu_pool,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("check", sorted(SERVING_CHECKS))
def test_serving_policy(renders: dict[str, list[dict[str, Any]]], overlay: str, check: str) -> None:
    errors = SERVING_CHECKS[check](_overlay(renders, overlay))
    assert errors == []


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("check", sorted(JOB_CHECKS))
def test_job_policy(renders: dict[str, list[dict[str, Any]]], job: str, check: str) -> None:
    errors = JOB_CHECKS[check](copy.deepcopy(renders[f"jobs/{job}"]))
    assert errors == []


@pytest.mark.parametrize("overlay", ["gpu", "gpu-s3"])
def test_gpu_overlay_targets_the_gpu_pool(
    renders: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = _overlay(renders, overlay)
    assert check_gpu_pool(objs) == []
    c = triton(objs)
    assert c["resources"]["limits"][GPU_RESOURCE] == "1"
    repo = env_value(c, "MODEL_REPOSITORY")
    assert repo.rstrip("/").endswith("/gpu"), "the GPU pool serves the KIND_GPU repository"


def test_cpu_overlay_has_nothing_of_the_gpu_pool(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = _overlay(renders, "cpu")
    assert check_cpu_pool(objs) == []
    assert env_value(triton(objs), "MODEL_REPOSITORY") == "/models/cpu"
    # The same image and command line as on the GPU pool.
    gpu = triton(_overlay(renders, "gpu"))
    assert triton(objs)["image"] == gpu["image"]
    assert triton(objs)["args"] == gpu["args"]


def test_model_repository_sources(renders: dict[str, list[dict[str, Any]]]) -> None:
    """Default: read-only shared volume. The S3 component swaps it for s3:// and a Secret."""
    gpu, s3 = _overlay(renders, "gpu"), _overlay(renders, "gpu-s3")
    assert find(gpu, "PersistentVolumeClaim", "plantdx-model-repository")
    assert not find_all(s3, "PersistentVolumeClaim")
    assert str(env_value(triton(s3), "MODEL_REPOSITORY")).startswith("s3://")
    volumes = {v["name"] for v in find(s3, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"dshm", "tmp", "admin-key"}


def test_autoscaling(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = _overlay(renders, "gpu")
    hpa = find(objs, "HorizontalPodAutoscaler", DEPLOYMENT)
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    served = {r["name"]["as"] for r in adapter_config(objs)["rules"]}
    assert metric["pods"]["metric"]["name"] in served, "the adapter must serve the HPA's metric"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    pdb = find(objs, "PodDisruptionBudget", DEPLOYMENT)
    assert hpa["spec"]["minReplicas"] > pdb["spec"].get("maxUnavailable", 0)
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_dashboard_configmap_is_generated_from_the_json(
    renders: dict[str, list[dict[str, Any]]], dashboard: dict[str, Any]
) -> None:
    for name in [f"overlays/{o}" for o in OVERLAYS] + ["monitoring"]:
        cm = find(renders[name], "ConfigMap", "plantdx-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (content,) = cm["data"].values()
        assert json.loads(content) == dashboard


# Each mutation breaks one rule in a copy of a rendered overlay; the named check must notice.
def _triton_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return triton(objs)


def _pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objs, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]


MUTATIONS: dict[str, tuple[str, str, Callable[[list[dict[str, Any]]], None]]] = {
    "no readiness probe": ("gpu", "probes", lambda o: _triton_of(o).pop("readinessProbe")),
    "readiness on /live": (
        "gpu",
        "probes",
        lambda o: _triton_of(o)["readinessProbe"]["httpGet"].update(path="/v2/health/live"),
    ),
    "probe on the metrics port": (
        "cpu",
        "probes",
        lambda o: _triton_of(o)["livenessProbe"]["httpGet"].update(port="metrics"),
    ),
    "image tag latest": (
        "gpu",
        "images",
        lambda o: _triton_of(o).update(image="nvcr.io/x/y:latest"),
    ),
    "image without tag": (
        "cpu",
        "images",
        lambda o: _triton_of(o).update(image="ghcr.io/plantdx/x"),
    ),
    "runs as root": (
        "gpu",
        "security",
        lambda o: _triton_of(o)["securityContext"].update(runAsUser=0),
    ),
    "writable root fs": (
        "cpu",
        "security",
        lambda o: _triton_of(o)["securityContext"].pop("readOnlyRootFilesystem"),
    ),
    "privilege escalation": (
        "gpu",
        "security",
        lambda o: _triton_of(o)["securityContext"].update(allowPrivilegeEscalation=True),
    ),
    "added capability": (
        "gpu",
        "security",
        lambda o: _triton_of(o)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    ),
    "no seccomp": (
        "gpu",
        "security",
        lambda o: (
            _triton_of(o)["securityContext"].pop("seccompProfile"),
            _pod(o)["securityContext"].pop("seccompProfile"),
        ),
    ),
    "no limits": ("cpu", "resources", lambda o: _triton_of(o)["resources"].pop("limits")),
    "limit below request": (
        "gpu",
        "resources",
        lambda o: _triton_of(o)["resources"]["limits"].update(memory="1Gi"),
    ),
    "service selects nothing": (
        "gpu",
        "selectors",
        lambda o: find(o, "Service", DEPLOYMENT)["spec"]["selector"].update(
            {"app.kubernetes.io/component": "api"}
        ),
    ),
    "pdb selects nothing": (
        "gpu",
        "selectors",
        lambda o: find(o, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "other"}
        ),
    ),
    "hpa targets another deployment": (
        "cpu",
        "selectors",
        lambda o: find(o, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="x"),
    ),
    "network policy selects nothing": (
        "gpu",
        "selectors",
        lambda o: find(o, "NetworkPolicy")["spec"]["podSelector"].update(matchLabels={"a": "b"}),
    ),
    "pod labels drift from the selector": (
        "gpu",
        "selectors",
        lambda o: find(o, "Deployment")["spec"]["template"]["metadata"]["labels"].update(
            {"app.kubernetes.io/component": "triton"}
        ),
    ),
    "http port differs from the args": (
        "gpu",
        "ports",
        lambda o: _triton_of(o)["ports"][0].update(containerPort=9000),
    ),
    "service targets the wrong port": (
        "cpu",
        "ports",
        lambda o: find(o, "Service", DEPLOYMENT)["spec"]["ports"][2].update(targetPort="http"),
    ),
    "metrics open to everyone": (
        "gpu",
        "ports",
        lambda o: find(o, "NetworkPolicy")["spec"]["ingress"][0]["ports"].append({"port": 8002}),
    ),
    "triton arg changed": (
        "gpu",
        "triton_command",
        lambda o: _triton_of(o)["args"].remove("--strict-readiness=true"),
    ),
    "admin key inline": (
        "gpu",
        "triton_command",
        lambda o: _triton_of(o)["args"].append(
            "--http-restricted-api=model-repository:plantdx-key=secret"
        ),
    ),
    "admin key file not from the Secret": (
        "cpu",
        "triton_command",
        lambda o: next(v for v in _pod(o)["volumes"] if v["name"] == "admin-key").update(
            secret={"secretName": "someone-elses"}
        ),
    ),
    "no memory-backed /dev/shm": (
        "gpu",
        "volumes",
        lambda o: next(v for v in _pod(o)["volumes"] if v["name"] == "dshm")["emptyDir"].pop(
            "medium"
        ),
    ),
    "model repository writable": (
        "cpu",
        "volumes",
        lambda o: next(m for m in _triton_of(o)["volumeMounts"] if m["mountPath"] == "/models").pop(
            "readOnly"
        ),
    ),
    "s3 credentials inline": (
        "gpu-s3",
        "volumes",
        lambda o: next(
            e for e in _triton_of(o)["env"] if e["name"] == "AWS_SECRET_ACCESS_KEY"
        ).update(value="x", valueFrom=None),
    ),
    "no preStop": ("gpu", "graceful_shutdown", lambda o: _triton_of(o).pop("lifecycle")),
    "grace period too short": (
        "gpu",
        "graceful_shutdown",
        lambda o: _pod(o).update(terminationGracePeriodSeconds=30),
    ),
    "gpu pod without toleration": ("gpu", "gpu_pool", lambda o: _pod(o).pop("tolerations")),
    "gpu pod without affinity": ("gpu", "gpu_pool", lambda o: _pod(o).pop("affinity")),
    "gpu pod without a gpu": (
        "gpu",
        "gpu_pool",
        lambda o: _triton_of(o)["resources"]["limits"].pop(GPU_RESOURCE),
    ),
    "cpu pod asks for a gpu": (
        "cpu",
        "cpu_pool",
        lambda o: _triton_of(o)["resources"]["limits"].update({GPU_RESOURCE: "1"}),
    ),
    "cpu pod tolerates the gpu taint": (
        "cpu",
        "cpu_pool",
        lambda o: _pod(o).update(
            tolerations=[{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        ),
    ),
}
ALL_CHECKS = {**SERVING_CHECKS, "gpu_pool": check_gpu_pool, "cpu_pool": check_cpu_pool}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_policy_checks_catch_broken_manifests(
    renders: dict[str, list[dict[str, Any]]], mutation: str
) -> None:
    overlay, check, mutate = MUTATIONS[mutation]
    objs = _overlay(renders, overlay)
    assert ALL_CHECKS[check](objs) == [], "the unmodified overlay must pass"
    mutate(objs)
    assert ALL_CHECKS[check](objs), f"{check} did not notice: {mutation}"


def base_image_errors(dockerfile: str) -> list[str]:
    """FROM images (or the ARG defaults they use) must carry a tag other than latest."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.M))
    stages: set[str] = set()
    errors = []
    for image, alias in re.findall(
        r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I
    ):
        if image not in stages:
            resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), "?"), image)
            errors += image_errors(resolved if "/" in resolved else f"docker.io/library/{resolved}")
        if alias:
            stages.add(alias)
    return errors


def test_no_latest_tag_in_any_source_file() -> None:
    files = [*K8S.rglob("*.yaml"), DOCKER / "compose.yaml"]
    errors = [f"{f}: {e}" for f in files for e in check_no_latest_anywhere(f.read_text())]
    for f in DOCKER.glob("*.Dockerfile"):
        errors += [f"{f}: {e}" for e in base_image_errors(f.read_text())]
    assert not errors, "\n".join(errors)
    assert base_image_errors("FROM python\n")
    assert base_image_errors("ARG B=nvcr.io/nvidia/tritonserver:latest\nFROM ${B} AS b\nFROM b\n")
    assert not base_image_errors("ARG B=nvcr.io/x/y:25.07\nFROM ${B} AS b\nFROM b AS c\n")


# ================================================================================================
# Monitoring: rules, adapter, dashboard
# ================================================================================================
def test_metric_name_extraction() -> None:
    assert metric_names(
        'sum by (namespace) (rate(nv_inference_request_success{model="plantdx"}[5m])) / 1e-3'
    ) == {"nv_inference_request_success"}
    assert metric_names(
        'sum by (<<.GroupBy>>) (rate(x_total{<<.LabelMatchers>>,a=~"b|c"}[2m])) '
        "/ clamp_min(y, 0.001) or vector(0)"
    ) == {"x_total", "y"}
    assert metric_names(
        'histogram_quantile(0.9, sum without (pod) (rate(h_bucket{ns=~"$namespace"}'
        "[$__rate_interval]))) > bool 0 and on(ns) group_left(le) z offset 5m"
    ) == {"h_bucket", "z"}
    assert metric_names("plantdx:server_errors:rate5m > 0.05") == {"plantdx:server_errors:rate5m"}


def test_prometheus_rule_is_generated_from_the_rule_file(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    """One source: docker/prometheus/plantdx.rules.yaml (compose's Prometheus loads it); the
    PrometheusRule is what scripts/prometheus_rules.py generates from it, and every overlay
    renders it unchanged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "prometheus_rules", SCRIPTS / "prometheus_rules.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = (DOCKER / "prometheus" / "plantdx.rules.yaml").read_text()
    generated = (K8S / "base" / "prometheusrule.yaml").read_text()
    assert generated == script.prometheus_rule(source), "run scripts/prometheus_rules.py write"
    assert script.main(["check"]) == 0
    plain = yaml.safe_load(source)
    for name in (f"overlays/{o}" for o in OVERLAYS):
        assert find(renders[name], "PrometheusRule")["spec"] == plain
    # A stale copy is caught: an edited source no longer matches the generated file.
    edited = source.replace("interval: 1m", "interval: 2m", 1)
    assert edited != source and script.prometheus_rule(edited) != generated


def test_rules_cover_the_required_alerts(renders: dict[str, list[dict[str, Any]]]) -> None:
    groups = rule_groups(renders["overlays/gpu"])
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    for name in (
        "PlantdxHighErrorRate",
        "PlantdxHighP99Latency",
        "PlantdxHighQueueTime",
        "PlantdxNoReadyReplicas",
    ):
        assert name in alerts
        assert alerts[name]["labels"]["severity"] in ("critical", "warning", "info")
        assert alerts[name]["annotations"]["summary"]
    assert 'quantile="0.99"' in " ".join(r["expr"] for g in groups for r in g["rules"])
    recorded = recorded_names(groups)
    assert all(re.fullmatch(r"plantdx:[a-z0-9_]+:[a-z0-9_]+", n) for n in recorded)
    used = set().union(*(metric_names(r["expr"]) for g in groups for r in g["rules"]))
    assert used & recorded, "the alerts build on the recording rules"


def test_promql_uses_only_known_metric_names(
    renders: dict[str, list[dict[str, Any]]], dashboard: dict[str, Any]
) -> None:
    """Every metric the rules, the adapter and the dashboard read is one Triton (or the
    plantdx backends, Prometheus, kube-state-metrics) exports. Runs without any server."""
    for name in (f"overlays/{o}" for o in OVERLAYS):
        assert check_metric_names(renders[name], dashboard) == []
    used = manifest_metric_names(renders["overlays/gpu"], dashboard)
    assert used <= KNOWN_METRICS
    assert used == MANIFEST_METRICS, "update MANIFEST_METRICS with the names the files now use"
    # The dashboard shows what was asked of it.
    for needed in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_request_summary_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_gpu_utilization",
        "plantdx_predictions_total",
        "plantdx_prediction_confidence_bucket",
    ):
        assert needed in used
    broken = copy.deepcopy(dashboard)
    broken["panels"][1]["targets"][0]["expr"] = "rate(nv_inference_requests_total[5m])"
    assert check_metric_names(renders["overlays/gpu"], broken)


def test_dashboard_json(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    exprs = " ".join(e for _, e in dashboard_expressions(dashboard))
    for q in ("0.5", "0.95", "0.99"):
        assert q in exprs
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    assert set(re.findall(r"\$(\w+)", exprs)) - {"__rate_interval", "__range"} <= variables


def test_prometheus_adapter_rules(renders: dict[str, list[dict[str, Any]]]) -> None:
    cfg = adapter_config(renders["overlays/gpu"])
    for rule in cfg["rules"]:
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]
        assert re.fullmatch(rule["name"]["matches"], metric_names(rule["seriesQuery"]).pop())


def test_promtool_check_rules(
    renders: dict[str, list[dict[str, Any]]], promtool: str, tmp_path: Path
) -> None:
    """`promtool check rules` on the PrometheusRule's spec, extracted to a rule file."""
    rules = tmp_path / "plantdx.rules.yaml"
    rules.write_text(yaml.safe_dump(find(renders["overlays/gpu"], "PrometheusRule")["spec"]))
    proc = _promtool(promtool, "check", "rules", rules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_of_the_alerts(
    renders: dict[str, list[dict[str, Any]]], promtool: str, tmp_path: Path
) -> None:
    """`promtool test rules`: the alerts fire (and stay quiet) on synthetic series."""
    rules = tmp_path / "plantdx.rules.yaml"
    rules.write_text(yaml.safe_dump(find(renders["overlays/gpu"], "PrometheusRule")["spec"]))
    tests = yaml.safe_load((K8S / "monitoring" / "plantdx.rules.test.yaml").read_text())
    tests["rule_files"] = [str(rules)]
    test_file = tmp_path / "plantdx.rules.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = _promtool(promtool, "test", "rules", test_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_parses_dashboard_and_adapter_queries(
    renders: dict[str, list[dict[str, Any]]],
    dashboard: dict[str, Any],
    promtool: str,
    tmp_path: Path,
) -> None:
    """Every dashboard and adapter query, templates filled in, parses as PromQL."""
    objs = renders["overlays/gpu"]
    exprs = [(w, grafana_to_promql(e)) for w, e in dashboard_expressions(dashboard)]
    for i, rule in enumerate(adapter_config(objs)["rules"]):
        exprs.append((f"adapter {i}", adapter_to_promql(rule["metricsQuery"])))
        exprs.append((f"adapter series {i}", rule["seriesQuery"]))
    group = {
        "name": "queries",
        "rules": [{"record": f"check:query_{i}:expr", "expr": e} for i, (_, e) in enumerate(exprs)],
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    proc = _promtool(promtool, "check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "bad", "rules": [{"record": "a:b:c", "expr": "sum(rate(x[5m])"}]}]}
        )
    )
    assert _promtool(promtool, "check", "rules", path).returncode != 0


@pytest.mark.triton
def test_metric_names_exist_in_live_scrape(
    renders: dict[str, list[dict[str, Any]]], dashboard: dict[str, Any], triton_metrics_text: str
) -> None:
    """Every metric the manifests read appears in a real Triton /metrics scrape.

    The scrape (fixture `triton_metrics_text`) comes from a CPU-only Triton started with
    --metrics-config=summary_latencies=true after real traffic and one rejected image.
    Allowed to be missing: GPU_ONLY_METRICS (no GPU, no nv_gpu_*) and PLATFORM_METRICS
    (written by Prometheus and kube-state-metrics, not by Triton).
    """
    scraped = scrape_metric_names(triton_metrics_text)
    assert "nv_inference_request_success" in scraped, "not a Triton scrape"
    used = manifest_metric_names(renders["overlays/gpu"], dashboard)
    missing = sorted(used - scraped - GPU_ONLY_METRICS - PLATFORM_METRICS)
    assert not missing, f"used by the manifests but absent from a live Triton scrape: {missing}"
    assert 'model="plantdx"' in triton_metrics_text
    assert 'quantile="0.99"' in triton_metrics_text
    # Every plantdx series names the model version (the per-version dashboard row reads it).
    ours = [x for x in triton_metrics_text.splitlines() if x.startswith("plantdx_")]
    assert ours and all('version="1"' in x for x in ours), ours


# ================================================================================================
# Docker and CI files
# ================================================================================================
def test_compose_matches_the_cluster(renders: dict[str, list[dict[str, Any]]]) -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"triton", "prometheus", "grafana", "mlflow"} <= set(services)
    for name, svc in services.items():
        if "image" in svc:
            assert not image_errors(
                svc["image"] if "/" in svc["image"] else f"local/{svc['image']}"
            ), name
    triton_svc = services["triton"]
    assert triton_svc["command"][:5] == [*SUPERVISED, "tritonserver"]
    args = parse_args(triton_svc["command"][5:])
    assert args == dict(TRITON_ARGS, **{"--model-repository": "/models"})
    # The key: a secret file the supervisor reads, never on the command line.
    assert "plantdx-key" not in json.dumps(triton_svc)
    secret_file = triton_svc["environment"]["PLANTDX_ADMIN_KEY_FILE"]
    assert triton_svc["secrets"] == [secret_file.rsplit("/", 1)[1]]
    assert compose["secrets"]["plantdx_admin_key"] == {"environment": "PLANTDX_ADMIN_KEY"}
    assert triton_svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"
    ]
    assert triton_svc["shm_size"]
    assert triton_svc["read_only"] is True
    assert triton_svc["user"].startswith("1000")
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"triton:{PORTS['metrics']}"]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    assert "./prometheus/plantdx.rules.yaml" in mounts
    assert "../k8s/monitoring/grafana-dashboard.json" in mounts
    for vol in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        src = vol.split(":")[0]
        if src.startswith("."):
            assert (DOCKER / src).resolve().exists(), vol


def _pip_installs(text: str) -> list[str]:
    """Every `pip install` command line of a Dockerfile, continuation lines joined."""
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", code)
    return [m.group(0).strip() for m in re.finditer(r"pip install [^&\n]*", joined)]


def test_dockerfiles() -> None:
    serving = (DOCKER / "serving.Dockerfile").read_text()
    assert re.search(
        r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:25\.07-py3@sha256:[0-9a-f]{64}$",
        serving,
        re.M,
    )
    for f in DOCKER.glob("*.Dockerfile"):
        text = f.read_text()
        stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
        assert stages, f
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and all(u.split(":")[0] not in ("root", "0") for u in users), f
        assert (DOCKER / f"{f.name}.dockerignore").is_file(), f
        # Python packages only from hash-checked locks (copied from requirements/), plantdx
        # itself from the source tree with no index; TensorRT (NVIDIA's index) by exact version.
        installs = _pip_installs(text)
        assert installs, f
        for cmd in installs:
            lock = re.search(r"--require-hashes --only-binary=:all: -r /tmp/([\w-]+\.lock)$", cmd)
            if lock:
                assert f"COPY requirements/{lock.group(1)} /tmp/{lock.group(1)}" in text, cmd
                assert (ROOT / "requirements" / lock.group(1)).is_file(), cmd
            elif "--index-url https://pypi.nvidia.com" in cmd:
                assert f.name == "serving.Dockerfile" and "--no-deps" in cmd, cmd
                reqs = re.findall(r'"([\w-]+)==([^"]+)"', cmd)
                assert {n for n, _ in reqs} == {
                    "tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu12-bindings"
                }  # fmt: skip
                assert {v for _, v in reqs} == {"${TENSORRT_VERSION}"}, cmd
            else:
                assert cmd.split()[2:] == [
                    "--no-index",
                    "--no-deps",
                    "--no-build-isolation",
                    "/src",
                ]
    training = (DOCKER / "training.Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", training, re.M)


def test_ci_workflow(renders: dict[str, list[dict[str, Any]]]) -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yaml").read_text()
    wf = yaml.safe_load(text)
    assert {"lint-and-test", "serving-image"} <= set(wf["jobs"])
    build = wf["jobs"]["serving-image"]
    assert build["needs"] == "lint-and-test"
    steps = " ".join(json.dumps(s) for s in build["steps"])
    assert "docker/serving.Dockerfile" in steps
    assert "triton25.07" in steps
    assert "scripts/image_pins.py check --scope build" in steps  # before the build
    # The README's test command, as .ci/run runs it (it installs Debian's prometheus itself).
    assert "./dev.sh test" in json.dumps(wf["jobs"]["lint-and-test"])
    image = triton(renders["overlays/gpu"])["image"]
    assert re.fullmatch(r"\S+:\S+-triton25\.07@sha256:[0-9a-f]{64}", image), "the CI's tag"
