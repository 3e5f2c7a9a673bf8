"""The optional CROP input through the real Triton server: served answers equal `plantdx
evaluate`'s without and with the crop (over HTTP and gRPC, on real PlantDoc field photos when
present and on drawn ones), the response cache never mixes the two, bad crop names are refused
per request inside one dynamic batch while the others are answered, and the explanation
follows the crop's top class. The client, CLI and curl: test_serving_crop_client.py."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.crops import CropMap
from plantdx.decision import UNCERTAIN

from helpers.crops import (
    CLASSES,
    FIELD,
    SAID,
    Setup,
    drawn_photo,
    grpc_infer,
    make_setup,
    serve,
    stats,
)

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("crop"))


@pytest.fixture(scope="module")
def server(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from serve(setup, tmp_path_factory.mktemp("crop-triton"))


def _evaluate(setup: Setup, folder: Path, crop: bool, out: Path) -> dict[str, Any]:
    from plantdx.training import EvaluateConfig, evaluate_checkpoint

    cfg = EvaluateConfig(
        checkpoint=str(setup.run / "best.pt"),
        data=str(folder),
        out=str(out),
        device="cpu",
        crop_from_labels=crop,
    )
    return evaluate_checkpoint(cfg)


def _served(client: Any, folder: Path, crop: bool) -> dict[str, Any]:
    """The figures evaluate reports, from the server's answers (one crop name per folder)."""
    from plantdx.crops import crop_of

    paths = sorted(p for p in folder.glob("*/*") if p.suffix == ".jpg" or p.is_symlink())
    by_crop: dict[str | None, list[Path]] = {}
    for p in paths:
        by_crop.setdefault(SAID[crop_of(p.parent.name)] if crop else None, []).append(p)
    answers = {}
    for said, group in by_crop.items():
        for outcome in client.predict_many(group, concurrency=8, top_k=1, crop=said):
            assert outcome.prediction is not None, outcome.error
            answers[outcome.source] = outcome.prediction
    right = np.array([answers[str(p)].label == p.parent.name for p in paths])
    answered = np.array([answers[str(p)].decision != UNCERTAIN for p in paths])
    wrong = {str(p): answers[str(p)].label for p, r in zip(paths, right, strict=True) if not r}
    return {
        "n": len(paths),
        "accuracy": float(right.mean()),
        "coverage": float(answered.mean()),
        "selective_accuracy": float(right[answered].mean()) if answered.any() else 0.0,
        "wrong": wrong,
    }


@pytest.mark.parametrize("photos", ["field", "drawn"])
def test_served_answers_equal_evaluate_with_and_without_the_crop(
    setup: Setup, server: Any, tmp_path: Path, photos: str
) -> None:
    from plantdx.client import PlantDxClient

    if photos not in setup.folders:
        pytest.skip(f"the PlantDoc field photos are not at {FIELD} (set PLANTDX_SHARED_DATA)")
    folder = setup.folders[photos]
    figures = {}
    for crop in (False, True):
        report = _evaluate(setup, folder, crop, tmp_path / f"eval-{crop}")
        expected = {k: report[k] for k in ("n", "accuracy", "coverage", "selective_accuracy")}
        expected["wrong"] = {m["file"]: m["predicted"] for m in report["misclassified"]}
        for protocol in ("http", "grpc"):
            url = server.http_url if protocol == "http" else server.grpc_url
            with PlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
                assert _served(client, folder, crop) == expected, (photos, protocol, crop)
        figures[crop] = expected
    plain, known = figures[False], figures[True]
    # The figures are worth comparing: the crop changed answers, some are uncertain.
    assert known["accuracy"] > plain["accuracy"] and known["wrong"] != plain["wrong"]
    assert 0 < plain["coverage"] < 1 and 0 < known["coverage"] < 1


def test_the_response_cache_never_mixes_answers_with_and_without_the_crop(
    setup: Setup, server: Any
) -> None:
    from plantdx.model_repository.config import parse_pbtxt

    configs = {
        n: parse_pbtxt((setup.repo / n / "config.pbtxt").read_text())
        for n in ("plantdx", "postprocess", "classifier")
    }
    # Only the classifier caches, keyed on its pixels: its logits do not depend on the crop,
    # and the crop is applied after it, in the postprocess, which never caches.
    assert configs["classifier"].response_cache.enable
    assert not configs["plantdx"].response_cache.enable
    assert not configs["postprocess"].response_cache.enable
    photo = drawn_photo(setup, "Pepper,_bell___healthy")
    before = int(
        stats(server.grpc_url, "classifier")["inference_stats"].get("cache_hit", {}).get("count", 0)
    )
    answers = [grpc_infer(server.grpc_url, photo, c) for c in (None, b"potato", None, b"potato")]
    hits = int(
        stats(server.grpc_url, "classifier")["inference_stats"].get("cache_hit", {}).get("count", 0)
    )
    assert hits - before >= 3  # the same pixels: served from the cache after the first
    (plain, d_plain), (crop, d_crop) = answers[0], answers[1]
    assert np.array_equal(answers[2][0], plain) and np.array_equal(answers[3][0], crop)
    assert (answers[2][1] == d_plain).all() and (answers[3][1] == d_crop).all()
    potato = CropMap.derive(CLASSES).masks(["potato"])[0]
    assert crop[0, ~potato].max() == 0.0 and crop[0, potato].sum() == pytest.approx(1.0)
    assert plain[0, ~potato].sum() > 0.0


def _concurrently(url: str, photo: bytes, sent: list[tuple[bytes | None, int]]) -> list[Any]:
    """Send every request at once (one thread each); the answers, or the exceptions."""
    barrier = threading.Barrier(len(sent))
    results: list[Any] = [None] * len(sent)

    def send(i: int) -> None:
        crop, n = sent[i]
        barrier.wait()
        try:
            results[i] = grpc_infer(url, photo, crop, n)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sent))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


BAD = {
    b"banana": "unknown crop 'banana'; this model knows Pepper,_bell, Potato, Tomato",
    b"": "the crop name is empty",
    b"x" * 10_240: "the crop name is 10240 bytes long",
    b"\xff\xfe\xfd": "the crop name is not UTF-8",
}


def test_bad_crops_fail_alone_in_one_dynamic_batch(setup: Setup, server: Any) -> None:
    photo = drawn_photo(setup)
    expected = {c: grpc_infer(server.grpc_url, photo, c) for c in (None, b"tomato")}

    def check(crop: bytes | None, got: Any) -> None:
        if crop in BAD:
            assert isinstance(got, Exception), crop
            text = str(got)
            assert "StatusCode.INVALID_ARGUMENT" in text and f"invalid crop: {BAD[crop]}" in text
            assert len(text) < 400  # the refused text is never echoed in full
            return
        assert not isinstance(got, Exception), (crop, got)
        want = expected[None if crop is None else b"tomato"]
        assert np.array_equal(got[0], want[0]) and (got[1] == want[1]).all(), crop

    # Two good crops and four bad ones reach the postprocess together: one execute() of 6
    # (the postprocess waits BATCH_DELAY_US to fill a batch; tried again if the machine was
    # too busy to deliver them within it).
    sent = [b"tomato", b"Tomatoes", *BAD]
    one_batch = []
    for _ in range(3):
        before = stats(server.grpc_url, "postprocess")
        results = _concurrently(server.grpc_url, photo, [(c, 1) for c in sent])
        for crop, got in zip(sent, results, strict=True):
            check(b"tomato" if crop == b"Tomatoes" else crop, got)
        one_batch.append(_batch_sizes(stats(server.grpc_url, "postprocess"), before))
        if one_batch[-1] == {len(sent): 1}:
            break
    assert one_batch[-1] == {len(sent): 1}, one_batch
    # With requests that carry no crop: each answered as alone. (Triton's dynamic batcher does
    # not put requests with and without an optional input in one batch: they run apart.)
    mixed = [None, b"tomato", b"banana", None, b"", b"tomato"]
    for crop, got in zip(
        mixed, _concurrently(server.grpc_url, photo, [(c, 1) for c in mixed]), strict=True
    ):
        check(crop, got)
    # One request of two images with one crop: Triton's own batch-size check refuses it.
    (count,) = _concurrently(server.grpc_url, photo, [(b"tomato", 2)])
    assert isinstance(count, Exception) and "batch size does not match" in str(count)
    assert server.is_ready()
    time.sleep(1.2)  # custom metrics are published once a second
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        metrics = resp.read().decode()
    assert "banana" not in metrics and "xxxxxxxx" not in metrics and "Tomatoes" not in metrics


def _batch_sizes(after: dict[str, Any], before: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size between two statistics snapshots."""

    def counts(stats: dict[str, Any]) -> dict[int, int]:
        return {
            int(b["batch_size"]): int(b["compute_infer"].get("count", 0))
            for b in stats.get("batch_stats", [])
        }

    a, b = counts(after), counts(before)
    return {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)}


def test_the_explanation_follows_the_crop(setup: Setup, server: Any) -> None:
    import torch

    from plantdx.checkpoint import load_checkpoint
    from plantdx.client import PlantDxClient
    from plantdx.heatmap import HEATMAP_TOLERANCE, class_heatmaps
    from plantdx.models.cam import cam_model
    from plantdx.preprocessing import Normalizer, Preprocessor

    ckpt = load_checkpoint(setup.run / "best.pt")
    wrapper = cam_model(ckpt.build_model(), ckpt.model_name).eval()
    pre, norm = Preprocessor(ckpt.preprocessing), Normalizer(ckpt.preprocessing)
    potato = CropMap.derive(CLASSES).masks(["potato"])[0]
    with PlantDxClient(server.grpc_url, "grpc") as client:
        for name in CLASSES[:4]:
            photo = drawn_photo(setup, name)
            with torch.no_grad():
                x = torch.from_numpy(norm(pre.decode(photo))[None])
                logits, cams = (t.numpy() for t in wrapper(x))
            top = int(np.where(potato, logits[0], -np.inf).argmax())
            explained = client.explain(photo, crop="potato")
            plain = client.predict(photo, crop="potato", top_k=3)
            assert explained.prediction.label == plain.label == CLASSES[top]
            assert explained.prediction.decision == plain.decision
            assert [c.label for c in plain.top_k] == [c.label for c in explained.prediction.top_k]
            assert all(c.label.startswith("Potato") for c in plain.top_k)  # zeros left out
            heat = class_heatmaps(cams, logits, np.array([top]))[0]
            assert float(np.abs(explained.heatmap - heat).max()) <= HEATMAP_TOLERANCE


# Exactly the crop example in README.md, with the server address and file filled in.
