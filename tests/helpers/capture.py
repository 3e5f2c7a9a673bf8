"""Photos and captures for the capture and feedback tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image

from plantdx.capture.settings import CaptureSettings
from plantdx.capture.writer import CaptureWriter


def photo(seed: int, *, size: int = 64, fmt: str = "JPEG", exif: Image.Exif | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gps_exif(orientation: int = 1) -> Image.Exif:
    """EXIF with a camera make, a GPS position and an orientation."""
    exif = Image.Exif()
    exif[0x010F] = "LeafCam"  # Make
    exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 24.0)
    gps[3] = "E"
    gps[4] = (2.0, 21.0, 3.0)
    return exif


def capture(data: bytes, **kw: object) -> object:
    from plantdx.capture.writer import Capture

    fields: dict[str, object] = {
        "data": data,
        "when": datetime(2025, 6, 1, 10, 15, 0, tzinfo=timezone.utc),
        "version": "1",
        "prediction": "rust",
        "confidence": 0.3,
        "decision": "uncertain",
        "reason": "abstained",
    }
    fields.update(kw)
    return Capture(**fields)  # type: ignore[arg-type]


def fill(store: object, captures: list[object]) -> None:
    """Write `captures` into `store` through a real CaptureWriter."""
    settings = CaptureSettings(destination="unused", max_per_s=0, queue=100)
    w = CaptureWriter(settings, store).start()  # type: ignore[arg-type]
    for c in captures:
        assert w.offer(c) is None  # type: ignore[arg-type]
    assert w.flush()
    w.close()
    assert w.totals()["written"] == len(captures)


def with_threshold(threshold: float) -> Callable[[str, Any], None]:
    """A config tweak for copy_repo: the postprocess abstains under `threshold`."""

    def tweak(name: str, cfg: Any) -> None:
        if name == "postprocess":
            cfg.parameters["abstain_threshold"].string_value = repr(threshold)

    return tweak
