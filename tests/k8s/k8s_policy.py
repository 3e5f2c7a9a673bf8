"""The serving and Job policies, each a function from rendered objects to errors: probes, Triton
command line and ports, securityContext, resources, pinned images, volumes, graceful shutdown,
selectors, and GPU pool scheduling (and its absence on the CPU pool)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from k8s_manifests import (
    ADMIN_KEY_FILE,
    ADMIN_SECRET,
    DEPLOYMENT,
    GPU_POOL_LABEL,
    GPU_POOL_VALUE,
    GPU_RESOURCE,
    PORTS,
    PROBE_PATHS,
    RUN_AS_USER,
    SUPERVISED,
    TRITON_ARGS,
    containers,
    deployment_pod,
    env_value,
    find,
    find_all,
    parse_args,
    pod_specs,
    quantity,
    ref,
    selector_matches,
    triton,
)


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
    volumes = {v["name"]: v for v in deployment_pod(objs).get("volumes", [])}
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
