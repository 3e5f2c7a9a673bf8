"""`kubectl kustomize` renders base, monitoring, every overlay and both Jobs; every built-in object
validates with kubernetes-validate in strict mode against KUBERNETES_VERSION, offline; the
Prometheus Operator kinds (PodMonitor, PrometheusRule), which those schemas do not cover, are
validated against structural schemas written here.

No cluster is involved: nothing here shows that the manifests schedule.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from k8s_manifests import DEPLOYMENT, KUBERNETES_VERSION, OVERLAYS, find, ref


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
