"""The image statistics (plantdx.imagestats), the reference format's PSI, and the preprocess
backend publishing the statistics' histograms (run with a stand-in triton_python_backend_utils;
the real server is scraped in test_drift_rules)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from plantdx.imagestats import (
    EDGES,
    METRIC_PREFIX,
    bucket_counts,
    bucket_labels,
    image_stats,
    le_label,
)
from plantdx.preprocessing import PreprocessMeta, Preprocessor
from plantdx.reference import CONFIDENCE_EDGES, Distribution, Reference, psi

BACKENDS = Path(__file__).resolve().parents[2] / "model_repository/backends"


def _noise(size: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_each_statistic_measures_what_it_says() -> None:
    grey = np.full((128, 128, 3), 100, dtype=np.uint8)
    s = image_stats(grey)
    assert s.brightness == pytest.approx(100, abs=1)
    assert s.colourfulness == pytest.approx(0, abs=1e-6)
    assert s.sharpness == pytest.approx(0, abs=1e-6) and s.green_fraction == 0
    green = np.zeros((64, 64, 3), dtype=np.uint8)
    green[..., 1] = 200
    assert image_stats(green).green_fraction == 1.0
    blue = np.roll(green, 1, axis=2)
    assert blue[0, 0].tolist() == [0, 0, 200] and image_stats(blue).green_fraction == 0.0
    red_green = np.zeros((64, 64, 3), dtype=np.uint8)
    red_green[::2, :, 0] = 255
    red_green[1::2, :, 1] = 255
    assert image_stats(red_green).colourfulness > 100
    noisy = Image.fromarray(_noise())
    blurred = noisy.filter(ImageFilter.GaussianBlur(3))
    assert image_stats(noisy).sharpness > 20 * image_stats(blurred).sharpness
    dark = (np.asarray(noisy) // 3).astype(np.uint8)
    assert image_stats(dark).brightness < image_stats(noisy).brightness / 2
    # Size: the original photo's when given, else the array's.
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    assert image_stats(wide).aspect_ratio == pytest.approx(3.0)
    s = image_stats(wide, (4000, 3000))
    assert s.megapixels == pytest.approx(12.0) and s.aspect_ratio == pytest.approx(4 / 3)


def test_the_original_upright_size_survives_draft_decoding_and_exif_rotation() -> None:
    pre = Preprocessor(PreprocessMeta(image_size=64))
    img = Image.fromarray(_noise(size=400)[:, :300].copy())  # 300 wide, 400 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: upright it is 400 wide, 300 high
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    pixels, size = pre.decode_sized(buf.getvalue())
    assert pixels.shape == (64, 64, 3) and size == (400, 300)
    sizes: list[tuple[int, int]] = []
    _, errors = pre.decode_batch([buf.getvalue(), b"junk"], sizes)
    assert sizes == [(400, 300), (0, 0)] and errors[0] is None and errors[1] is not None


def test_buckets_are_prometheus_le_buckets() -> None:
    assert le_label(30) == "30" and le_label(0.05) == "0.05" and le_label(1.05) == "1.05"
    assert bucket_labels((0.5, 1, 2)) == ["0.5", "1", "2", "+Inf"]
    # (previous edge, edge]: a value on an edge counts in that edge's bucket, like `le`.
    assert bucket_counts([0.5, 0.6, 1.0, 7.0], (0.5, 1, 2)) == [1, 2, 0, 1]
    for name, edges in EDGES.items():
        assert list(edges) == sorted(set(edges)), name
    assert Distribution.histogram("confidence", [0] * (len(CONFIDENCE_EDGES) + 1)).n == 0
    with pytest.raises(ValueError):
        Distribution.histogram("brightness", [1, 2])


def test_the_served_confidence_histogram_has_the_reference_buckets() -> None:
    source = (BACKENDS / "postprocess.py").read_text()
    served = re.search(r"CONFIDENCE_BUCKETS = \[([^\]]*)\]", source)
    assert served and [float(x) for x in served.group(1).split(",")] == list(CONFIDENCE_EDGES)


def test_psi() -> None:
    same = [0.2, 0.3, 0.5]
    assert psi(same, same) == pytest.approx(0.0)
    assert psi([0.5, 0.5, 0.0], [0.1, 0.1, 0.8]) > 0.25
    assert 0 < psi([0.3, 0.3, 0.4], [0.32, 0.3, 0.38]) < 0.01
    with pytest.raises(ValueError):
        psi([1.0], [0.5, 0.5])


def test_reference_round_trip(tmp_path: Path) -> None:
    ref = Reference(
        {"brightness": Distribution.histogram("brightness", [1] * 12)},
        abstention_share=0.1,
        abstention_n=10,
        sources={"statistics": "x"},
    )
    ref.save(tmp_path / "reference.json")
    again = Reference.load(tmp_path / "reference.json")
    assert again == ref
    (tmp_path / "bad.json").write_text("{")
    from plantdx.exceptions import RepositoryError

    with pytest.raises(RepositoryError):
        Reference.load(tmp_path / "bad.json")


def test_cost_per_image() -> None:
    """The statistics run on every served image: well under a few milliseconds at 256 px
    (about 0.75 ms on the 2-core machine; the bound leaves room for a busy one)."""
    photo = _noise()
    for _ in range(20):
        image_stats(photo, (256, 256))
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        image_stats(photo, (256, 256))
    assert (time.perf_counter() - start) / n < 0.004


# --- the preprocess backend -------------------------------------------------------------------
class _Metric:
    def __init__(self, labels: dict[str, str], buckets: Any = None) -> None:
        self.labels, self.buckets, self.observed = labels, buckets, []

    def increment(self, n: float) -> None:
        pass

    def observe(self, x: float) -> None:
        self.observed.append(x)


class _Family:
    COUNTER, HISTOGRAM = "counter", "histogram"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def Metric(self, labels: dict[str, str], buckets: Any = None) -> _Metric:
        return _Metric(labels, buckets)


class _Tensor:
    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data = name, data

    def as_numpy(self) -> np.ndarray:
        return self.data


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name: t.data for t in output_tensors}
        self.error = error


def _preprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = _Tensor  # type: ignore[attr-defined]
    m.InferenceResponse = _Response  # type: ignore[attr-defined]
    m.TritonError = str  # type: ignore[attr-defined]
    m.MetricFamily = _Family  # type: ignore[attr-defined]
    m.get_input_tensor_by_name = lambda r, name: r.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", m)
    spec = importlib.util.spec_from_file_location("preprocess_stats", BACKENDS / "preprocess.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "3").mkdir()
    PreprocessMeta(image_size=64).save(tmp_path / "3" / "preprocessing.json")
    model = module.TritonPythonModel()
    config = {"output": [{"name": "PIXELS"}, {"name": "CALIBRATION"}]}
    model.initialize(
        {
            "model_repository": str(tmp_path),
            "model_version": "3",
            "model_name": "preprocess",
            "model_config": json.dumps(config),
        }
    )
    return module, model


def _request(*images: bytes) -> dict[str, _Tensor]:
    return {"IMAGE": _Tensor("IMAGE", np.array([[b] for b in images], dtype=np.object_))}


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_preprocess_observes_every_decoded_photo_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, model = _preprocess(tmp_path, monkeypatch)
    photo = _noise(size=120)
    ok, bad, two = model.execute(
        [_request(_png(photo)), _request(b"not an image"), _request(_png(photo), _png(photo))]
    )
    assert ok.error is None and two.error is None and bad.error and not bad.outputs
    assert set(model.stat_families) == set(EDGES)
    for name, metric in model.stat_metrics.items():
        assert model.stat_families[name].name == f"{METRIC_PREFIX}{name}"
        assert model.stat_families[name].kind == "histogram"
        assert metric.labels == {"model": "preprocess", "version": "3"}
        assert metric.buckets == list(EDGES[name])
        assert len(metric.observed) == 3  # the three decoded photos, not the rejected one
    expected = image_stats(Preprocessor(PreprocessMeta(image_size=64)).decode(_png(photo)))
    assert model.stat_metrics["brightness"].observed[0] == pytest.approx(expected.brightness)
    assert model.stat_metrics["megapixels"].observed[0] == pytest.approx(120 * 120 / 1e6)

    def broken(*args: Any) -> Any:
        raise RuntimeError("statistics failed")

    monkeypatch.setattr(module, "image_stats", broken)
    (again,) = model.execute([_request(_png(photo))])  # answered; just not observed
    assert again.error is None and again.outputs["PIXELS"].shape == (1, 3, 64, 64)
    assert len(model.stat_metrics["brightness"].observed) == 3


def test_preprocess_observes_a_sample_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drift_sample_rate` 0 observes no photo (and costs none); the exported default samples."""
    from plantdx.model_repository.config import ServingOptions, preprocess_config

    cfg = preprocess_config(64, ServingOptions())
    assert float(cfg.parameters["drift_sample_rate"].string_value) == 0.25
    _module, model = _preprocess(tmp_path, monkeypatch)
    model.sample_rate = 0.0
    photo = _png(_noise(size=120))
    (ok,) = model.execute([_request(photo, photo, photo)])
    assert ok.error is None
    assert all(len(m.observed) == 0 for m in model.stat_metrics.values())
    model.sample_rate = 0.5
    for _ in range(20):
        model.execute([_request(photo, photo, photo, photo, photo)])
    seen = len(model.stat_metrics["brightness"].observed)
    assert 20 < seen < 80  # about half of 100
