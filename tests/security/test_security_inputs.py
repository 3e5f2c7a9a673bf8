"""What a caller can send, and what the capture keeps of it: the postprocess's version labels,
metadata in captured photos (MPO, appended data), planted capture sidecars, the pixel and batch
caps. The pixel cap on the real server: test_security_server."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from plantdx.capture.feedback import export_feedback
from plantdx.capture.record import sniff, strip_metadata
from plantdx.capture.settings import CaptureSettings
from plantdx.capture.store import LocalStore
from plantdx.capture.writer import CaptureWriter
from plantdx.exceptions import CaptureError, PreprocessError
from plantdx.preprocessing import MAX_PIXELS, open_image

from helpers.backend_stub import LABELS, StubTensor, load_backend
from helpers.capture import capture, photo

SECRET_PLACE = "SECRET-FIELD-7"  # a GPS tag value no stored photo may contain


# -- the postprocess's version label ------------------------------------------------------------
def _postprocess(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    post = repo / "postprocess"
    post.mkdir(parents=True)
    (post / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = {
        "input": [{"name": "LOGITS"}, {"name": "CALIBRATION"}],
        "output": [{"name": "PROBABILITIES", "dims": ["3"]}, {"name": "DECISION"}],
    }
    model = load_backend("postprocess", monkeypatch).TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(post)})
    return model


def _versions_seen(model: Any) -> set[str]:
    return {m.labels["version"] for m in model.confidence.values()}


def test_forged_versions_sent_to_the_postprocess_make_no_new_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    for v in ("1", "2"):
        (repo / "preprocess" / v).mkdir(parents=True)
    model = _postprocess(repo, monkeypatch)
    logits = np.zeros((1, 3), dtype=np.float32)
    forged = [1.0, 2.0, 3.0, 77.0, 123456.0, -4.0, 2.5, float("inf"), float("nan")]
    for version in forged:
        cal = np.array([[1.0, 0.0, version]], dtype=np.float32)
        model.execute([{"LOGITS": StubTensor("L", logits), "CALIBRATION": StubTensor("C", cal)}])
    assert _versions_seen(model) == {"1", "2", "unknown"}
    # A version published while the postprocess runs is recognised (rescanned at most 1/s).
    (repo / "preprocess" / "3").mkdir()
    model.versions._scanned_at -= 10
    cal = np.array([[1.0, 0.0, 3.0]], dtype=np.float32)
    model.execute([{"LOGITS": StubTensor("L", logits), "CALIBRATION": StubTensor("C", cal)}])
    assert _versions_seen(model) == {"1", "2", "3", "unknown"}


def test_without_a_repository_view_the_labels_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _postprocess(tmp_path / "alone", monkeypatch)  # no preprocess/ beside it
    logits = np.zeros((1, 3), dtype=np.float32)
    for version in range(40):
        cal = np.array([[1.0, 0.0, float(version)]], dtype=np.float32)
        model.execute([{"LOGITS": StubTensor("L", logits), "CALIBRATION": StubTensor("C", cal)}])
    assert len(_versions_seen(model)) == model.versions.limit + 1  # and "unknown"


# -- metadata in captured photos ----------------------------------------------------------------
def _gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "LeafCam"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 24.0)
    gps[0x12] = SECRET_PLACE  # GPSMapDatum
    return exif


def _frame(seed: int, **kw: Any) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), **kw)


def _mpo_with_gps() -> bytes:
    buf = io.BytesIO()
    _frame(1).save(buf, format="MPO", save_all=True, append_images=[_frame(2)], exif=_gps_exif())
    data = buf.getvalue()
    assert data.count(SECRET_PLACE.encode()) >= 1 and Image.open(io.BytesIO(data)).n_frames == 2
    return data


def _jpeg_with_appended_gps_jpeg() -> bytes:
    plain, tagged = io.BytesIO(), io.BytesIO()
    _frame(3).save(plain, format="JPEG")
    _frame(4).save(tagged, format="JPEG", exif=_gps_exif())
    return plain.getvalue() + tagged.getvalue()


def _stored(tmp_path: Path, data: bytes) -> bytes:
    settings = CaptureSettings(destination=str(tmp_path), max_per_s=0, queue=4)
    w = CaptureWriter(settings, LocalStore(tmp_path)).start()
    assert w.offer(capture(data)) is None  # type: ignore[arg-type]
    assert w.flush()
    w.close()
    assert w.totals()["written"] == 1
    (path,) = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".json"]
    return path.read_bytes()


@pytest.mark.parametrize("make", [_mpo_with_gps, _jpeg_with_appended_gps_jpeg])
def test_a_captured_photo_keeps_no_gps_byte(make: Any, tmp_path: Path) -> None:
    data = make()
    assert SECRET_PLACE.encode() in data
    stored = _stored(tmp_path, data)
    assert SECRET_PLACE.encode() not in stored
    assert b"Exif\x00" not in stored and b"LeafCam" not in stored
    img = Image.open(io.BytesIO(stored))
    assert img.format == "JPEG" and not img.getexif()
    assert stored.count(b"\xff\xd8") == 1 and stored.endswith(b"\xff\xd9")  # one image, cut
    # The pixels of the first image are kept.
    first = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(img.convert("RGB")), first)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_re_encoded_without_what_follows(fmt: str) -> None:
    buf = io.BytesIO()
    _frame(5).save(buf, format=fmt)
    data = buf.getvalue() + b"trailing " + SECRET_PLACE.encode()
    stored, suffix = strip_metadata(data, sniff(data) or "")
    assert suffix == "png" and SECRET_PLACE.encode() not in stored
    Image.open(io.BytesIO(stored)).load()


# -- planted capture sidecars -------------------------------------------------------------------
def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_feedback_export_refuses_planted_sidecars(tmp_path: Path) -> None:
    cap, out = tmp_path / "cap", tmp_path / "out"
    day = cap / "2025-06-01"
    day.mkdir(parents=True)
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(photo(9))
    legit = photo(10)

    def plant(stem: str, **changes: object) -> None:
        fields = {
            "time": "2025-06-01T10:15:00.000+00:00",
            "version": "1",
            "prediction": "rust",
            "confidence": 0.3,
            "decision": "rust",
            "sha256": stem[-2:] * 32,
            "reason": "sampled",
            "file": f"{stem}.jpg",
            "model": "plantdx",
            "bytes": len(legit),
            **changes,
        }
        if not (day / f"{stem}.jpg").exists():
            (day / f"{stem}.jpg").write_bytes(legit)
        (day / f"{stem}.json").write_text(json.dumps(fields))

    plant("101500-00000000000000ab")  # the one real capture
    refused = {
        "101501-0000000000000001": {"file": "../../outside/secret.jpg"},  # reads outside
        "101502-0000000000000002": {"sha256": "../../../../escaped"},  # writes outside --out
        "101503-0000000000000003": {"prediction": "../x"},
        "101504-0000000000000004": {"file": "/etc/hostname"},
        "101505-0000000000000005": {"confidence": "high"},
        "101506-0000000000000006": {"version": "1/../../x"},
        "101508-0000000000000008": {"file": "101500-00000000000000ab.jpg"},  # another's photo
        "101509-0000000000000009": {"sha256": "AB" * 32},
    }
    for stem, changes in refused.items():
        plant(stem, **changes)
    # A photo that is a link out of the capture.
    os.symlink(secret, day / "101507-0000000000000007.jpg")
    plant("101507-0000000000000007")
    outside_before = {f for f in _files(tmp_path) if not f.startswith("out")}
    result = export_feedback(str(cap), out)
    assert {f for f in _files(tmp_path) if not f.startswith("out")} == outside_before
    assert result.added == 1 and result.refused == len(refused) + 1
    written = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith("manifest")]
    assert [p.read_bytes() for p in written] == [legit]
    assert all(secret.read_bytes() != p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_feedback_export_writes_nothing_through_a_link_in_out(tmp_path: Path) -> None:
    from helpers.capture import fill

    cap, out, elsewhere = tmp_path / "cap", tmp_path / "out", tmp_path / "elsewhere"
    fill(LocalStore(cap), [capture(photo(11), decision="rust", prediction="rust")])
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "rust")
    with pytest.raises(CaptureError, match="outside"):
        export_feedback(str(cap), out)
    assert list(elsewhere.iterdir()) == []


def test_local_store_keys_stay_inside_the_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cap")
    (tmp_path / "secret").write_bytes(b"x")
    for key in ("../secret", "/etc/hostname", "a/../../secret"):
        with pytest.raises(CaptureError):
            store.get(key)
        with pytest.raises(CaptureError):
            store.put(key, b"y")
    assert (tmp_path / "secret").read_bytes() == b"x"


# -- the pixel cap ------------------------------------------------------------------------------
def test_the_pixel_cap_is_decided_from_the_header() -> None:
    from helpers.serving import png_header_only

    assert MAX_PIXELS == 16_000_000
    with pytest.raises(PreprocessError) as info:
        open_image(png_header_only(8000, 5000))  # 40 MP announced, 200 bytes sent
    assert info.value.reason == "too_many_pixels"
    with pytest.raises(PreprocessError) as info:
        open_image(png_header_only(4001, 4000))
    assert info.value.reason == "too_many_pixels"
