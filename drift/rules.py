"""The references as a Prometheus rule file, for versions whose servers do not publish them:
`plantdx drift rules --repository REPO`.

Every version exported now publishes its own reference while it is loaded (its preprocess sets
the gauges of plantdx.reference_series), so the drift rules (docker/prometheus/plantdx.rules.yaml,
group `plantdx.drift`) find it with no file to regenerate. A version exported before that has
the reference (classifier/N/reference.json) but a preprocess that does not publish it: this
writes the same series, with the same labels, as constant recording rules to load once beside
the drift rules (those versions never change). Where both exist the rules pool them (`max`).

    plantdx_reference_share{version, statistic, bucket, below[, namespace]}
    plantdx_reference_abstention_share{version[, namespace]}

`namespace` is the namespace the servers run in (Kubernetes), which the drift rules match on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from plantdx.exceptions import RepositoryError
from plantdx.reference import Reference
from plantdx.reference_series import (
    ABSTENTION_METRIC,
    SHARE_METRIC,
    abstention_series,
    share_series,
)

from .references import repository_references

SHARE = SHARE_METRIC
ABSTENTION_SHARE = ABSTENTION_METRIC
GROUP = "plantdx.reference"
RESOURCE_NAME = "plantdx-drift-reference"
DEFAULT_NAMESPACE = "plantdx"  # the namespace of k8s/base


def _value(x: float) -> str:
    return f"vector({round(float(x), 6)!r})"


def _labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v != ""}  # Prometheus drops empty labels


def version_rules(
    version: str, ref: Reference, namespace: str | None = None
) -> list[dict[str, Any]]:
    base = {"version": version, **({"namespace": namespace} if namespace else {})}
    rules = [
        {"record": SHARE, "expr": _value(share), "labels": _labels(labels)}
        for labels, share in share_series(ref, base)
    ]
    rules += [
        {"record": ABSTENTION_SHARE, "expr": _value(share), "labels": _labels(labels)}
        for labels, share in abstention_series(ref, base)
    ]
    return rules


def reference_rules(
    repo: str | Path, namespace: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """(the rule file, the versions left out for having no reference)."""
    refs = repository_references(repo)
    rules: list[dict[str, Any]] = []
    missing = []
    for version, ref in refs.items():
        if ref is None:
            missing.append(version)
        else:
            rules.extend(version_rules(version, ref, namespace))
    if not rules:
        raise RepositoryError(
            f"no version of {repo} has a drift reference (reference.json): export with the "
            "run's split.json beside the checkpoint, or with --check-data DIR"
        )
    return {"groups": [{"name": GROUP, "interval": "5m", "rules": rules}]}, missing


def rules_text(
    repo: str | Path, *, kubernetes: bool = False, namespace: str | None = None
) -> tuple[str, list[str]]:
    """The rule file as YAML (a PrometheusRule manifest with `kubernetes`, labelled with the
    servers' `namespace`, default plantdx), and the versions without a reference."""
    if kubernetes and namespace is None:
        namespace = DEFAULT_NAMESPACE
    doc, missing = reference_rules(repo, namespace)
    header = (
        f"# Drift references of {Path(repo).resolve()}, written by `plantdx drift rules`, for\n"
        "# versions whose servers do not publish them (exported before they did); load it once\n"
        "# beside the plantdx.drift rules. Newer versions publish their own.\n"
    )
    if kubernetes:
        doc = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {
                "name": RESOURCE_NAME,
                "labels": {
                    "app.kubernetes.io/name": "plantdx",
                    "app.kubernetes.io/component": "drift-reference",
                    "release": "kube-prometheus-stack",
                },
            },
            "spec": doc,
        }
    return header + yaml.safe_dump(doc, sort_keys=False), missing
