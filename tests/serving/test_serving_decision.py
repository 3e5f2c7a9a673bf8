"""The decision rule through the real Triton server: calibrated probabilities, DECISION
("uncertain" under the threshold), the abstention counter, the per-deployment override, and
an ensemble exported before decision rules still answering the client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.decision import UNCERTAIN, DecisionRule, softmax

from helpers.export import tiny_checkpoint
from helpers.serving import copy_repo, jpeg, start_server

pytestmark = pytest.mark.triton

TEMPERATURE = 2.5
CLASSES = ("a", "b", "c")


@dataclass
class Setup:
    repo: Path
    photos: dict[str, bytes]  # "confident" and "unsure": the highest and lowest top probability
    logits: dict[str, np.ndarray]  # of the exported ONNX file, in-process
    probs: dict[str, np.ndarray]  # softmax(logits / T) of those
    rule: DecisionRule


def _overconfident_checkpoint(path: Path) -> Any:
    """A random test_tiny model with its logits scaled up: a spread of top probabilities that a
    temperature above 1 calibrates, as training would find for an overconfident model."""
    from plantdx.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint(path, classes=CLASSES))
    ckpt.state_dict = {
        k: v * 100 if k.startswith("classifier.") else v for k, v in ckpt.state_dict.items()
    }
    return ckpt


def _onnx_logits(repo: Path, images: list[bytes]) -> np.ndarray:
    import onnxruntime as ort

    from plantdx.preprocessing import PreprocessMeta, Preprocessor

    vdir = repo / "classifier" / "1"
    pre = Preprocessor(PreprocessMeta.load(vdir / "preprocessing.json"))
    session = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    prepare = pre.pixels if session.get_inputs()[0].type == "tensor(uint8)" else pre
    return np.asarray(session.run(None, {"input": np.stack([prepare(b) for b in images])})[0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    import torch

    from plantdx.checkpoint import save_checkpoint
    from plantdx.export import ExportConfig, export
    from plantdx.preprocessing import Preprocessor
    from plantdx.synth import CLASSES as DRAWN
    from plantdx.synth import draw_leaf

    tmp = tmp_path_factory.mktemp("decision")
    ckpt = _overconfident_checkpoint(tmp / "run" / "best.pt")
    rng = np.random.default_rng(3)
    drawn = [jpeg(draw_leaf(DRAWN[i % len(DRAWN)], rng)) for i in range(10)]
    # In-process, as evaluation would: the top calibrated probability of each drawn photo.
    pre = Preprocessor(ckpt.preprocessing)
    with torch.no_grad():
        logits = ckpt.build_model()(torch.from_numpy(np.stack([pre(b) for b in drawn]))).numpy()
    top = softmax(logits, TEMPERATURE).max(axis=1)
    hi, lo = int(top.argmax()), int(top.argmin())
    assert top[hi] - top[lo] > 0.1, top  # room for a threshold well away from both
    rule = DecisionRule(TEMPERATURE, float(top[hi] + top[lo]) / 2, target="test: between two")
    ckpt.decision = rule.to_dict()
    save_checkpoint(ckpt, tmp / "run" / "best.pt")
    repo = tmp / "repo"
    export(ExportConfig(source=str(tmp / "run" / "best.pt"), repository=str(repo)))
    photos = {"confident": drawn[hi], "unsure": drawn[lo]}
    onnx = _onnx_logits(repo, list(photos.values()))
    return Setup(
        repo,
        photos,
        dict(zip(photos, onnx, strict=True)),
        dict(zip(photos, softmax(onnx, TEMPERATURE), strict=True)),
        rule,
    )


@pytest.fixture(scope="module")
def server(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = start_server(setup.repo, tmp_path_factory.mktemp("decision-triton") / "triton.log")
    try:
        yield s
    finally:
        s.stop()


def _infer(url: str, images: list[bytes]) -> tuple[np.ndarray, list[str]]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("PROBABILITIES", "DECISION")]
        result = client.infer("plantdx", [inp], outputs=outputs, client_timeout=30)
        decisions = [d.decode() for d in result.as_numpy("DECISION").reshape(-1)]
        return np.asarray(result.as_numpy("PROBABILITIES")), decisions


def _abstentions(server: Any) -> float:
    time.sleep(1.2)  # custom metrics are published once a second
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    lines = [x for x in text.splitlines() if x.startswith("plantdx_abstentions_total{")]
    assert all('version="1"' in x for x in lines), lines
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines)  # none before the first image


def test_decision_and_calibrated_probabilities(setup: Setup, server: Any) -> None:
    before = _abstentions(server)
    photos = setup.photos
    probs, decisions = _infer(server.grpc_url, [photos["confident"], photos["unsure"]])
    label = CLASSES[int(setup.probs["confident"].argmax())]
    assert decisions == [label, UNCERTAIN]
    expected = np.stack([setup.probs["confident"], setup.probs["unsure"]])
    assert np.abs(probs - expected).max() < 1e-5  # softmax(logits / T), T != 1
    uncalibrated = softmax(np.stack([setup.logits["confident"], setup.logits["unsure"]]))
    assert np.abs(probs - uncalibrated).max() > 1e-2  # the temperature did something
    # One image per request too (another dynamic batch shape), over HTTP via the client.
    from plantdx.client import PlantDxClient

    with PlantDxClient(server.http_url) as client:
        sure, unsure = client.predict(photos["confident"]), client.predict(photos["unsure"])
    assert (sure.decision, sure.uncertain, sure.label) == (label, False, label)
    assert unsure.decision == UNCERTAIN and unsure.uncertain
    assert unsure.label == CLASSES[int(setup.probs["unsure"].argmax())]
    assert abs(unsure.confidence - float(setup.probs["unsure"].max())) < 1e-5
    assert unsure.to_dict()["decision"] == UNCERTAIN
    assert _abstentions(server) - before == 2  # one per uncertain image


def test_async_client_reads_the_decision(setup: Setup, server: Any) -> None:
    from plantdx.client import AsyncPlantDxClient

    async def main() -> list[str]:
        async with AsyncPlantDxClient(server.grpc_url, "grpc") as client:
            outcomes = await client.predict_many(list(setup.photos.values()), concurrency=2)
        return [o.prediction.decision for o in outcomes if o.prediction]

    assert asyncio.run(main())[1] == UNCERTAIN


def test_a_corrupt_image_still_fails_alone(setup: Setup, server: Any) -> None:
    """Bad and good requests together, so the dynamic batcher mixes them."""
    from helpers.serving import try_infer

    good = [setup.photos["confident"], setup.photos["unsure"]] * 3
    bad = [b"\xff\xd8\xff\xe0 truncated", b"<html>not a photo</html>"] * 3
    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(_infer, server.grpc_url, [g]) for g in good]
        bads = [pool.submit(try_infer, server.grpc_url, b) for b in bad]
        answers = [f.result()[1][0] for f in goods]
        errors = [f.result()[1] for f in bads]
    assert answers[1::2] == [UNCERTAIN] * 3 and UNCERTAIN not in answers[0::2]
    assert all(e and "invalid image" in e for e in errors), errors
    with pytest.raises(Exception, match="invalid image"):  # one request, one bad image of two
        _infer(server.grpc_url, [setup.photos["confident"], bad[0]])
    assert server.is_ready()


def test_cli_predict_prints_uncertain_with_the_top_guesses(
    setup: Setup, server: Any, tmp_path: Path
) -> None:
    for name, data in setup.photos.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    files = [str(tmp_path / "confident.jpg"), str(tmp_path / "unsure.jpg")]
    cmd = [sys.executable, "-m", "plantdx", "predict", "--url", server.http_url, *files]
    env = {**os.environ, "COLUMNS": "250"}
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert table.returncode == 0, table.stderr
    assert "uncertain (top guesses: " in table.stdout and "1 uncertain" in table.stderr
    rows = json.loads(
        subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120).stdout
    )
    assert [r["decision"] for r in rows][1] == UNCERTAIN
    assert rows[0]["decision"] == rows[0]["label"] != UNCERTAIN


def test_the_deployment_override_replaces_the_versions_threshold(
    setup: Setup, tmp_path: Path
) -> None:
    """What a k8s or docker deployment does: set abstain_threshold in the postprocess config."""
    low = float(setup.probs["unsure"].max()) - 0.05

    def tweak(name: str, cfg: Any) -> None:
        if name == "postprocess":
            cfg.parameters["abstain_threshold"].string_value = f"{low:.4f}"

    repo = copy_repo(setup.repo, tmp_path / "repo", tweak)
    server = start_server(repo, tmp_path / "triton.log")
    try:
        before = _abstentions(server)
        probs, decisions = _infer(server.grpc_url, list(setup.photos.values()))
        assert UNCERTAIN not in decisions  # both answered now
        assert decisions[1] == CLASSES[int(setup.probs["unsure"].argmax())]
        assert np.abs(probs[1] - setup.probs["unsure"]).max() < 1e-5  # calibration unchanged
        assert _abstentions(server) == before
    finally:
        server.stop()


def test_a_server_without_decisions_answers_the_top_label(setup: Setup, tmp_path: Path) -> None:
    """An ensemble exported before decision rules has no DECISION output: the client asks once,
    is told, and falls back to the top label."""
    from plantdx.client import AsyncPlantDxClient, PlantDxClient
    from plantdx.client.results import lacks_decision

    def tweak(name: str, cfg: Any) -> None:
        if name == "plantdx":
            del cfg.output[1]
            del cfg.ensemble_scheduling.step[2].output_map["DECISION"]

    repo = copy_repo(setup.repo, tmp_path / "repo", tweak)
    server = start_server(repo, tmp_path / "triton.log")
    try:
        with pytest.raises(Exception) as info:
            _infer(server.grpc_url, [setup.photos["unsure"]])
        assert lacks_decision(info.value), info.value
        with PlantDxClient(server.http_url) as client:
            first = client.predict(setup.photos["unsure"])
            again = client.predict(setup.photos["unsure"])
            assert client._versions.decision is False  # not asked again
        for p in (first, again):
            assert p.decision == p.label != UNCERTAIN and not p.uncertain

        async def main() -> str:
            async with AsyncPlantDxClient(server.grpc_url, "grpc") as c:
                return (await c.predict(setup.photos["unsure"])).decision

        assert asyncio.run(main()) == first.label
    finally:
        server.stop()
