"""A version's drift reference as Prometheus series, published by the server that serves it.

The served preprocess of version N reads N's reference (`reference.json`, written by export
beside the classifier version) when it loads and publishes every share as a gauge through
Triton's custom metrics, on the metrics port Prometheus already scrapes:

    plantdx_reference_share{model, version, statistic, bucket, below}   the share of a bucket
    plantdx_reference_abstention_share{model, version}                  the abstention share

`bucket` is the bucket's `le` label (a class name for `statistic="class"`); `below` is the
`le` of the bucket under it, empty for the first bucket and for classes. The recording rules
(group `plantdx.drift`, docker/prometheus/plantdx.rules.yaml) pool them per namespace and
version into `plantdx:reference_share:max` and `plantdx:reference_abstention_share:max` and
compare the live histograms with them: every export's reference reaches Prometheus when a
server loads the version, with no rule file to regenerate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .reference import CLASS, REFERENCE_FILENAME, Reference

SHARE_METRIC = "plantdx_reference_share"
ABSTENTION_METRIC = "plantdx_reference_abstention_share"
CLASSIFIER_MODEL = "classifier"

Series = list[tuple[dict[str, str], float]]


def find_reference(version_dir: str | Path) -> Path | None:
    """The reference of the version whose preprocess lives in `version_dir`
    (REPO/preprocess/N): its own copy, else the classifier's (REPO/classifier/N), which a
    repository on a file system or a following server's view holds beside it."""
    own = Path(version_dir) / REFERENCE_FILENAME
    if own.is_file():
        return own
    version_dir = Path(version_dir)
    sibling = version_dir.parent.parent / CLASSIFIER_MODEL / version_dir.name / REFERENCE_FILENAME
    return sibling if sibling.is_file() else None


def share_series(ref: Reference, labels: dict[str, str]) -> Series:
    """(labels, share) of every bucket of every distribution, `labels` added to each."""
    out: Series = []
    for statistic, dist in ref.distributions.items():
        for i, (bucket, share) in enumerate(zip(dist.buckets, dist.shares(), strict=True)):
            below = dist.buckets[i - 1] if statistic != CLASS and i > 0 else ""
            out.append(
                ({**labels, "statistic": statistic, "bucket": bucket, "below": below}, share)
            )
    return out


def abstention_series(ref: Reference, labels: dict[str, str]) -> Series:
    return [] if ref.abstention_share is None else [(dict(labels), ref.abstention_share)]


def publish_reference(metrics_api: Any, version_dir: str | Path, labels: dict[str, str]) -> list:
    """Set the gauges of the reference found for `version_dir` through a Python backend's
    metrics API (`triton_python_backend_utils`); returns the families and metrics, to be kept
    alive as long as the model ([] when the version has no reference).

    They are never released: Triton 2.51 frees a Python model's metrics only with their family,
    and the family is shared by every loaded version (releasing it drops all their series). An
    unloaded version's gauges therefore stay in the scrape until the server restarts, as its
    other plantdx_* series do; with no new traffic for that version the drift rules find fewer
    than their 200 images within 6 hours and stay quiet about it."""
    path = find_reference(version_dir)
    if path is None:
        return []
    ref = Reference.load(path)
    keep: list = []
    for name, description, series in (
        (SHARE_METRIC, "Share of a bucket in the version's drift reference", share_series),
        (ABSTENTION_METRIC, "Abstention share in the version's drift reference", abstention_series),
    ):
        values = series(ref, labels)
        if not values:
            continue
        family = metrics_api.MetricFamily(
            name=name, description=description, kind=metrics_api.MetricFamily.GAUGE
        )
        keep.append(family)
        for metric_labels, value in values:
            metric = family.Metric(labels=metric_labels)
            metric.set(float(value))
            keep.append(metric)
    return keep
