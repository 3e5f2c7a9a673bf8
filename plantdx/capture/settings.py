"""Capture settings: typed, validated, and carried to the Triton stubs through the environment.

`plantdx serve --capture ...` puts them in the server's environment (the Python-backend stubs
inherit it); the container entrypoint reads the same variables. Capture is off unless
`PLANTDX_CAPTURE` names a destination.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from plantdx.exceptions import ConfigError

ENV_DESTINATION = "PLANTDX_CAPTURE"
ENV_RATE = "PLANTDX_CAPTURE_RATE"
ENV_LOW_CONFIDENCE = "PLANTDX_CAPTURE_LOW_CONFIDENCE"
ENV_MAX_MB = "PLANTDX_CAPTURE_MAX_MB"
ENV_MAX_PER_S = "PLANTDX_CAPTURE_MAX_PER_S"
ENV_STRIP_EXIF = "PLANTDX_CAPTURE_STRIP_EXIF"
ENV_QUEUE = "PLANTDX_CAPTURE_QUEUE"
# The S3 endpoint (an S3-compatible store); AWS_ENDPOINT_URL is read when this is unset.
ENV_S3_ENDPOINT = "PLANTDX_S3_ENDPOINT"
ENV_NAMES = (
    ENV_DESTINATION,
    ENV_RATE,
    ENV_LOW_CONFIDENCE,
    ENV_MAX_MB,
    ENV_MAX_PER_S,
    ENV_STRIP_EXIF,
    ENV_QUEUE,
)
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class CaptureSettings:
    """What is captured, where, and the caps that keep it from costing the service anything.

    `rate`: share of ordinary answers sampled. Abstained answers, and answers whose calibrated
    top-1 probability is under `low_confidence`, are always captured. `max_mb`: the capture's
    total size (what is already there counts); `max_per_s`: captures accepted per second (0: no
    limit); `queue`: photos waiting for the writer (a full queue drops, never blocks)."""

    destination: str
    rate: float = 0.01
    low_confidence: float = 0.5
    max_mb: float = 1024.0
    max_per_s: float = 20.0
    strip_exif: bool = True
    queue: int = 64

    def __post_init__(self) -> None:
        if not self.destination:
            raise ConfigError("capture destination is empty")
        checks = (
            ("rate", self.rate, 0.0, 1.0),
            ("low-confidence threshold", self.low_confidence, 0.0, 1.0),
            ("max MB", self.max_mb, 0.0, math.inf),
            ("max per second", self.max_per_s, 0.0, math.inf),
        )
        for name, value, low, high in checks:
            if not (low <= value <= high) or math.isnan(value):
                raise ConfigError(f"capture {name} must be in [{low}, {high}], got {value}")
        if self.queue < 1:
            raise ConfigError(f"capture queue must hold at least 1 photo, got {self.queue}")

    @property
    def is_s3(self) -> bool:
        return self.destination.startswith("s3://")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)

    def resolved(self) -> CaptureSettings:
        """A folder destination made absolute (the stubs run in another directory)."""
        if self.is_s3:
            return self
        path = str(Path(self.destination).expanduser().resolve())
        return CaptureSettings(**{**self.__dict__, "destination": path})

    def to_env(self) -> dict[str, str]:
        return {
            ENV_DESTINATION: self.destination,
            ENV_RATE: repr(self.rate),
            ENV_LOW_CONFIDENCE: repr(self.low_confidence),
            ENV_MAX_MB: repr(self.max_mb),
            ENV_MAX_PER_S: repr(self.max_per_s),
            ENV_STRIP_EXIF: "1" if self.strip_exif else "0",
            ENV_QUEUE: str(self.queue),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CaptureSettings | None:
        """The settings in `env` (default: this process's); None when capture is off."""
        env = os.environ if env is None else env
        destination = env.get(ENV_DESTINATION, "").strip()
        if not destination:
            return None
        defaults = cls(destination=destination)

        def number(name: str, default: float) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                return float(text)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {text!r}") from None

        strip = env.get(ENV_STRIP_EXIF, "").strip().lower()
        if strip and strip not in TRUE | FALSE:
            raise ConfigError(f"{ENV_STRIP_EXIF} must be 1 or 0, got {strip!r}")
        return cls(
            destination=destination,
            rate=number(ENV_RATE, defaults.rate),
            low_confidence=number(ENV_LOW_CONFIDENCE, defaults.low_confidence),
            max_mb=number(ENV_MAX_MB, defaults.max_mb),
            max_per_s=number(ENV_MAX_PER_S, defaults.max_per_s),
            strip_exif=strip not in FALSE if strip else defaults.strip_exif,
            queue=int(number(ENV_QUEUE, defaults.queue)),
        )

    def describe(self) -> str:
        limit = f"{self.max_per_s:g}/s" if self.max_per_s else "no rate limit"
        metadata = "metadata stripped" if self.strip_exif else "metadata kept"
        return (
            f"capture to {self.destination}: {self.rate:.2%} of answers, every abstained or "
            f"under {self.low_confidence:g}; at most {self.max_mb:g} MB, {limit}; {metadata}"
        )
