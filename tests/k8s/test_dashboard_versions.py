"""The dashboard's per-version row and the per-version rules: every query keeps `version`, and
every metric they read is in a live Triton scrape with a `version` label."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "k8s" / "monitoring" / "grafana-dashboard.json"
RULES = ROOT / "docker" / "prometheus" / "plantdx.rules.yaml"
METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[)")


def version_row() -> list[dict[str, Any]]:
    """The panels after the row titled "Per model version", up to the next row."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    start = next(i for i, p in enumerate(panels) if p["title"] == "Per model version")
    assert panels[start]["type"] == "row"
    row = []
    for p in panels[start + 1 :]:
        if p["type"] == "row":
            break
        row.append(p)
    return row


def test_every_per_version_panel_keeps_the_version() -> None:
    row = version_row()
    titles = " ".join(p["title"] for p in row).lower()
    for needed in ("confidence", "abstention", "class", "latency"):
        assert needed in titles, f"no per-version {needed} panel"
    for p in row:
        for t in p["targets"]:
            assert "by (version" in t["expr"], (p["title"], t["expr"])
            assert "{{version}}" in t["legendFormat"], p["title"]
    latency = next(p for p in row if "latency" in p["title"].lower())
    assert 'model="classifier"' in latency["targets"][0]["expr"]
    confidence = next(p for p in row if "confidence" in p["title"].lower())
    quantiles = {
        re.search(r"histogram_quantile\(([\d.]+)", t["expr"]).group(1)
        for t in confidence["targets"]
    }  # type: ignore[union-attr]
    assert quantiles == {"0.5", "0.1"}


def test_rules_by_version_keep_the_label_and_pooled_rules_drop_it() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    by_version = [r for r in rules if r.get("record", "").endswith("_by_version:rate5m")]
    assert len(by_version) == 3
    for r in by_version:
        assert "by (namespace, version)" in r["expr"] or ":predictions_by_version:" in r["expr"]
    # Drift is judged per version (each against its own reference): those rules keep it.
    groups = yaml.safe_load(RULES.read_text())["groups"]
    drift = [r for g in groups if "drift" in g["name"] for r in g["rules"]]
    assert drift
    for r in rules:  # every other rule on plantdx_* series aggregates the version away
        if "plantdx_" in r["expr"] and r not in by_version and r not in drift:
            assert "sum by (namespace" in r["expr"] and "version" not in r["expr"], r


@pytest.mark.triton
def test_per_version_panels_read_series_that_carry_the_version(triton_metrics_text: str) -> None:
    versioned = {
        m.group(1)
        for line in triton_metrics_text.splitlines()
        if 'version="' in line and (m := re.match(r"([a-z_][a-z0-9_]*)\{", line))
    }
    for p in version_row():
        for t in p["targets"]:
            names = set(METRIC.findall(t["expr"]))
            assert names, t["expr"]
            for name in names:
                assert name in versioned, f"{p['title']}: {name} has no version in a live scrape"
