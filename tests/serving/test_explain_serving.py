"""Explanations on the real Triton server: `plantdx_explain` heatmaps against PyTorch, the
`plantdx` ensemble unchanged, `plantdx predict --explain` over HTTP and gRPC, a corrupt image
failing alone, and a clear error from a server without explanations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from plantdx.checkpoint import load_checkpoint
from plantdx.cli import app
from plantdx.client import PlantDxClient
from plantdx.exceptions import ClientError
from plantdx.heatmap import HEATMAP_TOLERANCE, class_heatmaps
from plantdx.models.cam import cam_model
from plantdx.preprocessing import Normalizer, Preprocessor

from helpers.common import onnx_probabilities

pytestmark = pytest.mark.triton


def _torch_heatmaps(run: Path, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    ckpt = load_checkpoint(run / "best.pt")
    wrapper = cam_model(ckpt.build_model(), ckpt.model_name).eval()
    pre, norm = Preprocessor(ckpt.preprocessing), Normalizer(ckpt.preprocessing)
    x = torch.from_numpy(np.stack([norm(pre.decode(b)) for b in photos]))
    with torch.no_grad():
        logits, cams = (t.numpy() for t in wrapper(x))
    return class_heatmaps(cams, logits), logits


def test_served_heatmaps_match_pytorch_and_plantdx_is_unchanged(
    triton_server: object, tiny_run: Path, tiny_repo: Path, mini_photos: list[Path]
) -> None:
    photos = [p.read_bytes() for p in mini_photos[:6]]
    expected, logits = _torch_heatmaps(tiny_run, photos)
    reference = onnx_probabilities(tiny_repo, photos)
    with PlantDxClient(triton_server.http_url) as client:  # type: ignore[attr-defined]
        for i, data in enumerate(photos):
            explained = client.explain(data, top_k=3)
            plain = client.predict(data, top_k=3)
            assert explained.heatmap.shape == expected[i].shape
            assert explained.heatmap.dtype == np.float32
            assert explained.heatmap.min() >= 0.0 and explained.heatmap.max() <= 1.0
            diff = float(np.abs(explained.heatmap - expected[i]).max())
            assert diff <= HEATMAP_TOLERANCE, (i, diff)
            # The prediction is the `plantdx` ensemble's, and that one is as before.
            assert explained.prediction.top_k == plain.top_k
            assert explained.prediction.decision == plain.decision
            assert plain.label == client.classes()[int(reference[i].argmax())]
            assert abs(plain.confidence - float(reference[i].max())) < 1e-5
            assert int(logits[i].argmax()) == plain.top_k[0].index


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predict_explain_writes_overlays(
    triton_server: object, mini_photos: list[Path], tmp_path: Path, protocol: str
) -> None:
    url = getattr(triton_server, f"{protocol}_url")
    out = tmp_path / "overlays"
    args = [str(p) for p in mini_photos[:3]]
    result = CliRunner().invoke(
        app,
        ["predict", *args, "--url", url, "--protocol", protocol, "--explain", str(out)],
    )
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name.split("-", 1)[1] for p in pngs] == [f"{p.stem}.png" for p in mini_photos[:3]]
    for png, photo in zip(pngs, mini_photos[:3], strict=True):
        with Image.open(png) as img, Image.open(photo) as src:
            assert img.size[0] == src.size[0] and img.size[1] > src.size[1]  # photo + text bar
            pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
            original = np.asarray(src.convert("RGB"), dtype=np.int16)
            assert np.abs(pixels[-original.shape[0] :] - original).mean() > 1  # heat drawn


def test_corrupt_image_in_an_explain_batch_fails_alone(
    triton_server: object, mini_photos: list[Path]
) -> None:
    good = [p.read_bytes() for p in mini_photos[:4]]
    images = [good[0], good[1], b"not an image at all", good[2], good[3][: len(good[3]) // 3]]
    with PlantDxClient(triton_server.http_url) as client:  # type: ignore[attr-defined]
        outcomes = client.explain_many(images, concurrency=5)
    assert [o.ok for o in outcomes] == [True, True, False, True, False]
    assert outcomes[2].kind == "invalid_image" and "invalid image" in str(outcomes[2].error)
    assert all(o.explanation is not None for o in outcomes if o.ok)


def test_server_without_explanations_says_so(
    triton_server: object, mini_photos: list[Path]
) -> None:
    url = triton_server.http_url  # type: ignore[attr-defined]
    triton_server._repository_call("/models/plantdx_explain/unload")  # type: ignore[attr-defined]
    try:
        with PlantDxClient(url, retries=0) as client:
            with pytest.raises(ClientError, match="has no plantdx_explain ensemble"):
                client.explain(mini_photos[0])
            assert client.predict(mini_photos[0]).label  # plain predictions still work
        result = CliRunner().invoke(
            app, ["predict", str(mini_photos[0]), "--url", url, "--explain", "/tmp/none"]
        )
        assert result.exit_code != 0  # the CLI's entry point prints this one line
        assert "has no plantdx_explain ensemble" in str(result.exception)
    finally:
        triton_server._repository_call("/models/plantdx_explain/load")  # type: ignore[attr-defined]
