"""The drift rules: `plantdx drift rules` output with the static plantdx.drift group, unit-tested
with `promtool test rules` on synthetic series (a version that drifts fires the alerts, one
that does not stays quiet, and the rules' PSI equals plantdx.reference.psi), and the served
histograms' names and buckets in a live scrape of the real server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from plantdx.imagestats import EDGES, METRIC_PREFIX, bucket_labels
from plantdx.reference import (
    CLASS,
    CONFIDENCE,
    CONFIDENCE_EDGES,
    REFERENCE_FILENAME,
    Distribution,
    Reference,
    psi,
)

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docker" / "prometheus" / "plantdx.rules.yaml"
MINUTES = 8 * 60

BRIGHTNESS = [0, 0, 1, 2, 4, 6, 4, 2, 1, 0, 0, 0]  # per minute, per bucket
DARK = [1, 2, 4, 6, 4, 2, 1, 0, 0, 0, 0, 0]
CONF = [0, 0, 0, 0, 1, 1, 2, 3, 4, 4, 3, 2]
UNSURE = [2, 4, 5, 4, 2, 1, 1, 1, 0, 0, 0, 0]


def _repo(tmp_path: Path) -> Path:
    ref = Reference(
        {
            "brightness": Distribution.histogram("brightness", BRIGHTNESS),
            CONFIDENCE: Distribution.histogram(CONFIDENCE, CONF),
            CLASS: Distribution(["a", "b"], [10, 10]),
        },
        abstention_share=0.1,
        abstention_n=20,
    )
    for v in ("1", "2", "3"):
        (tmp_path / "models" / "classifier" / v).mkdir(parents=True)
        if v != "3":  # exported without a reference
            ref.save(tmp_path / "models" / "classifier" / v / REFERENCE_FILENAME)
    return tmp_path / "models"


def _histogram(name: str, version: str, per_bucket: list[int], edges: Any, prom3: bool) -> list:
    """Cumulative bucket series growing by `per_bucket` every minute; `prom3` writes `le` as
    Prometheus 3 stores it (30 → "30.0")."""
    series = []
    total = 0
    for le, n in zip(bucket_labels(edges), per_bucket, strict=True):
        total += n
        if prom3 and le != "+Inf" and "." not in le:
            le += ".0"
        labels = f'namespace="plantdx", pod="p{version}", model="m", version="{version}", le="{le}"'
        series.append({"series": f"{name}_bucket{{{labels}}}", "values": f"0+{total}x{MINUTES}"})
    return series


def _counter(name: str, version: str, per_minute: int, **extra: str) -> dict[str, str]:
    labels = {"namespace": "plantdx", "pod": f"p{version}", "version": version, **extra}
    text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": f"0+{per_minute}x{MINUTES}"}


def _within(expr: str, value: float) -> dict[str, Any]:
    return {"expr": f"abs({expr} - {value!r}) < bool 0.001", "eval_time": "7h"}


def _test_file(tmp_path: Path, reference_rules: Path) -> Path:
    series = [
        *_histogram(f"{METRIC_PREFIX}brightness", "1", BRIGHTNESS, EDGES["brightness"], False),
        *_histogram(f"{METRIC_PREFIX}brightness", "2", DARK, EDGES["brightness"], True),
        *_histogram("plantdx_prediction_confidence", "1", CONF, CONFIDENCE_EDGES, False),
        *_histogram("plantdx_prediction_confidence", "2", UNSURE, CONFIDENCE_EDGES, True),
    ]
    for v, abstained in (("1", 2), ("2", 8)):
        series.append(_counter("plantdx_abstentions_total", v, abstained, model="plantdx"))
        for c in ("a", "b"):
            series.append(
                _counter("plantdx_predictions_total", v, 10, model="plantdx", **{"class": c})
            )
    ref_b = Distribution.histogram("brightness", BRIGHTNESS).shares()
    ref_c = Distribution.histogram(CONFIDENCE, CONF).shares()
    dark = Distribution.histogram("brightness", DARK).shares()
    unsure = Distribution.histogram(CONFIDENCE, UNSURE).shares()
    psi_expr = 'plantdx:drift_psi:6h{{version="{}", statistic="{}"}}'

    def ones(expr: str) -> dict[str, Any]:
        return {**_within(expr[0], expr[1]), "exp_samples": [{"labels": "{}", "value": 1}]}

    checks = [
        (psi_expr.format("1", "brightness"), 0.0),
        (psi_expr.format("1", "confidence"), 0.0),
        (psi_expr.format("1", "class"), 0.0),
        (psi_expr.format("2", "brightness"), psi(ref_b, dark)),
        (psi_expr.format("2", "confidence"), psi(ref_c, unsure)),
    ]
    firing = [
        ("PlantdxInputDrift", {"statistic": "brightness"}),
        ("PlantdxConfidenceDrift", {"statistic": "confidence"}),
        ("PlantdxAbstentionDrift", {}),
    ]
    alerts = 'ALERTS{alertstate="firing", alertname=~"Plantdx.*Drift"}'
    test = {
        "name": "version 2 drifts (darker photos, lower confidence, more abstentions); 1 does not",
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            *[{**ones((e, v)), "expr": f"sum({_within(e, v)['expr']})"} for e, v in checks],
            {
                "expr": alerts,
                "eval_time": "7h",
                "exp_samples": [
                    {
                        "labels": "ALERTS{"
                        + ", ".join(
                            f'{k}="{v}"'
                            for k, v in {
                                "alertname": name,
                                "alertstate": "firing",
                                "namespace": "plantdx",
                                "severity": "warning",
                                "version": "2",
                                **labels,
                            }.items()
                        )
                        + "}",
                        "value": 1,
                    }
                    for name, labels in firing
                ],
            },
            # Not yet: the drift has not lasted the alerts' hour.
            {"expr": alerts, "eval_time": "40m", "exp_samples": []},
        ],
    }
    doc = {
        "rule_files": [str(RULES), str(reference_rules)],
        "evaluation_interval": "1m",
        "tests": [test],
    }
    path = tmp_path / "drift.test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not found (Debian/Ubuntu: apt-get install prometheus)")
    return exe


def test_reference_rules(tmp_path: Path, promtool: str) -> None:
    from plantdx.drift.rules import ABSTENTION_SHARE, SHARE, rules_text

    text, missing = rules_text(_repo(tmp_path))
    assert missing == ["3"]
    doc = yaml.safe_load(text)
    rules = doc["groups"][0]["rules"]
    shares = [r for r in rules if r["record"] == SHARE and r["labels"]["version"] == "1"]
    assert len(shares) == len(BRIGHTNESS) + len(CONF) + 2
    first, second = [r for r in shares if r["labels"]["statistic"] == "brightness"][:2]
    assert "below" not in first["labels"] and second["labels"]["below"] == "30"
    assert all("below" not in r["labels"] for r in shares if r["labels"]["statistic"] == CLASS)
    assert {r["expr"] for r in rules if r["record"] == ABSTENTION_SHARE} == {"vector(0.1)"}
    path = tmp_path / "reference.rules.yaml"
    path.write_text(text)
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = yaml.safe_load(rules_text(_repo(tmp_path / "k"), kubernetes=True)[0])
    assert manifest["kind"] == "PrometheusRule" and manifest["spec"] == doc


def test_promtool_drift_fires_only_on_the_drifting_version(tmp_path: Path, promtool: str) -> None:
    from plantdx.drift.rules import rules_text

    reference = tmp_path / "reference.rules.yaml"
    reference.write_text(rules_text(_repo(tmp_path))[0])
    proc = subprocess.run(
        [promtool, "test", "rules", str(_test_file(tmp_path, reference))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_static_rules_use_the_python_thresholds() -> None:
    from plantdx.reference import ABSTENTION_DRIFT, PSI_DRIFT, PSI_EPSILON

    group = next(
        g for g in yaml.safe_load(RULES.read_text())["groups"] if g["name"] == "plantdx.drift"
    )
    text = yaml.safe_dump(group)
    alerts = {r["alert"]: r["expr"] for r in group["rules"] if "alert" in r}
    assert f"> {PSI_DRIFT}" in alerts["PlantdxInputDrift"]
    assert f"> {PSI_DRIFT}" in alerts["PlantdxConfidenceDrift"]
    assert f"> {ABSTENTION_DRIFT}" in alerts["PlantdxAbstentionDrift"]
    assert text.count(f"+ {PSI_EPSILON}") == 2
    for name in EDGES:  # every served histogram feeds the PSI
        assert f"{METRIC_PREFIX}{name}_bucket" in text


@pytest.mark.triton
def test_served_histograms_have_the_reference_buckets(triton_metrics_text: str) -> None:
    """A live scrape after traffic: one histogram per statistic, labelled with the version,
    whose `le` values are the reference's bucket labels (as the rules normalise them)."""
    for name, edges in EDGES.items():
        found = re.findall(
            rf"^{METRIC_PREFIX}{name}_bucket\{{([^}}]*)\}} (\S+)", triton_metrics_text, re.M
        )
        assert found, f"no {METRIC_PREFIX}{name} in the scrape"
        les = [re.search(r'le="([^"]+)"', labels).group(1) for labels, _ in found]  # type: ignore[union-attr]
        assert [re.sub(r"\.0$", "", le) for le in les] == bucket_labels(edges)
        assert all('version="1"' in labels for labels, _ in found)
        assert float(found[-1][1]) >= 4  # the photos the fixture sent
