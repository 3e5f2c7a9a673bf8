"""Each policy is shown to fail: every mutation breaks one rule in a copy of a rendered overlay, and
the named check must notice (the unmodified overlay passes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from k8s_manifests import DEPLOYMENT, GPU_RESOURCE, deployment_pod, find, overlay_copy, triton
from k8s_policy import SERVING_CHECKS, check_cpu_pool, check_gpu_pool


# Each mutation breaks one rule in a copy of a rendered overlay; the named check must notice.
def _triton_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return triton(objs)


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
            deployment_pod(o)["securityContext"].pop("seccompProfile"),
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
        lambda o: next(v for v in deployment_pod(o)["volumes"] if v["name"] == "admin-key").update(
            secret={"secretName": "someone-elses"}
        ),
    ),
    "no memory-backed /dev/shm": (
        "gpu",
        "volumes",
        lambda o: next(v for v in deployment_pod(o)["volumes"] if v["name"] == "dshm")[
            "emptyDir"
        ].pop("medium"),
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
        lambda o: deployment_pod(o).update(terminationGracePeriodSeconds=30),
    ),
    "gpu pod without toleration": (
        "gpu",
        "gpu_pool",
        lambda o: deployment_pod(o).pop("tolerations"),
    ),
    "gpu pod without affinity": ("gpu", "gpu_pool", lambda o: deployment_pod(o).pop("affinity")),
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
        lambda o: deployment_pod(o).update(
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
    objs = overlay_copy(renders, overlay)
    assert ALL_CHECKS[check](objs) == [], "the unmodified overlay must pass"
    mutate(objs)
    assert ALL_CHECKS[check](objs), f"{check} did not notice: {mutation}"
