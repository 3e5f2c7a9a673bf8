"""Capture inside the postprocess model: choose the answers to keep, queue their photos, and
publish `plantdx_captures_total{model, version, outcome}`.

The writer thread only counts; the counts are published by the model's own execute() (the
next batch after the outcome), so the custom-metrics API is only ever called from the thread
Triton runs the model on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .settings import CaptureSettings
from .store import open_store
from .writer import Capture, CaptureWriter, now_utc

log = logging.getLogger("plantdx.capture")

METRIC_NAME = "plantdx_captures_total"
METRIC_HELP = "Served photos chosen for capture, by outcome (written or dropped, and why)"


class CaptureHook:
    def __init__(self, writer: CaptureWriter, make_metric: Callable[[dict[str, str]], Any]):
        self.writer = writer
        self.make_metric = make_metric
        self.metrics: dict[tuple[str, str], Any] = {}

    @classmethod
    def from_env(cls, make_metric: Callable[[dict[str, str]], Any]) -> CaptureHook | None:
        """The hook the environment asks for (PLANTDX_CAPTURE...), started; None when off."""
        settings = CaptureSettings.from_env()
        if settings is None:
            return None
        writer = CaptureWriter(settings, open_store(settings.destination)).start()
        log.info("%s", settings.describe())
        return cls(writer, make_metric)

    def publish(self) -> None:
        for (version, outcome), n in self.writer.take_outcomes().items():
            metric = self.metrics.get((version, outcome))
            if metric is None:
                labels = {"model": "plantdx", "version": version, "outcome": outcome}
                metric = self.metrics[version, outcome] = self.make_metric(labels)
            metric.increment(n)

    def after(
        self,
        images: Callable[[], Sequence[bytes] | None],
        predictions: Sequence[str],
        confidences: Sequence[float],
        decisions: Sequence[str],
        versions: Sequence[str],
    ) -> None:
        """Consider one request's answers; `images` is called only when one is chosen."""
        chosen = [
            (i, reason)
            for i, (d, c) in enumerate(zip(decisions, confidences, strict=True))
            if (reason := self.writer.choose(d, c)) is not None
        ]
        if not chosen:
            return
        photos = images()
        if photos is None:  # a caller that sends no IMAGE (plantdx_explain): nothing to keep
            return
        when = now_utc()
        for i, reason in chosen:
            self.writer.offer(
                Capture(
                    data=photos[i],
                    when=when,
                    version=versions[i],
                    prediction=predictions[i],
                    confidence=confidences[i],
                    decision=decisions[i],
                    reason=reason,
                )
            )

    def close(self) -> None:
        self.writer.close()
        self.publish()
