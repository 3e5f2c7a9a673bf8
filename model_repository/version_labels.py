"""The `version` label of the postprocess metrics, bounded: only versions the repository has.

The version number travels with each item in CALIBRATION, which the ensemble fills from the
preprocess of that version. A caller that reaches the postprocess directly (Triton serves every
loaded model on its inference port) can send any number there; left unchecked, every forged
number would create new metric series. So a number is used as a label only when the repository
has that preprocess version (`preprocess/N/`, rescanned at most once a second so that a newly
published version is recognised); anything else is labelled "unknown". Where the postprocess
cannot see the repository (Triton copies each model of an s3:// repository into a folder of its
own), the first `limit` distinct versions are labelled and the rest are "unknown".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

UNKNOWN_VERSION = "unknown"
RESCAN_S = 1.0
DEFAULT_LIMIT = 16


class VersionLabels:
    def __init__(
        self,
        preprocess_dir: Path,
        *,
        limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.preprocess_dir = preprocess_dir
        self.limit = limit
        self.clock = clock
        self._known: set[int] = set()
        self._scanned_at = -math.inf
        self._seen: set[int] = set()  # when there is no repository to look at

    def _scan(self) -> None:
        self._scanned_at = self.clock()
        try:
            names = [p.name for p in self.preprocess_dir.iterdir() if p.is_dir()]
        except OSError:
            return
        self._known = {int(n) for n in names if n.isdigit() and len(n) < 10}

    def label(self, value: float) -> str:
        """The label for a version number as CALIBRATION carries it (a float32)."""
        if not (math.isfinite(value) and value >= 0 and value == int(value)):
            return UNKNOWN_VERSION
        version = int(value)
        if not self.preprocess_dir.is_dir():
            if version in self._seen or len(self._seen) < self.limit:
                self._seen.add(version)
                return str(version)
            return UNKNOWN_VERSION
        if version not in self._known and self.clock() - self._scanned_at >= RESCAN_S:
            self._scan()
        return str(version) if version in self._known else UNKNOWN_VERSION
