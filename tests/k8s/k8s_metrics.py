"""The metric names the manifests may read and the PromQL they hold: the known series,
name extraction, the rule groups, adapter and dashboard queries, and running promtool."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from k8s_manifests import find, find_all

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


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
