"""Paired statistics of two versions' answers on the same photos."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b photos only A got right, c only B got right.

    Under the null (both versions equally accurate) each discordant photo is a fair coin, so the
    p-value is the two-sided binomial tail of min(b, c) in b + c tosses; 1.0 with no discordant
    photo."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))


def selective_metrics(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> dict[str, Any]:
    """Top-1 accuracy, and under each photo's threshold the share answered (coverage) and the
    accuracy of the answered ones (selective accuracy; 0 when nothing is answered)."""
    n = len(labels)
    if n == 0:
        return {"accuracy": 0.0, "coverage": 0.0, "selective_accuracy": 0.0, "n": 0}
    pred = probs.argmax(1)
    right = pred == labels
    answered = probs.max(1) >= thresholds
    return {
        "accuracy": float(right.mean()),
        "coverage": float(answered.mean()),
        "selective_accuracy": float(right[answered].mean()) if answered.any() else 0.0,
        "n": int(n),
    }


def paired(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, Any]:
    """Discordant counts and the exact McNemar p-value of two correctness vectors."""
    only_a = int((right_a & ~right_b).sum())
    only_b = int((right_b & ~right_a).sum())
    return {
        "only_a_right": only_a,
        "only_b_right": only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def per_class_delta(
    pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> dict[str, dict[str, Any]]:
    """Recall of each class present in the photos for both versions, and B − A."""
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(class_names):
        mask = labels == i
        if not mask.any():
            continue
        ra = float((pred_a[mask] == i).mean())
        rb = float((pred_b[mask] == i).mean())
        out[name] = {"n": int(mask.sum()), "recall_a": ra, "recall_b": rb, "delta": rb - ra}
    return out


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    """Median, p90 and p99 of per-photo latencies in milliseconds (empty: zeros)."""
    if len(ms) == 0:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}
