"""The promotion gate: the challenger is promoted only when no data source got worse beyond
noise and the chosen metric got better."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from plantdx.choices import GateMetric
from plantdx.exceptions import ConfigError

GATE_METRICS: tuple[str, ...] = get_args(GateMetric)


@dataclass(frozen=True)
class Gate:
    # Must be better on the candidate by more than min_gain: the mean of per-source top-1
    # accuracy (each source counts the same, so a small field set is not drowned by lab photos),
    # pooled accuracy, or pooled selective accuracy.
    metric: GateMetric = "mean_source_accuracy"
    min_gain: float = 0.0
    # A source is "worse beyond noise" when its accuracy dropped and the exact McNemar test on
    # that source's paired answers rejects "equally accurate" at this level...
    alpha: float = 0.05
    # ...or when it dropped by more than this, whatever the test says (small sources).
    max_drop: float = 0.05
    # Coverage may not fall by more than this on any source, unless that source's selective
    # accuracy rose (a model that answers less must be right more often when it answers).
    max_coverage_drop: float = 0.10

    def check(self) -> None:
        if self.metric not in GATE_METRICS:
            raise ConfigError(f"--metric must be one of {', '.join(GATE_METRICS)}")
        if not 0 < self.alpha < 1 or self.max_drop < 0 or self.max_coverage_drop < 0:
            raise ConfigError("gate: alpha in (0, 1); max_drop and max_coverage_drop ≥ 0")

    def describe(self) -> str:
        return (
            f"{self.metric} better by more than {self.min_gain:g}; on no source accuracy lower "
            f"with McNemar p < {self.alpha:g} or by more than {self.max_drop:.0%}, nor coverage "
            f"lower by more than {self.max_coverage_drop:.0%} without higher selective accuracy"
        )


def metric_value(comparison: dict[str, Any], metric: str, side: str) -> float:
    if metric == "mean_source_accuracy":
        return float(comparison["mean_source_accuracy"][side])
    return float(comparison["overall"][side][metric])


def evaluate_gate(gate: Gate, comparison: dict[str, Any]) -> dict[str, Any]:
    """The verdict and its reasons; side "a" is the champion, "b" the candidate."""
    reasons: list[str] = []
    for name, s in comparison["sources"].items():
        drop = s["a"]["accuracy"] - s["b"]["accuracy"]
        if s["a"]["n"] == 0:
            reasons.append(f"{name}: no photo judged")
            continue
        if drop > 0 and (s["mcnemar_p"] < gate.alpha or drop > gate.max_drop):
            reasons.append(
                f"{name}: accuracy {s['a']['accuracy']:.1%} → {s['b']['accuracy']:.1%} "
                f"(McNemar p = {s['mcnemar_p']:.3g}, {s['a']['n']} photos)"
            )
        # Answering less is a fair trade only when the answers given are more often right.
        cov_drop = s["a"]["coverage"] - s["b"]["coverage"]
        sharper = s["b"]["selective_accuracy"] > s["a"]["selective_accuracy"]
        if cov_drop > gate.max_coverage_drop and not sharper:
            reasons.append(f"{name}: coverage {s['a']['coverage']:.1%} → {s['b']['coverage']:.1%}")
    champion = metric_value(comparison, gate.metric, "a")
    candidate = metric_value(comparison, gate.metric, "b")
    if not candidate - champion > gate.min_gain:
        reasons.append(
            f"{gate.metric} {champion:.2%} → {candidate:.2%}: not better by more than "
            f"{gate.min_gain:g}"
        )
    return {
        "passed": not reasons,
        "rule": gate.describe(),
        "metric": gate.metric,
        "champion": champion,
        "candidate": candidate,
        "reasons": reasons,
    }
