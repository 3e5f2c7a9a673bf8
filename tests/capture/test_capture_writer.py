"""The capture writer: what it writes, metadata removal, caps, and drops counted, never raised."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantdx.capture.record import Sidecar, sniff, strip_metadata
from plantdx.capture.settings import CaptureSettings
from plantdx.capture.store import LocalStore
from plantdx.capture.writer import CaptureWriter, reason_for
from plantdx.exceptions import ConfigError

from helpers.capture import capture, gps_exif, photo


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def writer(root: Path, **kw: object) -> CaptureWriter:
    clock = kw.pop("clock", None)
    settings = CaptureSettings(destination=str(root), **kw)  # type: ignore[arg-type]
    extra = {"clock": clock} if clock else {}
    return CaptureWriter(settings, LocalStore(root), **extra)  # type: ignore[arg-type]


def test_settings_round_trip_through_the_environment() -> None:
    s = CaptureSettings("s3://b/p", rate=0.2, low_confidence=0.4, max_mb=5, max_per_s=3)
    assert CaptureSettings.from_env(s.to_env()) == s
    assert CaptureSettings.from_env({}) is None
    assert CaptureSettings.from_env({"PLANTDX_CAPTURE": ""}) is None
    with pytest.raises(ConfigError, match="rate"):
        CaptureSettings("/x", rate=1.5)
    with pytest.raises(ConfigError, match="PLANTDX_CAPTURE_MAX_MB"):
        CaptureSettings.from_env({"PLANTDX_CAPTURE": "/x", "PLANTDX_CAPTURE_MAX_MB": "lots"})


def test_reasons() -> None:
    s = CaptureSettings("/x", rate=0.1, low_confidence=0.5)
    assert reason_for(s, "uncertain", 0.9, 0.99) == "abstained"
    assert reason_for(s, "rust", 0.49, 0.99) == "low_confidence"
    assert reason_for(s, "rust", 0.5, 0.05) == "sampled"
    assert reason_for(s, "rust", 0.5, 0.10) is None


def test_writes_photo_and_sidecar_in_the_capture_format(tmp_path: Path) -> None:
    w = writer(tmp_path, strip_exif=False).start()
    data = photo(1)
    assert w.offer(capture(data)) is None
    assert w.flush()
    w.close()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    assert files == [
        "2025-06-01",
        f"2025-06-01/101500-{sha[:16]}.jpg",
        f"2025-06-01/101500-{sha[:16]}.json",
    ]
    side = json.loads((tmp_path / f"2025-06-01/101500-{sha[:16]}.json").read_text())
    assert side == {
        "time": "2025-06-01T10:15:00.000+00:00",
        "version": "1",
        "prediction": "rust",
        "confidence": 0.3,
        "decision": "uncertain",
        "sha256": sha,
        "reason": "abstained",
        "file": f"101500-{sha[:16]}.jpg",
        "model": "plantdx",
        "bytes": len(data),
    }
    assert (tmp_path / "2025-06-01" / side["file"]).read_bytes() == data
    assert w.totals()["written"] == 1
    assert w.take_outcomes() == {("1", "written"): 1}
    assert w.take_outcomes() == {}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_strip_metadata_removes_exif_and_keeps_pixels(fmt: str) -> None:
    data = photo(2, fmt=fmt, exif=gps_exif())
    assert Image.open(io.BytesIO(data)).getexif().get(0x010F) == "LeafCam"
    stripped, suffix = strip_metadata(data, sniff(data) or "")
    assert suffix == {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    img = Image.open(io.BytesIO(stripped))
    assert not img.getexif() and "exif" not in img.info
    assert b"LeafCam" not in stripped
    if fmt != "WEBP":  # lossless: the very same pixels
        before = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(np.asarray(img.convert("RGB")), before)


def test_strip_metadata_applies_a_rotation_first() -> None:
    data = photo(3, size=32, exif=gps_exif(orientation=6))  # 90° clockwise to display
    wide = Image.open(io.BytesIO(photo(3, size=32))).resize((40, 32))
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=gps_exif(orientation=6))
    stripped, _ = strip_metadata(buf.getvalue(), "jpg")
    img = Image.open(io.BytesIO(stripped))
    assert img.size == (32, 40) and not img.getexif()
    assert b"LeafCam" not in strip_metadata(data, "jpg")[0]


def test_rate_cap_counts_drops(tmp_path: Path) -> None:
    clock = Clock()
    w = writer(tmp_path, max_per_s=2, clock=clock)
    outcomes = [w.offer(capture(photo(i))) for i in range(5)]
    assert outcomes == [None, None, "dropped_cap", "dropped_cap", "dropped_cap"]
    clock.t += 0.5  # one token back
    assert w.offer(capture(photo(9))) is None
    assert w.offer(capture(photo(10))) == "dropped_cap"


def test_full_queue_drops_without_waiting(tmp_path: Path) -> None:
    w = writer(tmp_path, queue=2, max_per_s=0)  # not started: nothing leaves the queue
    assert [w.offer(capture(photo(i), version="3")) for i in range(3)] == [
        None,
        None,
        "dropped_queue",
    ]
    assert w.take_outcomes() == {("3", "dropped_queue"): 1}
    w.start()
    assert w.flush()
    w.close()
    assert w.totals() == {"written": 2, "dropped_queue": 1, "dropped_cap": 0, "dropped_error": 0}


def test_size_cap_counts_what_is_already_there(tmp_path: Path) -> None:
    (tmp_path / "2025-05-01").mkdir()
    (tmp_path / "2025-05-01" / "old.jpg").write_bytes(b"x" * 95_000)
    data = photo(4, size=96)
    assert 5_000 < len(data) < 9_000  # one fits under 104,857 bytes, two do not
    w = writer(tmp_path, max_mb=0.1, strip_exif=False).start()  # 104,857 bytes
    w.offer(capture(data))
    w.offer(capture(photo(5, size=96)))
    assert w.flush()
    w.close()
    totals = w.totals()
    assert totals["written"] == 1 and totals["dropped_cap"] == 1


def test_unwritable_destination_drops_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    w = writer(blocker / "capture", max_per_s=0).start()  # a folder under a file: never writable
    for i in range(3):
        assert w.offer(capture(photo(i))) is None
    assert w.flush()
    w.close()
    assert w.totals()["dropped_error"] == 3 and w.totals()["written"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_drops_and_counts(tmp_path: Path) -> None:
    root = tmp_path / "cap"
    (root / "2025-06-01").mkdir(parents=True)
    w = writer(root, max_per_s=0).start()
    w.offer(capture(photo(1)))
    assert w.flush()
    for d in (root, root / "2025-06-01"):
        d.chmod(0o555)
    try:
        w.offer(capture(photo(2)))
        assert w.flush()
    finally:
        for d in (root, root / "2025-06-01"):
            d.chmod(0o755)
    w.close()
    assert w.totals()["written"] == 1 and w.totals()["dropped_error"] == 1


def test_after_a_failed_write_the_destination_rests(tmp_path: Path) -> None:
    clock = Clock()
    root = tmp_path / "cap"
    root.write_bytes(b"")  # a file where the folder should be
    w = writer(root, max_per_s=0, clock=clock).start()
    w.offer(capture(photo(1)))
    assert w.flush()
    root.unlink()  # writable again, but within the cool-down nothing is tried
    w.offer(capture(photo(2)))
    assert w.flush()
    assert not root.exists()
    clock.t += 5
    w.offer(capture(photo(3)))
    assert w.flush()
    w.close()
    assert w.totals()["dropped_error"] == 2 and w.totals()["written"] == 1


def test_sidecar_round_trip() -> None:
    s = Sidecar("t", "1", "rust", 0.5, "rust", "ab", "sampled", "f.jpg", "plantdx", 3)
    assert Sidecar.from_json(s.to_json()) == s
