"""The optional CROP input through the real Triton server: served answers equal `plantdx
evaluate`'s without and with the crop (over HTTP and gRPC, on real PlantDoc field photos when
present and on drawn ones), the response cache never mixes the two, bad crop names are refused
per request inside one dynamic batch while the others are answered, and the explanation
follows the crop's top class."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.crops import CropMap
from plantdx.decision import UNCERTAIN, DecisionRule

from conftest import SHARED_DATA
from serving_helpers import copy_repo, jpeg, start_server

pytestmark = pytest.mark.triton

FIELD = SHARED_DATA / "plantdoc-field-train"
CLASSES = (
    "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy",
    "Potato___Early_blight",
    "Potato___Late_blight",
    "Tomato___Bacterial_spot",
    "Tomato___Early_blight",
    "Tomato___Late_blight",
    "Tomato___Leaf_Mold",
    "Tomato___Septoria_leaf_spot",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus",
    "Tomato___Tomato_mosaic_virus",
    "Tomato___healthy",
)
# What a farmer would type for each crop: matched by the server, not by the test.
SAID = {"Pepper,_bell": "bell pepper", "Potato": "Potato", "Tomato": "tomatoes"}
PER_CLASS = 2
BATCH_DELAY_US = 300_000  # the postprocess waits this long to fill a batch: one batch below


@dataclass
class Setup:
    run: Path
    repo: Path
    folders: dict[str, Path]  # "drawn" (always) and "field" (when the photos are present)
    rule: DecisionRule


def _drawn_folder(root: Path) -> Path:
    """Drawn leaves filed under the model's class folders (the label is the folder)."""
    from plantdx.synth import CLASSES as PAINTED
    from plantdx.synth import draw_leaf

    rng = np.random.default_rng(5)
    for i, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            leaf = draw_leaf(PAINTED[(i + k) % len(PAINTED)], rng, size=128)
            (root / name / f"drawn_{k}.jpg").write_bytes(jpeg(leaf))
    return root


def _field_folder(root: Path) -> Path:
    """The first photos of each class of the field set, linked (never copied) into a folder."""
    for name in CLASSES:
        photos = sorted(p for p in (FIELD / name).iterdir() if p.is_file())[:PER_CLASS]
        (root / name).mkdir(parents=True)
        for p in photos:
            (root / name / p.name).symlink_to(p)
    return root


def _top_probabilities(ckpt: Any, folders: list[Path], rule: DecisionRule) -> np.ndarray:
    """In-process top probabilities of every photo, without and with its crop."""
    import torch

    from plantdx.data import scan_image_folder
    from plantdx.preprocessing import Normalizer, Preprocessor

    pre, norm = Preprocessor(ckpt.preprocessing), Normalizer(ckpt.preprocessing)
    masks = CropMap.derive(CLASSES).class_masks()
    tops = []
    for folder in folders:
        found = scan_image_folder(folder, min_classes=1)
        labels = [CLASSES.index(found.class_names[s.label]) for s in found.samples]
        x = np.stack([norm(pre.decode(s.path.read_bytes())) for s in found.samples])
        with torch.no_grad():
            z = ckpt.build_model()(torch.from_numpy(x)).numpy()
        for allowed in (None, masks[labels]):
            tops.append(rule.probabilities(z, allowed).max(axis=1))
    return np.concatenate(tops)


def _threshold_in_a_gap(tops: np.ndarray) -> float:
    """Halfway across the widest gap between the middle photos' top probabilities: some
    photos answered, some not, none near the threshold (PyTorch and ONNX differ by ~1e-6)."""
    s = np.sort(tops)
    lo, hi = len(s) // 4, 3 * len(s) // 4
    gaps = np.diff(s[lo:hi])
    i = int(gaps.argmax())
    assert gaps[i] > 1e-3, gaps.max()
    return float(s[lo + i] + s[lo + i + 1]) / 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    from plantdx.checkpoint import load_checkpoint, save_checkpoint
    from plantdx.export import ExportConfig, export

    from export_helpers import tiny_checkpoint

    tmp = tmp_path_factory.mktemp("crop")
    folders = {"drawn": _drawn_folder(tmp / "drawn")}
    if FIELD.is_dir():
        folders["field"] = _field_folder(tmp / "field")
    run = tmp / "run"
    ckpt = load_checkpoint(tiny_checkpoint(run / "best.pt", seed=3, classes=CLASSES))
    ckpt.state_dict = {  # a random model's answers are nearly uniform: spread them
        k: v * 40 if k.startswith("classifier.") else v for k, v in ckpt.state_dict.items()
    }
    rule = DecisionRule(temperature=1.5)
    tops = _top_probabilities(ckpt, list(folders.values()), rule)
    rule = DecisionRule(1.5, _threshold_in_a_gap(tops), target="test: in a gap")
    ckpt.decision = rule.to_dict()
    save_checkpoint(ckpt, run / "best.pt")

    def slow_batches(name: str, cfg: Any) -> None:
        if name == "postprocess":
            cfg.dynamic_batching.max_queue_delay_microseconds = BATCH_DELAY_US

    repo = tmp / "exported"
    export(ExportConfig(source=str(run / "best.pt"), repository=str(repo)))
    return Setup(run, copy_repo(repo, tmp / "repo", slow_batches), folders, rule)


@pytest.fixture(scope="module")
def server(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = start_server(setup.repo, tmp_path_factory.mktemp("crop-triton") / "triton.log")
    try:
        yield s
    finally:
        s.stop()


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


def _grpc_infer(url: str, image: bytes, crop: bytes | None, n: int = 1) -> Any:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inputs = [grpcclient.InferInput("IMAGE", [n, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[image]] * n, dtype=np.object_))
        if crop is not None:
            inputs.append(grpcclient.InferInput("CROP", [1, 1], "BYTES"))
            inputs[1].set_data_from_numpy(np.array([[crop]], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(o) for o in ("PROBABILITIES", "DECISION")]
        result = client.infer("plantdx", inputs, outputs=outputs, client_timeout=60)
        return result.as_numpy("PROBABILITIES"), result.as_numpy("DECISION").reshape(-1)


def _stats(url: str, model: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return dict(stats[0])


def _photo(setup: Setup, name: str = "Tomato___healthy") -> bytes:
    return next((setup.folders["drawn"] / name).iterdir()).read_bytes()


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
    photo = _photo(setup, "Pepper,_bell___healthy")
    before = int(
        _stats(server.grpc_url, "classifier")["inference_stats"]
        .get("cache_hit", {})
        .get("count", 0)
    )
    answers = [_grpc_infer(server.grpc_url, photo, c) for c in (None, b"potato", None, b"potato")]
    hits = int(
        _stats(server.grpc_url, "classifier")["inference_stats"]
        .get("cache_hit", {})
        .get("count", 0)
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
            results[i] = _grpc_infer(url, photo, crop, n)
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
    photo = _photo(setup)
    expected = {c: _grpc_infer(server.grpc_url, photo, c) for c in (None, b"tomato")}

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
        before = _stats(server.grpc_url, "postprocess")
        results = _concurrently(server.grpc_url, photo, [(c, 1) for c in sent])
        for crop, got in zip(sent, results, strict=True):
            check(b"tomato" if crop == b"Tomatoes" else crop, got)
        one_batch.append(_batch_sizes(_stats(server.grpc_url, "postprocess"), before))
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
            photo = _photo(setup, name)
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
CURL_CROP = (
    '{{ printf \'{{"inputs":[{{"name":"IMAGE","shape":[1,1],"datatype":"BYTES","data":["\'; '
    'base64 -w0 {photo}; printf \'"]}},{{"name":"CROP","shape":[1,1],"datatype":'
    '"BYTES","data":["tomato"]}}]}}\'; }} | curl -s --data-binary @- '
    "{url}/v2/models/plantdx/infer"
)


def test_the_readme_curl_call_with_a_crop(setup: Setup, server: Any, tmp_path: Path) -> None:
    import json
    import shlex
    import shutil
    import subprocess

    from plantdx.client import PlantDxClient

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = CURL_CROP.format(photo="leaf.jpg", url="localhost:8000")
    assert documented.replace("{{", "{").replace("}}", "}") in readme
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("curl or base64 is not installed")
    photo = tmp_path / "leaf.jpg"
    photo.write_bytes(_photo(setup, "Potato___Late_blight"))
    cmd = CURL_CROP.format(photo=shlex.quote(str(photo)), url=f"http://{server.http_url}")
    cmd = cmd.replace("{{", "{").replace("}}", "}")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    outputs = {o["name"]: o["data"] for o in json.loads(done.stdout)["outputs"]}
    with PlantDxClient(server.http_url) as client:
        expected = client.predict(photo, crop="tomato", top_k=1)
    probs = outputs["PROBABILITIES"]
    assert CLASSES[int(np.argmax(probs))] == expected.label and expected.label.startswith("Tomato")
    assert abs(max(probs) - expected.confidence) < 1e-6
    assert outputs["DECISION"] == [expected.decision]
    tomato = CropMap.derive(CLASSES).masks(["tomato"])[0]
    assert all(p == 0.0 for p, t in zip(probs, tomato, strict=True) if not t)


def test_cli_predict_with_a_crop(setup: Setup, server: Any, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from plantdx.cli import app
    from plantdx.client import PlantDxClient

    photo = tmp_path / "leaf.jpg"
    photo.write_bytes(_photo(setup, "Tomato___healthy"))
    runner = CliRunner()
    base = ["predict", str(photo), "--url", server.grpc_url, "--protocol", "grpc", "--top-k", "5"]
    done = runner.invoke(app, [*base, "--crop", "bell pepper", "--json"])
    assert done.exit_code == 0, done.output
    (row,) = json.loads(done.stdout)
    with PlantDxClient(server.http_url) as client:
        expected = client.predict(photo, crop="Pepper,_bell", top_k=5)
    assert row["crop"] == "bell pepper" and row["label"] == expected.label
    assert [c["label"] for c in row["top_k"]] == [c.label for c in expected.top_k]
    assert {c["label"] for c in row["top_k"]} <= {n for n in CLASSES if n.startswith("Pepper")}
    refused = runner.invoke(app, [*base, "--crop", "banana"])
    assert refused.exit_code == 1
    assert "unknown crop 'banana'; this model knows Pepper,_bell, Potato, Tomato" in refused.output
