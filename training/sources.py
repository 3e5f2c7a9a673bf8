"""Per-source figures of a multi-source run, the best-epoch criterion, and the final decision
rule with its test figures (what `report.finish_run` adds to metrics.json)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from plantdx.decision import DecisionRule

from .calibrate import AbstainConfig, fit_decision_rule, selective
from .engine import EvalResult
from .evaluate import classification_report


def per_source(
    result: EvalResult, sources: np.ndarray, names: Sequence[str], class_names: list[str]
) -> dict[str, dict[str, float]]:
    """Accuracy, macro-F1 and n of every source in one evaluation pass."""
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        mask = sources == i
        if not mask.any():
            continue
        rep = classification_report(result.targets[mask], result.predictions[mask], class_names)
        out[name] = {"acc": rep["accuracy"], "macro_f1": rep["macro_f1"], "n": int(mask.sum())}
    return out


def selection_score(rule: str, pooled_acc: float, by_source: dict[str, dict[str, float]]) -> float:
    """The number the best epoch maximises (TrainConfig.select_on)."""
    accs = [v["acc"] for v in by_source.values()]
    if rule == "pooled_acc" or not accs:
        return pooled_acc
    return float(min(accs)) if rule == "min_source_acc" else float(np.mean(accs))


def metric_name(name: str) -> str:
    """A source name as MLflow accepts it in a metric key (letters, digits, _ - . / space)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def epoch_row_extras(by_source: dict[str, dict[str, float]], score: float) -> dict[str, float]:
    """The per-source val figures of an epoch, flat for history.json and MLflow."""
    row = {f"val_acc.{metric_name(k)}": v["acc"] for k, v in by_source.items()}
    row["val_score"] = score
    return row


def decide_and_report(
    *,
    val: EvalResult,
    val_sources: np.ndarray,
    test: EvalResult,
    test_sources: np.ndarray,
    names: Sequence[str],
    class_names: list[str],
    unknown_val: EvalResult | None,
    unknown_test: EvalResult | None,
    cfg: AbstainConfig,
    cv: EvalResult | None = None,
    cv_sources: np.ndarray | None = None,
) -> tuple[DecisionRule, dict[str, Any]]:
    """Fit the decision rule on val and the out-of-fold predictions of the cross-fitted
    sources (`cv`, when the run cross-fits); the per-source val/test/cv figures (accuracy,
    macro-F1, coverage, selective accuracy) and the unknown photos' abstention under it."""
    fit_on = [(val, val_sources)]
    if cv is not None and cv_sources is not None and len(cv.targets):
        fit_on.append((cv, cv_sources))
    val_logits: dict[str, np.ndarray] = {}
    val_targets: dict[str, np.ndarray] = {}
    for res, src in fit_on:
        for i, name in enumerate(names):
            if (src == i).any():
                val_logits[name] = res.logits[src == i]
                val_targets[name] = res.targets[src == i]
    rule = fit_decision_rule(
        val_logits, val_targets, unknown_val.logits if unknown_val else None, cfg
    )
    metrics: dict[str, Any] = {
        "temperature": rule.temperature,
        "abstain_threshold": rule.threshold,
        "val_nll_before_calibration": rule.fitted["val_nll_before"],
        "val_nll_after_calibration": rule.fitted["val_nll_after"],
    }
    sources: dict[str, dict[str, Any]] = {}
    splits = [("val", val, val_sources), ("test", test, test_sources)]
    if len(fit_on) > 1:
        splits.append(("cv", fit_on[1][0], fit_on[1][1]))
    for split, res, src in splits:
        if not len(res.targets):
            continue
        probs = rule.probabilities(res.logits)
        pooled = selective(probs, res.targets, rule.threshold)
        metrics[f"{split}_coverage"] = pooled["coverage"]
        metrics[f"{split}_selective_accuracy"] = pooled["selective_accuracy"]
        for i, name in enumerate(names):
            mask = src == i
            if not mask.any():
                continue
            rep = classification_report(res.targets[mask], res.predictions[mask], class_names)
            sel = selective(probs[mask], res.targets[mask], rule.threshold)
            sources.setdefault(name, {})[split] = {
                "acc": rep["accuracy"],
                "macro_f1": rep["macro_f1"],
                "coverage": sel["coverage"],
                "selective_accuracy": sel["selective_accuracy"],
                "n": sel["n"],
            }
    metrics["sources"] = sources
    for split, unknown in (("val", unknown_val), ("test", unknown_test)):
        if unknown is not None and len(unknown.logits):
            top = rule.probabilities(unknown.logits).max(1)
            metrics[f"unknown_{split}_n"] = len(top)
            metrics[f"unknown_{split}_abstain_rate"] = float((top < rule.threshold).mean())
    return rule, metrics


def flat_source_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """`sources` as flat numeric keys (`test_acc.plantdoc-field-train`) for MLflow."""
    flat: dict[str, float] = {}
    for name, splits in (metrics.get("sources") or {}).items():
        for split, figures in splits.items():
            for key, value in figures.items():
                if key != "n":
                    flat[f"{split}_{key}.{metric_name(name)}"] = float(value)
    return flat
