#!/usr/bin/env python3
"""The Prometheus Operator's PrometheusRule, generated from the one rule file.

    python3 scripts/prometheus_rules.py write   # after editing docker/prometheus/plantdx.rules.yaml
    python3 scripts/prometheus_rules.py check   # exit 1 when k8s/base/prometheusrule.yaml is stale

docker/prometheus/plantdx.rules.yaml is the source: Prometheus (docker/compose.yaml) and
promtool read it as it is. Kustomize cannot wrap a plain rule file into a PrometheusRule's
`spec`, so k8s/base/prometheusrule.yaml is this file's `groups`, comments kept, under the
resource's header; tests/k8s/test_k8s_monitoring.py fails while it is not what `write`
would write.
Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docker" / "prometheus" / "plantdx.rules.yaml"
TARGET = ROOT / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from docker/prometheus/plantdx.rules.yaml by `python3 scripts/prometheus_rules.py
# write`: edit that file, not this one (tests/k8s/test_k8s_monitoring.py fails while they
# differ).
#
# Recording rules and alerts for the plantdx ensemble, evaluated by the Prometheus Operator;
# the comments of the rule file explain how the Triton counters are combined and where the
# drift references come from. `release: kube-prometheus-stack` matches the default
# ruleSelector of a kube-prometheus-stack Helm release of that name.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: plantdx-triton
  labels:
    app.kubernetes.io/name: plantdx
    app.kubernetes.io/component: inference-server
    release: kube-prometheus-stack
spec:
"""


def prometheus_rule(source: str) -> str:
    """The PrometheusRule text for the rule file `source` (from its `groups:` line on)."""
    lines = source.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    except StopIteration:
        raise ValueError("the rule file has no top-level `groups:`") from None
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body).rstrip() + "\n"


def main(argv: list[str]) -> int:
    if argv not in (["write"], ["check"]):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        print("usage: prometheus_rules.py write|check", file=sys.stderr)
        return 2
    wanted = prometheus_rule(SOURCE.read_text())
    if argv == ["write"]:
        TARGET.write_text(wanted)
        print(f"wrote {TARGET.relative_to(ROOT)}")
        return 0
    if TARGET.read_text() != wanted:
        print(
            f"{TARGET.relative_to(ROOT)} is not generated from {SOURCE.relative_to(ROOT)}: run "
            "`python3 scripts/prometheus_rules.py write`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
