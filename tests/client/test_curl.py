"""The README's one-line curl call: a photo sent as base64 text in a plain JSON request, with
no client library and no binary framing, answered like the same photo sent as bytes."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from plantdx.exceptions import PreprocessError
from plantdx.preprocessing import from_base64, open_image

# Exactly the command in README.md ("Quick start"), with the server address and file filled in.
CURL = (
    '{{ printf \'{{"inputs":[{{"name":"IMAGE","shape":[1,1],"datatype":"BYTES","data":["\'; '
    "base64 -w0 {photo}; printf '\"]}}]}}'; }} | curl -s --data-binary @- {url}/v2/models/plantdx/infer"
)


def test_base64_text_is_decoded_and_everything_else_left_alone(mini_photos: list[Path]) -> None:
    photo = mini_photos[0].read_bytes()
    text = base64.b64encode(photo)
    assert from_base64(photo) is photo
    assert from_base64(text) == photo
    assert from_base64(b"data:image/jpeg;base64," + text) == photo
    assert from_base64(text[:60] + b"\n" + text[60:]) == photo  # wrapped base64 output
    assert open_image(text).size == open_image(photo).size
    for other in (b"plain words, not an image", base64.b64encode(b"words that are not a photo")):
        with pytest.raises(PreprocessError) as refused:
            open_image(other)
        assert refused.value.reason == "not_an_image"


def test_readme_documents_the_same_curl_command() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = (
        CURL.format(photo="leaf.jpg", url="localhost:8000").replace("{{", "{").replace("}}", "}")
    )
    assert documented in readme


@pytest.mark.triton
def test_curl_one_liner_against_the_real_server(
    triton_server: object, mini_photos: list[Path]
) -> None:
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("curl or base64 is not installed")
    from plantdx.client import PlantDxClient

    photo = mini_photos[3]
    url = f"http://{triton_server.http_url}"  # type: ignore[attr-defined]
    cmd = CURL.format(photo=shlex.quote(str(photo)), url=url).replace("{{", "{").replace("}}", "}")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    answer = json.loads(done.stdout)
    assert "outputs" in answer, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    probs = outputs["PROBABILITIES"]["data"]
    with PlantDxClient(triton_server.http_url) as client:  # type: ignore[attr-defined]
        reference = client.predict(photo, top_k=len(probs))
    top = max(range(len(probs)), key=probs.__getitem__)
    assert reference.top_k[0].index == top
    assert abs(probs[top] - reference.confidence) < 1e-5
    assert outputs["DECISION"]["data"][0] in (reference.label, "uncertain")
