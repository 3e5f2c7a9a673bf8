"""The answer a model gives for a photo: calibrated probabilities, then a label or "uncertain".

A `DecisionRule` is fitted at the end of training on the validation split and travels with the
model, like the preprocessing metadata: in the checkpoint (`Checkpoint.decision`), beside every
exported version (`decision.json` in `preprocess/N/`), and in the served postprocess, which
applies exactly these functions. `plantdx evaluate` uses them too, so offline and served
figures agree.

- `temperature` T divides the logits before the softmax (temperature scaling, fitted to lower
  the validation negative log-likelihood): the probabilities mean what they say.
- `threshold`: the photo is answered when its top calibrated probability is at least this,
  otherwise the answer is `UNCERTAIN`. 0 answers everything.
- When the crop is known (the served `CROP` input, `plantdx evaluate --crop-from-labels`), the
  probabilities are first restricted to that crop's classes and renormalised
  (`probabilities(logits, allowed)`; `plantdx.crops` says which classes), and the threshold is
  applied after.

numpy only: the Triton Python backends import it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

UNCERTAIN = "uncertain"
DECISION_FILENAME = "decision.json"


def check_threshold(
    value: float, what: str = "threshold", error: type[Exception] = ValueError
) -> float:
    """An abstention threshold is a number in [0, 1]: `value`, else `error` naming `what`."""
    if not 0.0 <= value <= 1.0:
        raise error(f"{what} must be in [0, 1], got {value}")
    return value


def parse_threshold(text: str) -> float | None:
    """A threshold written as text (a config parameter): None when empty, else a number in
    [0, 1]; anything else raises ValueError."""
    text = str(text).strip()
    if not text:
        return None
    try:
        return check_threshold(float(text))
    except ValueError:
        raise ValueError(f"must be empty or a number in [0, 1], got {text!r}") from None


def softmax(
    logits: np.ndarray, temperature: float = 1.0, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Row-wise softmax of logits / temperature, float32, numerically stable.

    `allowed` (bool [C] or [N, C], at least one True per row) restricts each row to those
    classes: the others get probability 0 and the allowed ones share 1. That is the
    unrestricted probabilities renormalised over the allowed classes, computed from the
    logits so that nothing underflows."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if allowed is not None:
        z = np.where(np.broadcast_to(np.asarray(allowed, dtype=bool), z.shape), z, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class DecisionRule:
    temperature: float = 1.0
    threshold: float = 0.0
    # How the threshold was chosen (the stated target), in words.
    target: str = ""
    # What the fit measured on validation (NLL before/after, coverage, unknown abstention...).
    fitted: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        check_threshold(self.threshold)

    def probabilities(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities; with `allowed` (a crop's classes, bool [C] or [N, C]),
        restricted to those classes and renormalised (`softmax`). The threshold applies to
        the result either way: restricted first, then answered or "uncertain"."""
        return softmax(logits, self.temperature, allowed)

    def answered(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """True where the top probability reaches the threshold (`threshold` overrides)."""
        t = self.threshold if threshold is None else threshold
        return np.asarray(probabilities).max(axis=-1) >= t

    def decisions(
        self,
        probabilities: np.ndarray,
        class_names: Sequence[str],
        threshold: float | None = None,
    ) -> list[str]:
        """The label of each row, or UNCERTAIN where it is not answered."""
        probs = np.asarray(probabilities)
        top = probs.argmax(axis=-1)
        ok = self.answered(probs, threshold)
        return [
            class_names[int(i)] if answered else UNCERTAIN
            for i, answered in zip(top, ok, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DecisionRule:
        d = d or {}
        return cls(
            temperature=float(d.get("temperature", 1.0)),
            threshold=float(d.get("threshold", 0.0)),
            target=str(d.get("target", "")),
            fitted=dict(d.get("fitted") or {}),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DecisionRule:
        """The rule in `path`; the identity rule (T=1, answer everything) when it is absent."""
        p = Path(path)
        if not p.is_file():
            return cls()
        return cls.from_dict(json.loads(p.read_text()))
