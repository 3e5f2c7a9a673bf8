"""Fit the decision rule on the validation split: a temperature, then an abstention threshold.

The temperature minimises the negative log-likelihood of the validation labels (temperature
scaling, Guo et al. 2017). The threshold is chosen for the target stated in `AbstainConfig`:

1. abstain on at least `unknown_target` of the validation photos of no class (when the run has
   `--unknown-data`), and
2. keep the selective accuracy (accuracy on the answered photos) of every source at least
   `selective_accuracy_target`,
3. but never answer fewer than `min_coverage` of any source's validation photos: when (1) or
   (2) would need a higher threshold, coverage wins and the fit says which target was missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from plantdx.decision import DecisionRule, softmax


@dataclass
class AbstainConfig:
    unknown_target: float = 0.8
    selective_accuracy_target: float = 0.9
    min_coverage: float = 0.6


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `targets` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature in [0.05, 20] with the lowest validation NLL (a log-spaced grid, then a
    golden-section refinement; NLL is convex in 1/T)."""
    if len(targets) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    losses = [nll(logits, targets, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    phi = (np.sqrt(5) - 1) / 2
    a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    fa, fb = nll(logits, targets, np.exp(a)), nll(logits, targets, np.exp(b))
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - phi * (hi - lo)
            fa = nll(logits, targets, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + phi * (hi - lo)
            fb = nll(logits, targets, np.exp(b))
    best = float(np.exp((lo + hi) / 2))
    return best if nll(logits, targets, best) <= losses[i] else float(grid[i])


def selective(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, Any]:
    """accuracy (top-1, no abstention), coverage, selective_accuracy and n at `threshold`."""
    n = len(targets)
    if n == 0:
        return {"n": 0, "accuracy": 0.0, "coverage": 0.0, "selective_accuracy": 0.0}
    pred = probs.argmax(1)
    answered = probs.max(1) >= threshold
    right = pred == targets
    return {
        "n": int(n),
        "accuracy": float(right.mean()),
        "coverage": float(answered.mean()),
        "selective_accuracy": float(right[answered].mean()) if answered.any() else 0.0,
    }


def class_balanced(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, coverage and selective_accuracy with every class present counting equally."""
    if len(targets) == 0:
        return {"accuracy": 0.0, "coverage": 0.0, "selective_accuracy": 0.0}
    _, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    w = w / w.sum()
    right = probs.argmax(1) == targets
    answered = probs.max(1) >= threshold
    covered = float(w[answered].sum())
    return {
        "accuracy": float(w[right].sum()),
        "coverage": covered,
        "selective_accuracy": float(w[right & answered].sum() / covered) if covered else 0.0,
    }


def by_class(probs: np.ndarray, targets: np.ndarray) -> dict[int, tuple[int, int]]:
    """{class index: (right top-1 answers, photos)} over the classes present."""
    right = probs.argmax(1) == targets
    return {
        int(c): (int(right[targets == c].sum()), int((targets == c).sum()))
        for c in np.unique(targets)
    }


def _lowest_for_abstain(top: np.ndarray, rate: float) -> float:
    """The lowest threshold that abstains on at least `rate` of photos with these top probs."""
    if rate <= 0 or len(top) == 0:
        return 0.0
    s = np.sort(top)
    k = min(int(np.ceil(rate * len(s))), len(s))  # abstain on the k least confident
    above = s[k] if k < len(s) else 1.0
    if above <= s[k - 1]:  # a tie at the boundary: abstain on all of it
        return float(min(np.nextafter(s[k - 1], 2.0), 1.0))
    return _between(s[k - 1], above)


def _highest_for_coverage(top: np.ndarray, coverage: float) -> float:
    """The highest threshold that still answers at least `coverage` of these photos."""
    if len(top) == 0 or coverage <= 0:
        return 1.0
    s = np.sort(top)[::-1]
    k = min(int(np.ceil(coverage * len(s))), len(s))  # answer the k most confident
    return _between(s[k] if k < len(s) else 0.0, s[k - 1])


def _lowest_for_accuracy(probs: np.ndarray, targets: np.ndarray, target: float) -> float:
    """The lowest threshold whose selective accuracy reaches `target` (1.0 when none does)."""
    top = probs.max(1)
    right = probs.argmax(1) == targets
    order = np.argsort(-top, kind="stable")
    acc = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    if len(acc) == 0 or acc[-1] >= target:
        return 0.0
    ok = np.flatnonzero(acc >= target)
    if len(ok) == 0:
        return 1.0
    # Answer the most confident photos up to the last prefix that meets the target.
    last = ok[-1]
    below = top[order[last + 1]] if last + 1 < len(order) else 0.0
    return _between(below, top[order[last]])


def _between(low: float, high: float) -> float:
    """A threshold that answers `high` and abstains on `low`: halfway, so the last float bits of
    another runtime (ONNX, another batch size) cannot flip a photo on the boundary; `high`
    itself when the two are equal."""
    if high <= low:
        return float(high)
    mid = (float(low) + float(high)) / 2
    return float(mid) if mid > low else float(high)


def fit_decision_rule(
    val_logits: Mapping[str, np.ndarray],
    val_targets: Mapping[str, np.ndarray],
    unknown_logits: np.ndarray | None,
    cfg: AbstainConfig,
) -> DecisionRule:
    """The rule for these validation logits, per source name, and the unknown photos' logits."""
    names = list(val_logits)
    all_logits = np.concatenate([val_logits[k] for k in names])
    all_targets = np.concatenate([val_targets[k] for k in names])
    t = fit_temperature(all_logits, all_targets)
    probs = {k: softmax(val_logits[k], t) for k in names}
    want_acc = max(
        _lowest_for_accuracy(probs[k], val_targets[k], cfg.selective_accuracy_target) for k in names
    )
    want_unknown = 0.0
    if unknown_logits is not None and len(unknown_logits):
        u_top = softmax(unknown_logits, t).max(1)
        want_unknown = _lowest_for_abstain(u_top, cfg.unknown_target)
    ceiling = min(_highest_for_coverage(probs[k].max(1), cfg.min_coverage) for k in names)
    threshold = float(min(max(want_acc, want_unknown), ceiling))
    missed = [
        what
        for what, want in (("unknown_target", want_unknown), ("selective_accuracy", want_acc))
        if want > threshold
    ]
    fitted: dict[str, Any] = {
        "val_n": len(all_targets),
        "val_nll_before": nll(all_logits, all_targets, 1.0),
        "val_nll_after": nll(all_logits, all_targets, t),
        "threshold_for_unknown_target": want_unknown,
        "threshold_for_selective_accuracy": want_acc,
        "threshold_ceiling_for_coverage": ceiling,
        "missed": missed,
        "val": {k: selective(probs[k], val_targets[k], threshold) for k in names},
    }
    if unknown_logits is not None and len(unknown_logits):
        u_top = softmax(unknown_logits, t).max(1)
        fitted["unknown_val_n"] = len(u_top)
        fitted["unknown_val_abstain_rate"] = float((u_top < threshold).mean())
    target = (
        f"abstain on >= {cfg.unknown_target:.0%} of unknown val photos and keep selective "
        f"accuracy >= {cfg.selective_accuracy_target:.0%} on every source, answering at least "
        f"{cfg.min_coverage:.0%} of every source's val photos"
    )
    return DecisionRule(temperature=t, threshold=threshold, target=target, fitted=fitted)
