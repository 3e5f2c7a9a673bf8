"""What the CROP tests through the real server share: a tiny model of the PlantDoc field classes
(sharpened, with a decision rule whose threshold lies in a gap of its answers), its photos (drawn
ones always, the field photos linked when present), the exported repository (the postprocess
waiting BATCH_DELAY_US to fill a batch) and a server on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.crops import CropMap
from plantdx.decision import DecisionRule

from helpers.common import SHARED_DATA
from helpers.serving import copy_repo, jpeg, start_server

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
BATCH_DELAY_US = 300_000  # the postprocess waits this long to fill a batch (the batch test)


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


def make_setup(tmp: Path) -> Setup:
    from plantdx.checkpoint import load_checkpoint, save_checkpoint
    from plantdx.export import ExportConfig, export

    from helpers.export import tiny_checkpoint

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


def serve(setup: Setup, log_dir: Path) -> Iterator[Any]:
    s = start_server(setup.repo, log_dir / "triton.log")
    try:
        yield s
    finally:
        s.stop()


def grpc_infer(url: str, image: bytes, crop: bytes | None, n: int = 1) -> Any:
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


def stats(url: str, model: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return dict(stats[0])


def drawn_photo(setup: Setup, name: str = "Tomato___healthy") -> bytes:
    return next((setup.folders["drawn"] / name).iterdir()).read_bytes()
