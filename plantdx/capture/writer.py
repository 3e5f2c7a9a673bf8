"""The capture writer: a bounded queue in front of one background thread, so that capturing
never slows or fails a request.

`offer()` runs on the request path: it only checks the rate cap and puts the photo on the
queue, never waiting. The thread strips metadata, checks the size cap and writes the photo,
then its sidecar (so a sidecar always names a complete photo). Every capture ends in exactly one
outcome, counted per classifier version: `written`, `dropped_queue` (queue full),
`dropped_cap` (over the rate or size cap) or `dropped_error` (a failed write: full or
read-only disk, unreachable bucket, a photo whose metadata could not be removed). After a
failed write the destination is left alone for `cooldown_s`: those captures are dropped as
errors at once, so an unreachable bucket costs one timeout, not one per photo.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from plantdx.decision import UNCERTAIN

from .record import MODEL, SIDECAR_SUFFIX, Sidecar, sha256_hex, sniff, stem, strip_metadata
from .settings import CaptureSettings
from .store import Store

log = logging.getLogger("plantdx.capture")

OUTCOMES = ("written", "dropped_queue", "dropped_cap", "dropped_error")


@dataclass(frozen=True)
class Capture:
    """One answer chosen for capture, with the photo as it was sent."""

    data: bytes
    when: datetime
    version: str
    prediction: str
    confidence: float
    decision: str
    reason: str


def reason_for(
    settings: CaptureSettings, decision: str, confidence: float, draw: float
) -> str | None:
    """Why an answer is captured (`draw` uniform in [0, 1)), or None when it is not."""
    if decision == UNCERTAIN:
        return "abstained"
    if confidence < settings.low_confidence:
        return "low_confidence"
    if draw < settings.rate:
        return "sampled"
    return None


class CaptureWriter:
    def __init__(
        self,
        settings: CaptureSettings,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        cooldown_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.cooldown_s = cooldown_s
        self._queue: queue.Queue[Capture | None] = queue.Queue(maxsize=settings.queue)
        self._lock = threading.Lock()
        self._outcomes: Counter[tuple[str, str]] = Counter()  # not yet published
        self._totals: Counter[str] = Counter()
        self._tokens = max(1.0, settings.max_per_s)
        self._refilled = clock()
        self._used: int | None = None  # bytes in the destination, measured by the thread
        self._down_until = 0.0
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    # -- request path ----------------------------------------------------------------------
    def choose(self, decision: str, confidence: float) -> str | None:
        return reason_for(self.settings, decision, confidence, self._rng.random())

    def _take_token(self) -> bool:
        rate = self.settings.max_per_s
        if not rate:
            return True
        with self._lock:
            now = self.clock()
            self._tokens = min(max(1.0, rate), self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def offer(self, capture: Capture) -> str | None:
        """Queue a capture without waiting; the outcome when it is dropped here, else None."""
        if not self._take_token():
            self._count(capture.version, "dropped_cap")
            return "dropped_cap"
        try:
            self._queue.put_nowait(capture)
        except queue.Full:
            self._count(capture.version, "dropped_queue")
            return "dropped_queue"
        return None

    def _count(self, version: str, outcome: str) -> None:
        with self._lock:
            self._outcomes[version, outcome] += 1
            self._totals[outcome] += 1

    def take_outcomes(self) -> Counter[tuple[str, str]]:
        """The (version, outcome) counts since the last call (for publishing as metrics)."""
        with self._lock:
            taken, self._outcomes = self._outcomes, Counter()
        return taken

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {k: self._totals.get(k, 0) for k in OUTCOMES}

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> CaptureWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plantdx-capture", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("capture queue still full at shutdown; its photos are not written")
        self._thread.join(timeout_s)
        self._thread = None

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued capture has an outcome (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _measure(self) -> int:
        try:
            return sum(size for _, size in self.store.entries())
        except Exception as exc:  # an unreachable destination: start from zero, drop on write
            log.warning("capture: cannot measure %s (%s)", self.store.describe(), exc)
            return 0

    def _run(self) -> None:
        self._used = self._measure()
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._count(item.version, self._write(item))
            except Exception:  # never let the thread die: a capture is dropped, not the server
                log.exception("capture writer failed")
                if item is not None:
                    self._count(item.version, "dropped_error")
            finally:
                self._queue.task_done()

    def _write(self, item: Capture) -> str:
        if self.clock() < self._down_until:
            return "dropped_error"
        sha = sha256_hex(item.data)
        fmt = sniff(item.data) or "bin"
        data = item.data
        try:
            if self.settings.strip_exif:
                data, fmt = strip_metadata(data, fmt)
        except Exception as exc:
            log.warning("capture: cannot strip metadata (%s); photo not stored", exc)
            return "dropped_error"
        key = stem(item.when, sha)
        name = f"{key.rsplit('/', 1)[1]}.{fmt}"
        sidecar = Sidecar(
            time=item.when.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
            version=item.version,
            prediction=item.prediction,
            confidence=round(float(item.confidence), 6),
            decision=item.decision,
            sha256=sha,
            reason=item.reason,
            file=name,
            model=MODEL,
            bytes=len(data),
        ).to_json()
        used = self._used or 0
        if used + len(data) + len(sidecar) > self.settings.max_bytes:
            return "dropped_cap"
        try:
            self.store.put(f"{key}.{fmt}", data)
            self.store.put(key + SIDECAR_SUFFIX, sidecar)
        except Exception as exc:
            self._down_until = self.clock() + self.cooldown_s
            log.warning("capture: cannot write to %s (%s)", self.store.describe(), exc)
            return "dropped_error"
        self._used = used + len(data) + len(sidecar)
        return "written"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
