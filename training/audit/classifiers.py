"""The audit's small classifiers on pooled features: one embedding (the features' principal
components) and out-of-fold probabilities of a logistic regression on it (scikit-learn;
components standardised on the photos each model is fitted on), so that no photo is judged by a
model that saw its own label."""

from __future__ import annotations

import numpy as np

# Principal components kept: about as accurate as the 1280 raw features for these regressions
# here, several times faster to fit.
COMPONENTS = 384
PHOTOS_PER_COMPONENT = 10
# scikit-learn's C (inverse L2 strength) of the domain and the label regressions, the best of
# those tried on the shared photos (BENCHMARKS.md, "Data audit").
DOMAIN_C = 0.05
LABEL_C = 0.01


def embed(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The principal components of the features: at most COMPONENTS, and at most one per
    PHOTOS_PER_COMPONENT photos (standardised, the weak components of a few photos are noise)."""
    from sklearn.decomposition import PCA

    n, dim = features.shape
    k = max(1, min(COMPONENTS, n // PHOTOS_PER_COMPONENT, dim))
    if n < 2:
        return np.zeros((n, k), dtype=np.float32)
    z = PCA(k, random_state=seed).fit_transform(features)
    return np.asarray(z, dtype=np.float32)


def folds_for(y: np.ndarray, folds: int) -> int:
    """As many folds as asked, at most the smallest class's size (0: fewer than 2 there)."""
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        return 0
    k = min(folds, int(counts.min()))
    return k if k >= 2 else 0


def _model(c: float, balanced: bool):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    weights = "balanced" if balanced else None
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=500, class_weight=weights)
    )


def out_of_fold(
    x: np.ndarray, y: np.ndarray, *, c: float, folds: int, seed: int, balanced: bool = False
) -> np.ndarray:
    """(N, classes) probabilities, each row from a model fitted without that row's fold
    (classes in sorted order of y's values). Needs folds_for(y, folds) >= 2."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    k = folds_for(y, folds)
    if k < 2:
        raise ValueError("every class needs at least two photos for out-of-fold probabilities")
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    proba = cross_val_predict(_model(c, balanced), x, y, cv=cv, method="predict_proba")
    return np.asarray(proba, dtype=np.float64)


def fit_predict(
    x: np.ndarray, y: np.ndarray, others: np.ndarray, *, c: float, balanced: bool = False
) -> np.ndarray:
    """Probabilities for `others` from a model fitted on all of (x, y)."""
    if not len(others):
        return np.zeros((0, len(np.unique(y))))
    return np.asarray(_model(c, balanced).fit(x, y).predict_proba(others), dtype=np.float64)


def recalls(y: np.ndarray, predicted: np.ndarray) -> list[float]:
    """Per class (sorted), the share of its photos predicted right."""
    return [float((predicted[y == c] == c).mean()) for c in np.unique(y)]
