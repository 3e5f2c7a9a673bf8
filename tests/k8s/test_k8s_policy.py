"""The serving policies on every overlay and the Job policies on both Jobs, the GPU pool and its
absence on the CPU pool, the model repository sources, autoscaling and the generated dashboard
ConfigMap. No cluster, GPU or container engine is involved."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from k8s_manifests import (
    DEPLOYMENT,
    GPU_RESOURCE,
    JOBS,
    OVERLAYS,
    env_value,
    find,
    find_all,
    overlay_copy,
    triton,
)
from k8s_metrics import adapter_config
from k8s_policy import JOB_CHECKS, SERVING_CHECKS, check_cpu_pool, check_gpu_pool


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("check", sorted(SERVING_CHECKS))
def test_serving_policy(renders: dict[str, list[dict[str, Any]]], overlay: str, check: str) -> None:
    errors = SERVING_CHECKS[check](overlay_copy(renders, overlay))
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
    objs = overlay_copy(renders, overlay)
    assert check_gpu_pool(objs) == []
    c = triton(objs)
    assert c["resources"]["limits"][GPU_RESOURCE] == "1"
    repo = env_value(c, "MODEL_REPOSITORY")
    assert repo.rstrip("/").endswith("/gpu"), "the GPU pool serves the KIND_GPU repository"


def test_cpu_overlay_has_nothing_of_the_gpu_pool(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = overlay_copy(renders, "cpu")
    assert check_cpu_pool(objs) == []
    assert env_value(triton(objs), "MODEL_REPOSITORY") == "/models/cpu"
    # The same image and command line as on the GPU pool.
    gpu = triton(overlay_copy(renders, "gpu"))
    assert triton(objs)["image"] == gpu["image"]
    assert triton(objs)["args"] == gpu["args"]


def test_model_repository_sources(renders: dict[str, list[dict[str, Any]]]) -> None:
    """Default: read-only shared volume. The S3 component swaps it for s3:// and a Secret."""
    gpu, s3 = overlay_copy(renders, "gpu"), overlay_copy(renders, "gpu-s3")
    assert find(gpu, "PersistentVolumeClaim", "plantdx-model-repository")
    assert not find_all(s3, "PersistentVolumeClaim")
    assert str(env_value(triton(s3), "MODEL_REPOSITORY")).startswith("s3://")
    volumes = {v["name"] for v in find(s3, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"dshm", "tmp", "admin-key"}


def test_autoscaling(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = overlay_copy(renders, "gpu")
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
