"""The drift rules and their reference: every loaded version's preprocess publishes its
reference.json as gauges (plantdx.reference_series), which the plantdx.drift group pools and
compares with the served histograms. Unit-tested with `promtool test rules` on synthetic series
(a version that drifts fires the alerts, one that does not stays quiet, and the rules' PSI
equals plantdx.reference.psi), with the references as scraped gauges and, for versions exported
before the servers published them, as `plantdx drift rules` writes them; on the real server, the
gauges equal the exported reference, and a new export's reference is published when its version
loads, with nothing regenerated."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

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

ROOT = Path(__file__).resolve().parents[2]
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


def _gauges(repo: Path) -> list[dict[str, str]]:
    """The reference gauges two pods serving each version publish (the same values twice)."""
    from plantdx.reference_series import (
        ABSTENTION_METRIC,
        SHARE_METRIC,
        abstention_series,
        share_series,
    )

    series = []
    for v in ("1", "2"):
        ref = Reference.load(repo / "classifier" / v / REFERENCE_FILENAME)
        for pod in (f"p{v}", f"q{v}"):
            base = {"namespace": "plantdx", "pod": pod, "model": "preprocess", "version": v}
            for name, found in (
                (SHARE_METRIC, share_series(ref, base)),
                (ABSTENTION_METRIC, abstention_series(ref, base)),
            ):
                for labels, value in found:
                    text = ", ".join(f'{k}="{x}"' for k, x in labels.items() if x != "")
                    series.append(
                        {"series": f"{name}{{{text}}}", "values": f"{value!r}+0x{MINUTES}"}
                    )
    return series


def _test_file(tmp_path: Path, references: Path | None, repo: Path) -> Path:
    """The promtool test: the references as gauges (`references` None) or as a rule file."""
    series = [
        *_histogram(f"{METRIC_PREFIX}brightness", "1", BRIGHTNESS, EDGES["brightness"], False),
        *_histogram(f"{METRIC_PREFIX}brightness", "2", DARK, EDGES["brightness"], True),
        *_histogram("plantdx_prediction_confidence", "1", CONF, CONFIDENCE_EDGES, False),
        *_histogram("plantdx_prediction_confidence", "2", UNSURE, CONFIDENCE_EDGES, True),
    ]
    if references is None:
        series += _gauges(repo)
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
        "rule_files": [str(RULES), *([str(references)] if references else [])],
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


def test_reference_series_and_the_rule_file(tmp_path: Path, promtool: str) -> None:
    from plantdx.drift.rules import ABSTENTION_SHARE, SHARE, rules_text
    from plantdx.reference_series import share_series

    repo = _repo(tmp_path)
    ref = Reference.load(repo / "classifier" / "1" / REFERENCE_FILENAME)
    shares = share_series(ref, {"version": "1"})
    assert len(shares) == len(BRIGHTNESS) + len(CONF) + 2
    (first, _), (second, _) = [x for x in shares if x[0]["statistic"] == "brightness"][:2]
    assert first["below"] == "" and second["below"] == "30"
    assert all(lab["below"] == "" for lab, _ in shares if lab["statistic"] == CLASS)
    assert sum(v for lab, v in shares if lab["statistic"] == "brightness") == pytest.approx(1.0)

    # The rule file for versions whose servers do not publish their reference.
    text, missing = rules_text(repo)
    assert missing == ["3"]
    doc = yaml.safe_load(text)
    rules = doc["groups"][0]["rules"]
    recorded = [r for r in rules if r["record"] == SHARE and r["labels"]["version"] == "1"]
    assert len(recorded) == len(shares)
    assert "below" not in recorded[0]["labels"] and "namespace" not in recorded[0]["labels"]
    assert {r["expr"] for r in rules if r["record"] == ABSTENTION_SHARE} == {"vector(0.1)"}
    path = tmp_path / "reference.rules.yaml"
    path.write_text(text)
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = yaml.safe_load(rules_text(_repo(tmp_path / "k"), kubernetes=True)[0])
    assert manifest["kind"] == "PrometheusRule"
    labels = manifest["spec"]["groups"][0]["rules"][0]["labels"]
    assert labels["namespace"] == "plantdx"  # the servers' namespace, which the rules match on


def test_reference_gauges_through_the_metrics_api(tmp_path: Path) -> None:
    """What the served preprocess does at load: its version's reference (its own copy, else the
    classifier's beside it) as gauges, kept alive with the model; none without a reference."""
    from plantdx.reference_series import ABSTENTION_METRIC, SHARE_METRIC, publish_reference

    class Api:
        class MetricFamily:
            GAUGE = "gauge"
            made: ClassVar[dict[str, Any]] = {}

            def __init__(self, name: str, description: str, kind: str) -> None:
                assert kind == "gauge" and description
                self.name = name
                self.metrics: list[Any] = []
                Api.MetricFamily.made[name] = self

            def Metric(self, labels: dict[str, str]) -> Api.Gauge:
                metric = Api.Gauge(labels)
                self.metrics.append(metric)
                return metric

        class Gauge:
            def __init__(self, labels: dict[str, str]) -> None:
                self.labels, self.value = labels, float("nan")

            def set(self, value: float) -> None:
                self.value = value

    repo = _repo(tmp_path)
    (repo / "preprocess" / "1").mkdir(parents=True)
    labels = {"model": "preprocess", "version": "1"}
    keep = publish_reference(Api, repo / "preprocess" / "1", labels)
    families = Api.MetricFamily.made
    assert set(families) == {SHARE_METRIC, ABSTENTION_METRIC}
    assert all(f in keep for f in families.values())
    shares = families[SHARE_METRIC].metrics
    ref = Reference.load(repo / "classifier" / "1" / REFERENCE_FILENAME)
    bright = [m for m in shares if m.labels["statistic"] == "brightness"]
    assert [m.value for m in bright] == pytest.approx(ref.distributions["brightness"].shares())
    assert bright[1].labels == {**labels, "statistic": "brightness", "bucket": "50", "below": "30"}
    assert [m.value for m in families[ABSTENTION_METRIC].metrics] == [0.1]
    # A copy beside the preprocess wins; no reference at all publishes nothing.
    other = Reference({CLASS: Distribution(["a", "b"], [3, 1])})
    other.save(repo / "preprocess" / "1" / REFERENCE_FILENAME)
    Api.MetricFamily.made = {}
    publish_reference(Api, repo / "preprocess" / "1", labels)
    assert [m.value for m in Api.MetricFamily.made[SHARE_METRIC].metrics] == [0.75, 0.25]
    (repo / "preprocess" / "3").mkdir()
    assert publish_reference(Api, repo / "preprocess" / "3", labels) == []


@pytest.mark.parametrize("where", ["gauges", "rule file"])
def test_promtool_drift_fires_only_on_the_drifting_version(
    tmp_path: Path, promtool: str, where: str
) -> None:
    """The references as the servers publish them (two pods per version), or as `plantdx drift
    rules --namespace plantdx` writes them for versions whose servers do not."""
    from plantdx.drift.rules import rules_text

    repo = _repo(tmp_path)
    references = None
    if where == "rule file":
        references = tmp_path / "reference.rules.yaml"
        references.write_text(rules_text(repo, namespace="plantdx")[0])
    proc = subprocess.run(
        [promtool, "test", "rules", str(_test_file(tmp_path, references, repo))],
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
        # A sample of the photos sent (drift_sample_rate); the session's server has also served
        # other tests, so the count is checked against its own +Inf bucket, not a number.
        count = re.search(
            rf"^{METRIC_PREFIX}{name}_count\{{[^}}]*\}} (\S+)", triton_metrics_text, re.M
        )
        assert count and float(found[-1][1]) == float(count.group(1))


def _scraped_references(text: str) -> dict[tuple[str, ...], float]:
    """(version, statistic, bucket, below) → value of every plantdx_reference_share line."""
    out = {}
    for labels, value in re.findall(r"^plantdx_reference_share\{([^}]*)\} (\S+)", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = tuple(found.get(k, "") for k in ("version", "statistic", "bucket", "below"))
        out[key] = float(value)
    return out


def _expected(repo: Path, version: str) -> dict[tuple[str, ...], float]:
    from plantdx.reference_series import share_series

    ref = Reference.load(repo / "classifier" / version / REFERENCE_FILENAME)
    return {
        (version, lab["statistic"], lab["bucket"], lab["below"]): share
        for lab, share in share_series(ref, {"version": version})
    }


@pytest.mark.triton
def test_served_reference_gauges_equal_the_exported_reference(
    triton_metrics_text: str, tiny_repo: Path
) -> None:
    scraped = _scraped_references(triton_metrics_text)
    expected = _expected(tiny_repo, "1")
    assert scraped.keys() == expected.keys()
    for key, share in expected.items():
        assert scraped[key] == pytest.approx(share, abs=1e-6), key
    ref = Reference.load(tiny_repo / "classifier" / "1" / REFERENCE_FILENAME)
    abstention = re.search(
        r'^plantdx_reference_abstention_share\{[^}]*version="1"[^}]*\} (\S+)',
        triton_metrics_text,
        re.M,
    )
    assert abstention and ref.abstention_share is not None
    assert float(abstention.group(1)) == pytest.approx(ref.abstention_share, abs=1e-6)


@pytest.mark.triton
def test_a_new_export_publishes_its_reference_when_it_loads(
    tiny_repo: Path, tiny_run: Path, mini_dir: Path, tmp_path: Path
) -> None:
    """Export version 2 into a served repository and load it: the server publishes version 2's
    reference, with nothing regenerated or applied by hand (version 1's stays in the scrape, as
    Triton 2.51 keeps an unloaded Python model's metrics: plantdx.reference_series)."""
    import urllib.request

    from plantdx.export import ExportConfig, export
    from plantdx.serving.control import ModelControl

    from helpers.serving import alt_checkpoint, copy_repo, start_server

    repo = copy_repo(tiny_repo, tmp_path / "repo")
    server = start_server(repo, tmp_path / "triton.log")

    def scrape() -> dict[tuple[str, ...], float]:
        with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
            return _scraped_references(resp.read().decode())

    try:
        assert {k[0] for k in scrape()} == {"1"}
        alt = alt_checkpoint(tiny_run / "best.pt", tmp_path / "alt.pt")
        done = export(ExportConfig(source=str(alt), repository=str(repo), check_data=str(mini_dir)))
        assert done.version == 2
        # A copy beside the preprocess that publishes it (a Triton reading s3:// itself copies
        # each model apart).
        copy = repo / "preprocess" / "2" / REFERENCE_FILENAME
        assert copy.read_bytes() == (repo / "classifier" / "2" / REFERENCE_FILENAME).read_bytes()
        expected = _expected(repo, "2")
        assert expected != {("2", *k[1:]): v for k, v in _expected(repo, "1").items()}
        with ModelControl(server.http_url) as control:
            control.load("plantdx")  # the repository's policy: the latest version, 2
        deadline = time.monotonic() + 30
        while "2" not in {k[0] for k in scrape()} and time.monotonic() < deadline:
            time.sleep(0.5)
        scraped = scrape()
        assert {k for k in scraped if k[0] == "2"} == expected.keys()
        for key, share in {**expected, **_expected(repo, "1")}.items():
            assert scraped[key] == pytest.approx(share, abs=1e-6), key
    finally:
        server.stop()
