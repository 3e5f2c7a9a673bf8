"""Every plantdx_* metric knows its version, on a real Triton server: version 1 (exported before
versions were sent, so its preprocess emits [temperature, threshold]) serves, version 2 is
hot-loaded beside the same postprocess, then version 1 is pinned again; the scrape counts each
version's predictions, confidences, abstentions and rejections exactly as they were sent."""

from __future__ import annotations

import re
import secrets
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.decision import DECISION_FILENAME, DecisionRule

from helpers.backend_stub import LEGACY_PREPROCESS
from helpers.common import onnx_probabilities
from helpers.serving import alt_checkpoint, infer, start_server, try_infer

pytestmark = pytest.mark.triton

KEY = "pdx-" + secrets.token_hex(12)
SAMPLE = re.compile(r"^(plantdx_\w+)\{([^}]*)\} (\S+)$")

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Series]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = str(resp.read().decode())
    series: Series = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            series[m.group(1), labels] = float(m.group(3))
    return text, series


def total(series: Series, name: str, **want: str) -> float:
    return sum(v for (n, labels), v in series.items() if n == name and set(want.items()) <= labels)


def settled(url: str, expected: dict[str, int]) -> Series:
    """The scrape once every version's confidence count reached what was sent (custom metrics
    are published about once a second)."""
    deadline = time.monotonic() + 15
    while True:
        _, series = scrape(url)
        counts = {
            v: total(series, "plantdx_prediction_confidence_count", version=v) for v in expected
        }
        if counts == expected or time.monotonic() > deadline:
            return series
        time.sleep(0.3)


def expected_counts(repo: Path, version: int, images: list[bytes]) -> tuple[Counter[str], int]:
    """Top-1 classes and abstentions of `images` under `version`, in-process."""
    labels = [s for s in (repo / "postprocess" / "labels.txt").read_text().splitlines() if s]
    probs = onnx_probabilities(repo, images, version=version)
    rule = DecisionRule.load(repo / "preprocess" / str(version) / DECISION_FILENAME)
    classes = Counter(labels[int(i)] for i in probs.argmax(axis=1))
    return classes, int((probs.max(axis=1) < rule.threshold).sum())


def send(url: str, images: list[bytes]) -> None:
    """Several images in one request, then one per request: two dynamic batch shapes."""
    infer(url, images[:-2])
    for image in images[-2:]:
        infer(url, [image])


def check_version(series: Series, repo: Path, version: int, images: list[bytes]) -> None:
    v = str(version)
    classes, abstained = expected_counts(repo, version, images)
    got = {
        dict(labels)["class"]: value
        for (name, labels), value in series.items()
        if name == "plantdx_predictions_total" and ("version", v) in labels
    }
    assert got == classes, f"version {v}: {got} != {classes}"
    assert total(series, "plantdx_prediction_confidence_count", version=v) == len(images)
    buckets = total(series, "plantdx_prediction_confidence_bucket", version=v, le="+Inf")
    assert buckets == len(images)
    assert total(series, "plantdx_abstentions_total", version=v) == abstained


@pytest.fixture(scope="module")
def setup(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from plantdx.export import ExportConfig, export

    tmp = tmp_path_factory.mktemp("metrics-versions")
    repo = tmp / "repo"
    export(ExportConfig(source=str(tiny_run / "best.pt"), repository=str(repo)))
    # What an export made before versions were sent left in preprocess/1.
    (repo / "preprocess" / "1" / "model.py").write_text(LEGACY_PREPROCESS.read_text())
    server = start_server(repo, tmp / "triton.log", admin_key=KEY)
    try:
        yield server, repo, alt_checkpoint(tiny_run / "best.pt", tmp / "alt.pt")
    finally:
        server.stop()


def test_each_version_counts_what_was_sent_to_it(setup: Any, mini_photos: list[Path]) -> None:
    from plantdx.export import ExportConfig, export
    from plantdx.serving.control import ModelControl

    server, repo, alt = setup
    photos = [p.read_bytes() for p in mini_photos]
    to_v1, to_v2, to_v1_again = photos[:7], photos[7:13], photos[13:17]
    assert "CALIBRATION_FIELDS" not in (repo / "preprocess/1/model.py").read_text()

    send(server.grpc_url, to_v1)
    series = settled(server.metrics_url, {"1": len(to_v1)})
    check_version(series, repo, 1, to_v1)  # named by its rule, though it sends no version
    assert not [k for k in series if ("version", "2") in k[1] or ("version", "unknown") in k[1]]

    assert export(ExportConfig(source=str(alt), repository=str(repo))).version == 2
    with ModelControl(server.http_url, key=KEY) as control:
        control.load()  # hot update: preprocess and classifier 2; the postprocess stays
    send(server.grpc_url, to_v2)
    _, error = try_infer(server.grpc_url, b"not a photo at all")
    assert error and "invalid image" in error
    series = settled(server.metrics_url, {"1": len(to_v1), "2": len(to_v2)})
    check_version(series, repo, 2, to_v2)
    check_version(series, repo, 1, to_v1)  # still there, unchanged
    v1, v2 = expected_counts(repo, 1, to_v2)[0], expected_counts(repo, 2, to_v2)[0]
    assert v1 != v2, "the two versions should answer these photos differently"
    assert total(series, "plantdx_preprocess_rejections_total", version="2") == 1
    # Every series has a version, except the zero rejection counters the old preprocess 1 made
    # (its model.py predates the label; Triton keeps an unloaded model's series).
    text, _ = scrape(server.metrics_url)
    samples = [x for x in text.splitlines() if x.startswith("plantdx_")]
    unversioned = [x for x in samples if 'version="' not in x]
    assert len(samples) > len(unversioned) > 0
    assert all(
        x.startswith('plantdx_preprocess_rejections_total{model="preprocess",reason=')
        and x.endswith("} 0")
        for x in unversioned
    ), unversioned

    with ModelControl(server.http_url, key=KEY) as control:
        control.pin(1)  # rollback: version 1 serves again, its counters continue
    send(server.grpc_url, to_v1_again)
    series = settled(server.metrics_url, {"1": len(to_v1) + len(to_v1_again), "2": len(to_v2)})
    check_version(series, repo, 1, to_v1 + to_v1_again)
    check_version(series, repo, 2, to_v2)
    assert np.isclose(
        total(series, "plantdx_prediction_confidence_count"),
        len(to_v1) + len(to_v2) + len(to_v1_again),
    )
