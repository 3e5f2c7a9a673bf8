"""Canary roll-outs with Argo Rollouts (k8s/components/argo-canary, k8s/overlays/canary): checks
that need no cluster.

* `kubectl kustomize` renders the overlay: a Rollout over the Deployment's pod template, the
  AnalysisTemplate, the canary/stable Services, the HPA on the Rollout, the PodMonitor copying
  the pod-template hash onto the series, the version under roll-out in the pod template;
* every built-in object validates with kubernetes-validate (strict, offline), the Argo objects
  against the vendored CRD schemas (k8s/crds/argo-rollouts), strictly; broken copies fail;
* the wiring: workloadRef, selectors, Services, template names and arguments;
* the analysis queries parse (promtool), compute what they claim on synthetic series
  (`promtool test rules`), and read only metric names that a live scrape of the real server
  contains (pytest marker `triton`).

Nothing here has run on a cluster: no roll-out, abort or analysis run has been observed.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s_manifests import (
    DEPLOYMENT,
    K8S,
    KUBERNETES_VERSION,
    find,
    kustomize,
    ref,
    selector_matches,
)
from k8s_metrics import KNOWN_METRICS, metric_names, scrape_metric_names
from k8s_policy import SERVING_CHECKS

SCHEMAS = K8S / "crds" / "argo-rollouts"
ARGO_SCHEMA_FILES = {
    "Rollout": "rollout.openapi.yaml",
    "AnalysisTemplate": "analysistemplate.openapi.yaml",
}
TEMPLATE = "plantdx-canary"
SERVED_ENV = "PLANTDX_SERVED_VERSION"
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


# --- helpers --------------------------------------------------------------------------------
def strict(schema: Any) -> Any:
    """A CRD structural schema as JSON Schema that rejects unknown fields, as the API server's
    strict field validation does (x-kubernetes-preserve-unknown-fields keeps them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        out["additionalProperties"] = False
    return out


def argo_schema(kind: str) -> dict[str, Any]:
    schema = strict(yaml.safe_load((SCHEMAS / ARGO_SCHEMA_FILES[kind]).read_text()))
    schema["properties"]["metadata"] = _OBJECT_META
    schema["properties"]["apiVersion"] = {"const": "argoproj.io/v1alpha1"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return dict(schema)


def argo_errors(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    if obj.get("kind") not in ARGO_SCHEMA_FILES:
        return [f"no vendored schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    validator = jsonschema.Draft202012Validator(argo_schema(obj["kind"]))
    return [
        f"{ref(obj)}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def fill_args(query: str, args: dict[str, str]) -> str:
    """An analysis query with its {{args.NAME}} placeholders filled in."""
    return re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: args[m.group(1)], query)


def analysis_queries(objs: list[dict[str, Any]]) -> dict[str, str]:
    tmpl = find(objs, "AnalysisTemplate", TEMPLATE)
    return {m["name"]: m["provider"]["prometheus"]["query"] for m in tmpl["spec"]["metrics"]}


SAMPLE_ARGS = {
    "canary-hash": "c4n4ry",
    "stable-hash": "st4b1e",
    "namespace": "plantdx",
    "prometheus": "http://prometheus:9090",
}


def env_of(dep: dict[str, Any], name: str) -> Any:
    for c in dep["spec"]["template"]["spec"]["containers"]:
        for e in c.get("env", []):
            if e["name"] == name:
                return e.get("value")
    return None


@pytest.fixture(scope="module")
def canary() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the manifests)")
    return kustomize(K8S / "overlays" / "canary")


# --- rendering and schemas ------------------------------------------------------------------
def test_canary_overlay_renders(canary: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in canary}
    assert {"Rollout", "AnalysisTemplate", "Deployment", "Service", "PodMonitor"} <= kinds
    dep = find(canary, "Deployment", DEPLOYMENT)
    assert dep["spec"]["replicas"] == 0, "the Rollout owns the pods"
    # The version under roll-out is in the pod template, in place of the repository's only.
    assert env_of(dep, SERVED_ENV) == "3@2"
    hpa = find(canary, "HorizontalPodAutoscaler", DEPLOYMENT)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": DEPLOYMENT,
    }
    pm = find(canary, "PodMonitor")
    assert pm["spec"]["podTargetLabels"] == ["rollouts-pod-template-hash"]
    for obj in canary:
        if obj["kind"] not in ("Namespace", "ConfigMap"):
            assert obj["metadata"].get("namespace") == "plantdx", ref(obj)
    # Without the component, every pod follows the repository's policy.
    gpu = kustomize(K8S / "overlays" / "gpu")
    assert env_of(find(gpu, "Deployment", DEPLOYMENT), SERVED_ENV) == ""
    assert find(gpu, "Deployment", DEPLOYMENT)["spec"]["replicas"] == 2


def test_builtin_objects_validate_strictly(canary: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    errors, validated = [], 0
    for obj in canary:
        if obj["apiVersion"] in ("monitoring.coreos.com/v1", "argoproj.io/v1alpha1"):
            continue
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
            validated += 1
        except kv.ValidationError as exc:
            errors.append(f"{ref(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert validated >= 12
    svc = copy.deepcopy(find(canary, "Service", "plantdx-triton-canary"))
    svc["spec"]["selectr"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(svc, KUBERNETES_VERSION, strict=True)


def test_argo_objects_validate_against_the_vendored_crds(canary: list[dict[str, Any]]) -> None:
    argo = [o for o in canary if o["apiVersion"] == "argoproj.io/v1alpha1"]
    assert {o["kind"] for o in argo} == {"Rollout", "AnalysisTemplate"}
    errors = [e for o in argo for e in argo_errors(o)]
    assert not errors, "\n".join(errors)
    readme = (SCHEMAS / "README.md").read_text()
    for name in ARGO_SCHEMA_FILES.values():
        head = (SCHEMAS / name).read_text().split("properties:", 1)[0]
        commit = re.search(r"commit ([0-9a-f]{40})", head)
        assert commit and commit.group(1) in readme, name
    assert "v1.7.2" in readme


def test_broken_argo_manifests_are_caught(canary: list[dict[str, Any]]) -> None:
    rollout = copy.deepcopy(find(canary, "Rollout", DEPLOYMENT))
    assert argo_errors(rollout) == []
    rollout["spec"]["strategy"]["canary"]["steps"][0] = {"setWieght": 10}  # misspelt
    rollout["spec"]["strategy"]["canary"]["steps"][1]["pause"]["duration"] = 1.5  # wrong type
    rollout["spec"]["template"] = {"spec": {}}  # not copied: plantdx uses workloadRef
    rollout["metadata"]["labelz"] = {}
    assert len(argo_errors(rollout)) == 4, argo_errors(rollout)
    tmpl = copy.deepcopy(find(canary, "AnalysisTemplate", TEMPLATE))
    tmpl["spec"]["metrics"][0]["successCondtion"] = "result[0] < 1"
    tmpl["spec"]["metrics"][1]["provider"] = {"datadog": {"query": "x"}}
    tmpl["spec"]["metrics"][2]["provider"]["prometheus"]["adress"] = "http://x"
    del tmpl["spec"]["metrics"][3]["name"]
    assert len(argo_errors(tmpl)) == 4, argo_errors(tmpl)


@pytest.mark.parametrize("check", sorted(set(SERVING_CHECKS) - {"selectors"}))
def test_serving_policy_holds_for_the_rollout_template(
    canary: list[dict[str, Any]], check: str
) -> None:
    """The Rollout runs the Deployment's pod template: the serving policies still hold."""
    assert SERVING_CHECKS[check](copy.deepcopy(canary)) == []


# --- wiring ---------------------------------------------------------------------------------
def test_rollout_wiring(canary: list[dict[str, Any]]) -> None:
    rollout = find(canary, "Rollout", DEPLOYMENT)
    spec = rollout["spec"]
    dep = find(canary, "Deployment", spec["workloadRef"]["name"])
    assert spec["workloadRef"]["kind"] == "Deployment"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"] == dep["spec"]["selector"]
    assert selector_matches(spec["selector"], pod_labels)
    canary_spec = spec["strategy"]["canary"]
    for key in ("canaryService", "stableService"):
        svc = find(canary, "Service", canary_spec[key])
        assert selector_matches(svc["spec"]["selector"], pod_labels), key
    # Clients' Service keeps selecting both sides (the split by replica count).
    assert selector_matches(find(canary, "Service", DEPLOYMENT)["spec"]["selector"], pod_labels)
    steps = canary_spec["steps"]
    weights = [s["setWeight"] for s in steps if "setWeight" in s]
    assert weights == sorted(weights) and weights[0] <= 25 and weights[-1] == 100
    template = find(canary, "AnalysisTemplate", TEMPLATE)
    needed = {a["name"] for a in template["spec"]["args"] if "value" not in a}
    analyses = [s["analysis"] for s in steps if "analysis" in s]
    assert len(analyses) >= 2
    for i, step in enumerate(steps[:-1]):
        if "setWeight" in step and step["setWeight"] < 100:
            assert any("analysis" in s for s in steps[i + 1 :]), f"weight {step['setWeight']}"
    for a in analyses:
        assert [t["templateName"] for t in a["templates"]] == [TEMPLATE]
        given = {arg["name"]: arg for arg in a["args"]}
        assert needed <= set(given), needed - set(given)
        assert given["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
        assert given["stable-hash"]["valueFrom"] == {"podTemplateHashValue": "Stable"}
    placeholders = set()
    for m in template["spec"]["metrics"]:
        assert m.get("successCondition") and "failureLimit" in m, m["name"]
        prom = m["provider"]["prometheus"]
        placeholders |= set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", prom["query"]))
        placeholders |= set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", prom["address"]))
        # Every query reads the canary pods only (and the stable ones for a comparison).
        for selector in re.findall(r"\{[^{}]*\}", re.sub(r"\{\{[^}]*\}\}", "X", prom["query"])):
            if "__name__" not in selector and "=" in selector:
                assert "rollouts_pod_template_hash" in selector, (m["name"], selector)
    assert placeholders == {a["name"] for a in template["spec"]["args"]}


# --- the queries ----------------------------------------------------------------------------
def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not found (Debian/Ubuntu: apt-get install prometheus)")
    return exe


def test_analysis_queries_use_known_metric_names(canary: list[dict[str, Any]]) -> None:
    used = set().union(*(metric_names(q) for q in analysis_queries(canary).values()))
    assert {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "plantdx_abstentions_total",
        "plantdx_predictions_total",
        "nv_inference_request_summary_us",
    } <= used
    assert used <= KNOWN_METRICS, used - KNOWN_METRICS
    assert metric_names("sum(rate(nv_inference_requests_total[5m]))") - KNOWN_METRICS


def test_analysis_queries_compute_what_they_claim(
    canary: list[dict[str, Any]], tmp_path: Path
) -> None:
    """`promtool test rules` evaluates each query on synthetic canary and stable series."""
    promtool = _promtool()
    queries = {k: fill_args(v, SAMPLE_ARGS) for k, v in analysis_queries(canary).items()}
    rules = tmp_path / "empty.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": []}))
    cases = yaml.safe_load((Path(__file__).parent / "canary_analysis.promtest.yaml").read_text())
    for case in cases["tests"]:
        for t in case["promql_expr_test"]:
            t["expr"] = queries[t.pop("metric")]
    cases["rule_files"] = [str(rules)]
    path = tmp_path / "analysis.test.yaml"
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    proc = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The same cases with a wrong expectation fail: the test can fail.
    cases["tests"][0]["promql_expr_test"][0]["exp_samples"][0]["value"] = 0.5
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    proc = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0


@pytest.mark.triton
def test_analysis_metric_names_exist_in_live_scrape(
    canary: list[dict[str, Any]], triton_metrics_text: str
) -> None:
    """Every metric and label value the analysis selects appears in a real Triton scrape
    (the pod-template hash label is added by Prometheus at scrape time, not by Triton)."""
    scraped = scrape_metric_names(triton_metrics_text)
    assert "nv_inference_request_success" in scraped, "not a Triton scrape"
    queries = analysis_queries(canary)
    used = set().union(*(metric_names(q) for q in queries.values()))
    assert not used - scraped, f"absent from a live scrape: {sorted(used - scraped)}"
    for model in set(re.findall(r'model="([^"]+)"', " ".join(queries.values()))):
        assert f'model="{model}"' in triton_metrics_text, model
    assert re.search(
        r'nv_inference_request_summary_us\{[^}]*model="plantdx"[^}]*quantile="0.99"',
        triton_metrics_text,
    ) or re.search(
        r'nv_inference_request_summary_us\{[^}]*quantile="0.99"[^}]*model="plantdx"',
        triton_metrics_text,
    )
    for name in ("plantdx_abstentions_total", "plantdx_predictions_total"):
        assert re.search(rf'^{name}\{{[^}}]*version="1"', triton_metrics_text, re.M), name
