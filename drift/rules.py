"""The references as Prometheus rules: `plantdx drift rules --repository REPO`.

Prometheus cannot read reference.json, so every version's reference shares become constant
recording rules, loaded beside the static drift rules (docker/prometheus/plantdx.rules.yaml,
group `plantdx.drift`), which compute the PSI of the live histograms against them:

    plantdx:reference_share{version, statistic, bucket, below}   the share of a bucket
    plantdx:reference_abstention_share{version}                   the abstention share

`bucket` is the bucket's `le` label (a class name for `statistic="class"`); `below` is the
`le` of the bucket under it, absent for the first bucket and for classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from plantdx.exceptions import RepositoryError
from plantdx.reference import CLASS, Reference

from .references import repository_references

SHARE = "plantdx:reference_share"
ABSTENTION_SHARE = "plantdx:reference_abstention_share"
GROUP = "plantdx.reference"
RESOURCE_NAME = "plantdx-drift-reference"


def _value(x: float) -> str:
    return f"vector({round(float(x), 6)!r})"


def version_rules(version: str, ref: Reference) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for statistic, dist in ref.distributions.items():
        for i, (bucket, share) in enumerate(zip(dist.buckets, dist.shares(), strict=True)):
            labels = {"version": version, "statistic": statistic, "bucket": bucket}
            if statistic != CLASS and i > 0:
                labels["below"] = dist.buckets[i - 1]
            rules.append({"record": SHARE, "expr": _value(share), "labels": labels})
    if ref.abstention_share is not None:
        rules.append(
            {
                "record": ABSTENTION_SHARE,
                "expr": _value(ref.abstention_share),
                "labels": {"version": version},
            }
        )
    return rules


def reference_rules(repo: str | Path) -> tuple[dict[str, Any], list[str]]:
    """(the rule file, the versions left out for having no reference)."""
    refs = repository_references(repo)
    rules: list[dict[str, Any]] = []
    missing = []
    for version, ref in refs.items():
        if ref is None:
            missing.append(version)
        else:
            rules.extend(version_rules(version, ref))
    if not rules:
        raise RepositoryError(
            f"no version of {repo} has a drift reference (reference.json): export with the "
            "run's split.json beside the checkpoint, or with --check-data DIR"
        )
    return {"groups": [{"name": GROUP, "interval": "5m", "rules": rules}]}, missing


def rules_text(repo: str | Path, *, kubernetes: bool = False) -> tuple[str, list[str]]:
    """The rule file as YAML (a PrometheusRule manifest with `kubernetes`), and the versions
    without a reference."""
    doc, missing = reference_rules(repo)
    header = (
        f"# Drift references of {Path(repo).resolve()}, written by `plantdx drift rules`.\n"
        "# Regenerate after every export; the plantdx.drift rules read these series.\n"
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
