"""Which version a fresh server on a repository really serves, and whether its parts agree:
the ready versions of preprocess and classifier are the same one version N; preprocess/N's
decision rule is that of the checkpoint classifier/N was exported from (its provenance's
sha256); and one probe image answered through the `plantdx` ensemble matches that checkpoint
run in PyTorch (its weights, preprocessing and rule; ONNX parity is within 1e-4). Preprocess
N beside classifier N-1, N's rule on N-1's logits, or a file of another version all show."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.model_repository.names import CLASSIFIER, ENSEMBLE, PREPROCESS

# Export parity holds ONNX within 1e-4 of PyTorch; the test checkpoints differ by far more.
TOLERANCE = 2e-4


@dataclass
class Served:
    classifier: list[int]
    preprocess: list[int]
    version: int | None = None  # the one version both serve, when they agree
    max_abs_diff: float | None = None
    decision: str = ""
    expected_decision: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


def probe_image(seed: int = 0, size: int = 96) -> bytes:
    """A PNG of coloured noise: any image does, the same one every time."""
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def expected_answer(checkpoint: Path, image: bytes) -> tuple[np.ndarray, str]:
    """What the version exported from `checkpoint` must answer for `image`: PyTorch on the
    checkpoint's own weights, preprocessing and decision rule (independent of the repository)."""
    import torch

    from plantdx.checkpoint import load_checkpoint
    from plantdx.decision import DecisionRule
    from plantdx.preprocessing import Preprocessor

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model().eval()
    pixels = Preprocessor(ckpt.preprocessing)(image)
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels[None])).numpy()
    rule = DecisionRule.from_dict(ckpt.decision)
    probs = np.asarray(rule.probabilities(logits), dtype=np.float64)[0]
    return probs, str(rule.decisions(probs[None], ckpt.class_names)[0])


def source_of(repo: Path, version: int, checkpoints: list[Path]) -> Path | None:
    """The checkpoint version `version` was exported from (by its provenance's sha256)."""
    from plantdx.files import file_sha256
    from plantdx.model_repository.layout import PROVENANCE_FILENAME, read_json

    sha = read_json(repo / CLASSIFIER / str(version) / PROVENANCE_FILENAME).get("checkpoint_sha256")
    return next((c for c in checkpoints if file_sha256(c) == sha), None)


def _rule_problems(repo: Path, version: int, checkpoint: Path) -> list[str]:
    """preprocess/N/decision.json must be the rule of the checkpoint classifier/N came from."""
    from plantdx.checkpoint import load_checkpoint
    from plantdx.decision import DECISION_FILENAME, DecisionRule

    served = DecisionRule.load(repo / PREPROCESS / str(version) / DECISION_FILENAME)
    own = DecisionRule.from_dict(load_checkpoint(checkpoint).decision)
    if (served.temperature, served.threshold) != (own.temperature, own.threshold):
        return [
            f"preprocess/{version} sends temperature {served.temperature}, but classifier/"
            f"{version} came from a checkpoint with {own.temperature}"
        ]
    return []


def check_served(
    url: str,
    repo: Path,
    image: bytes,
    expected: list[list[int]],
    checkpoints: list[Path],
    key: str | None = None,
) -> Served:
    """What the server at `url` serves (`key`: its admin key); `expected`: the acceptable
    version sets (before or after the interrupted change); `checkpoints`: those the versions
    came from."""
    import tritonclient.http as httpclient

    from plantdx.serving.control import ModelControl

    with ModelControl(url, key=key) as control:
        served = Served(control.ready_versions(CLASSIFIER), control.ready_versions(PREPROCESS))
    if served.classifier != served.preprocess or len(served.classifier) != 1:
        served.problems.append(
            f"classifier versions {served.classifier} beside preprocess {served.preprocess}"
        )
        return served
    served.version = served.classifier[0]
    if served.classifier not in expected:
        served.problems.append(f"serves version {served.version}, expected one of {expected}")
    client = httpclient.InferenceServerClient(url, network_timeout=60.0)
    try:
        inp = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        result: Any = client.infer(ENSEMBLE, [inp])
    finally:
        client.close()
    got = np.asarray(result.as_numpy("PROBABILITIES"), dtype=np.float64)[0]
    raw = result.as_numpy("DECISION").reshape(-1)[0]
    served.decision = raw.decode() if isinstance(raw, bytes) else str(raw)
    source = source_of(repo, served.version, checkpoints)
    if source is None:
        served.problems.append(f"classifier/{served.version} came from no known checkpoint")
        return served
    served.problems += _rule_problems(repo, served.version, source)
    want, served.expected_decision = expected_answer(source, image)
    served.max_abs_diff = float(np.max(np.abs(got - want)))
    if served.max_abs_diff > TOLERANCE:
        served.problems.append(
            f"probabilities differ from those of {source.name}, which version "
            f"{served.version} was exported from, by {served.max_abs_diff:.2e}"
        )
    if served.decision != served.expected_decision:
        served.problems.append(
            f"decision {served.decision!r}, version {served.version}'s rule says "
            f"{served.expected_decision!r}"
        )
    return served
