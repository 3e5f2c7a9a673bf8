"""Monitoring: the rule file equals the PrometheusRule, `promtool check rules` and `promtool test
rules` pass (skipped without promtool), dashboard and adapter queries parse, and every PromQL
expression reads only known metric names; the `triton`-marked test checks those names against a
live Triton scrape. Nothing here shows that the GPU metrics appear."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s_manifests import DOCKER, K8S, OVERLAYS, SCRIPTS, find
from k8s_metrics import (
    GPU_ONLY_METRICS,
    KNOWN_METRICS,
    MANIFEST_METRICS,
    PLATFORM_METRICS,
    adapter_config,
    adapter_to_promql,
    check_metric_names,
    dashboard_expressions,
    grafana_to_promql,
    manifest_metric_names,
    metric_names,
    recorded_names,
    rule_groups,
    run_promtool,
    scrape_metric_names,
)


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
    proc = run_promtool(promtool, "check", "rules", rules)
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
    proc = run_promtool(promtool, "test", "rules", test_file)
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
    proc = run_promtool(promtool, "check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "bad", "rules": [{"record": "a:b:c", "expr": "sum(rate(x[5m])"}]}]}
        )
    )
    assert run_promtool(promtool, "check", "rules", path).returncode != 0


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
