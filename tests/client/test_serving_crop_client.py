"""The CROP input from the client side, through the real Triton server: the README's curl call,
`plantdx predict --crop`, and the asyncio client over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.crops import CropMap

from helpers.crops import CLASSES, Setup, drawn_photo, make_setup, serve

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("crop-client"))


@pytest.fixture(scope="module")
def server(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from serve(setup, tmp_path_factory.mktemp("crop-client-triton"))


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

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = CURL_CROP.format(photo="leaf.jpg", url="localhost:8000")
    assert documented.replace("{{", "{").replace("}}", "}") in readme
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("curl or base64 is not installed")
    photo = tmp_path / "leaf.jpg"
    photo.write_bytes(drawn_photo(setup, "Potato___Late_blight"))
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
    photo.write_bytes(drawn_photo(setup, "Tomato___healthy"))
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


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_asyncio_client_sends_the_crop(setup: Setup, server: Any, protocol: str) -> None:
    import asyncio

    from plantdx.client import AsyncPlantDxClient, PlantDxClient
    from plantdx.exceptions import ClientError

    url = server.http_url if protocol == "http" else server.grpc_url
    photos = [drawn_photo(setup, name) for name in CLASSES[::3]]

    async def main() -> tuple[list[Any], Any]:
        async with AsyncPlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
            outcomes = await client.predict_many(photos, concurrency=4, crop="potatoes")
            try:
                await client.predict(photos[0], crop="kiwi")
            except ClientError as exc:
                return outcomes, exc
        return outcomes, None

    outcomes, refused = asyncio.run(main())
    with PlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
        expected = [client.predict(p, crop="Potato") for p in photos]
    got = [o.prediction for o in outcomes]
    assert all(g is not None for g in got)
    assert [(g.label, g.decision) for g in got] == [(e.label, e.decision) for e in expected]  # type: ignore[union-attr]
    assert all(g.label.startswith("Potato") and g.crop == "potatoes" for g in got)  # type: ignore[union-attr]
    assert refused is not None and getattr(refused, "kind", None) == "invalid_crop"
    assert "unknown crop 'kiwi'" in str(refused)
