"""`plantdx bench peers`: Triton, the in-process limit and the FastAPI servers in one run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import photo_dir, run_plantdx

from plantdx.bench.peers import INPROCESS, PEER, SINGLE, Measurement, summarise


def test_the_peer_gets_the_same_network_with_a_float_input(tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from plantdx.bench.peer_server import float_onnx
    from plantdx.export.onnx import export_onnx, takes_uint8
    from plantdx.models import create_model, get_spec

    torch.manual_seed(0)
    meta = get_spec("test_tiny").preprocessing(64)
    model = create_model("test_tiny", num_classes=3).eval()
    for d in ("u8", "f32"):
        (tmp_path / d).mkdir()
    served = export_onnx(model, tmp_path / "u8" / "model.onnx", image_size=64, normalize=meta)
    meta.save(tmp_path / "u8" / "preprocessing.json")
    peer = float_onnx(served, tmp_path / "peer")
    assert takes_uint8(served) and not takes_uint8(peer)
    assert (tmp_path / "peer" / "preprocessing.json").is_file()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    run = lambda p, x: ort.InferenceSession(str(p)).run(["logits"], {"input": x})[0]  # noqa: E731
    from plantdx.preprocessing import Normalizer

    assert np.array_equal(run(served, pixels), run(peer, Normalizer(meta).chw(pixels)))
    plain = export_onnx(model, tmp_path / "f32" / "model.onnx", image_size=64)
    copy = float_onnx(plain, tmp_path / "peer2")
    assert copy.read_bytes() == plain.read_bytes()


def _m(
    system: str, rnd: int, c: int, img_s: float, p50: float, p99: float, cpu: float
) -> Measurement:
    return Measurement(system, rnd, c, img_s, p50, p99, 0, cpu, 0.5, [1.0, 1.0, 1.0], "")


def test_ratios_are_taken_within_each_round() -> None:
    rows = []
    for rnd, speed in enumerate((1.0, 0.5)):  # the second round ran on a busier machine
        rows += [
            _m(INPROCESS, rnd, 2, 100 * speed, 10, 12, 10.0),
            _m(SINGLE, rnd, 1, 80 * speed, 8, 9, 10.0),
            _m("triton:new", rnd, 16, 90 * speed, 100, 200, 12.0),
            _m("triton:new", rnd, 1, 50 * speed, 10, 11, 14.0),
            _m("triton:old", rnd, 16, 60 * speed, 150, 300, 15.0),
            _m(PEER, rnd, 16, 72 * speed, 120, 400, 14.0),
        ]
    s = summarise(rows, 16)
    assert s["systems"]["triton:new, c=16"]["img_per_s"] == {
        "median": 67.5, "min": 45.0, "max": 90.0, "n": 2,
    }  # fmt: skip
    new = s["ratios"]["triton:new"]
    assert new["img/s / fastapi+onnxruntime"]["median"] == pytest.approx(1.25)
    assert new["img/s / fastapi+onnxruntime"]["min"] == new["img/s / fastapi+onnxruntime"]["max"]
    assert new["p99 / fastapi+onnxruntime"]["median"] == pytest.approx(0.5)
    assert new["img/s / in-process"]["median"] == pytest.approx(0.9)
    assert new["img/s / triton:old"]["median"] == pytest.approx(1.5)
    assert new["server CPU per image / triton:old"]["median"] == pytest.approx(0.8)
    per_image = new["in-process CPU per image / Triton server's"]["median"]
    assert per_image == pytest.approx(10 / 12, abs=1e-3)
    with_client = new["in-process CPU per image / Triton server's + load generator's"]
    assert with_client["median"] == pytest.approx(10 / 12.5, abs=1e-3)
    assert new["c=1 p50 - in-process single image p50 (ms)"]["median"] == pytest.approx(2.0)
    assert "c=1 p50 - in-process single image p50 (ms)" not in s["ratios"]["triton:old"]


def test_repositories_need_labels_of_their_own() -> None:
    from plantdx.bench.peers import PeersConfig
    from plantdx.exceptions import ConfigError

    with pytest.raises(ConfigError, match="label"):
        PeersConfig(repositories=["/a/repo", "/b/repo"]).labelled()
    assert PeersConfig(repositories=["old=/a/repo", "/b/repo"]).labelled() == [
        ("old", Path("/a/repo")),
        ("repo", Path("/b/repo")),
    ]


@pytest.mark.triton
@pytest.mark.slow
def test_bench_peers_end_to_end(tiny_repo: Path, mini_photos: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    baselines = Path(__file__).resolve().parents[3] / "shared" / "baselines"
    if not (baselines / "fastapi_onnx.py").is_file():
        pytest.skip(f"no FastAPI baselines at {baselines}")
    out = tmp_path / "peers.json"
    r = run_plantdx(
        "bench", "peers", "--repository", str(tiny_repo), "--images",
        str(photo_dir(tmp_path, mini_photos)), "--rounds", "1", "--duration", "2",
        "--warmup", "1", "--concurrency", "2", "--layouts", "1x1b1,1x2b1",
        "--peer", str(baselines / "fastapi_onnx.py"),
        "--original", str(baselines / "original_fastapi.py"), "--json", str(out),
        timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    systems = {(m["system"], m["concurrency"]) for m in doc["rows"]}
    assert {("triton:models", 2), ("triton:models", 1), (PEER, 2), ("original", 2)} <= systems
    for m in doc["rows"]:
        assert m["errors"] == 0 and m["img_per_s"] > 0, m
        assert m["server_cpu_ms_per_img"] and m["server_cpu_ms_per_img"] > 0, m
    ratios = doc["summary"]["ratios"]["triton:models"]
    assert {"img/s / fastapi+onnxruntime", "img/s / original", "img/s / in-process"} <= set(ratios)
    assert "| triton:models, c=2 |" in r.stdout
