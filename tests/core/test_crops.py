"""The crop of each class and the crop a farmer names: the mapping (class names, crops.yaml,
checkpoint, exported version), name matching, the restricted decision, the postprocess's
per-version crops (outside Triton), `plantdx evaluate --crop-from-labels` and `compare`.
Through the real server: test_serving_crop.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.crops import (
    CROPS_FILENAME,
    MAX_CROP_BYTES,
    CropError,
    CropMap,
    VersionCrops,
    crop_of,
    read_crops_override,
    run_crops,
)
from plantdx.decision import UNCERTAIN, DecisionRule, softmax
from plantdx.exceptions import CheckpointError, ConfigError

PLANTDOC = [
    "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy",
    "Potato___Early_blight",
    "Potato___Late_blight",
    "Tomato___Bacterial_spot",
    "Tomato___Late_blight",
    "Tomato___healthy",
]
# Synthetic classes with crops (plantdx.synth paints the part after '___').
SYNTH = ["Tomato___healthy", "Tomato___blight", "Tomato___rust", "Pepper,_bell___leaf_spot"]


def test_the_crop_is_read_from_the_class_name() -> None:
    assert crop_of("Tomato___Late_blight") == "Tomato"
    assert crop_of("Pepper,_bell___healthy") == "Pepper,_bell"
    assert crop_of("Corn_(maize)___Common_rust_") == "Corn_(maize)"
    assert crop_of("healthy") == "healthy"  # no crop part: the class is its own crop
    crops = CropMap.derive(PLANTDOC)
    assert crops.names == ["Pepper,_bell", "Potato", "Tomato"]
    assert crops.to_dict()["Pepper,_bell___healthy"] == "Pepper,_bell"


@pytest.mark.parametrize(
    "asked,crop",
    [
        ("tomato", "Tomato"),
        ("Tomato", "Tomato"),
        ("TOMATOES", "Tomato"),
        ("  tomato ", "Tomato"),
        (b"potato", "Potato"),
        ("potatoes", "Potato"),
        ("Pepper,_bell", "Pepper,_bell"),
        ("pepper bell", "Pepper,_bell"),
        ("bell pepper", "Pepper,_bell"),
        ("Bell-Pepper", "Pepper,_bell"),
        ("peppers", "Pepper,_bell"),
        ("pepper", "Pepper,_bell"),
    ],
)
def test_friendly_crop_names(asked: str | bytes, crop: str) -> None:
    assert CropMap.derive(PLANTDOC).resolve(asked) == crop


def test_an_exact_name_wins_and_a_shared_word_is_ambiguous() -> None:
    crops = CropMap.derive(["Pepper,_bell___healthy", "Pepper,_chili___healthy", "Corn___rust"])
    assert crops.resolve("bell pepper") == "Pepper,_bell"
    assert crops.resolve("chili") == "Pepper,_chili"
    with pytest.raises(CropError, match="ambiguous: it could be Pepper,_bell, Pepper,_chili"):
        crops.resolve("pepper")
    exact = CropMap.derive(["Cherry___healthy", "Cherry_(sour)___healthy"])
    assert exact.resolve("cherry") == "Cherry"  # all its words: preferred over a partial match


@pytest.mark.parametrize(
    "asked,message",
    [
        ("banana", "unknown crop 'banana'; this model knows Pepper,_bell, Potato, Tomato"),
        ("", "the crop name is empty"),
        ("   ", "the crop name is empty"),
        ("?!", "with no letter or digit"),
        (b"\xff\xfe", "not UTF-8"),
        ("tomato" * 11, f"66 bytes long; a crop name is at most {MAX_CROP_BYTES}"),
        ("x" * 10_240, "10240 bytes long"),
    ],
)
def test_bad_crop_names_are_refused_with_a_short_message(asked: str | bytes, message: str) -> None:
    with pytest.raises(CropError, match=message.replace("?", r"\?")) as info:
        CropMap.derive(PLANTDOC).resolve(asked)
    assert len(str(info.value)) < 200  # never the whole refused text


def test_masks_and_class_masks() -> None:
    crops = CropMap.derive(PLANTDOC)
    masks = crops.masks([b"tomato", "bell pepper"])
    assert masks.tolist() == [
        [False, False, False, False, True, True, True],
        [True, True, False, False, False, False, False],
    ]
    assert crops.class_masks()[5].tolist() == masks[0].tolist()  # Tomato___Late_blight's crop
    with pytest.raises(CropError):
        crops.masks(["tomato", "kiwi"])


def test_the_restricted_decision_renormalises_then_applies_the_threshold() -> None:
    logits = np.array([[3.0, 0.0, 2.5, 2.4]], dtype=np.float32)  # classes: T1 T2 P1 P2
    allowed = np.array([False, False, True, True])
    rule = DecisionRule(temperature=1.5, threshold=0.45)
    plain = rule.probabilities(logits)
    restricted = rule.probabilities(logits, allowed)
    # The unrestricted probabilities renormalised over the allowed classes, others 0.
    expected = np.where(allowed, plain, 0) / plain[0, allowed].sum()
    assert np.abs(restricted - expected).max() < 1e-6 and restricted[0, :2].tolist() == [0, 0]
    assert restricted.sum() == pytest.approx(1.0)
    labels = ["T1", "T2", "P1", "P2"]
    # Unrestricted: T1 at 0.36 < 0.45, "uncertain"; with the crop: P1 at 0.52, answered.
    assert plain.max() < 0.45 < restricted.max()
    assert rule.decisions(plain, labels) == [UNCERTAIN]
    assert rule.decisions(restricted, labels) == ["P1"]
    # From the logits, so nothing underflows: a crop far below the top class still sums to 1.
    far = softmax(np.array([[200.0, 0.0, 1.0]]), 1.0, np.array([False, True, True]))
    assert far[0].tolist() == pytest.approx([0.0, 0.26894, 0.73106], abs=1e-5)
    assert np.array_equal(softmax(logits, 1.5, None), plain)  # no crop: today's answer


def test_crops_yaml_overrides_and_is_checked(tmp_path: Path) -> None:
    (tmp_path / "crops.yaml").write_text("Tomato___healthy: Solanum\n")
    override = read_crops_override(tmp_path)
    crops = CropMap.derive(PLANTDOC, override)
    assert crops.resolve("solanum") == "Solanum" and crops.names[-1] == "Solanum"
    assert crops.masks(["tomato"]).sum() == 2
    with pytest.raises(ValueError, match="classes the model does not have"):
        CropMap.derive(PLANTDOC, {"Tomatoe___healthy": "Tomato"})
    # What training stores in every checkpoint of the run: the class names' crops, overridden.
    stored = run_crops(tmp_path, PLANTDOC)
    assert stored["Tomato___healthy"] == "Solanum" and stored["Potato___Late_blight"] == "Potato"
    assert run_crops(tmp_path / "no-yaml", PLANTDOC) == CropMap.derive(PLANTDOC).to_dict()
    (tmp_path / "crops.yaml").write_text("Tomato___sick: Solanum\n")
    with pytest.raises(ConfigError, match=r"crops\.yaml: crops are given for classes"):
        run_crops(tmp_path, PLANTDOC)
    (tmp_path / "crops.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must map class names to crop names"):
        read_crops_override(tmp_path)
    assert read_crops_override(tmp_path / "nowhere") == {}


def test_the_checkpoint_carries_its_crops(tmp_path: Path) -> None:
    from plantdx.checkpoint import checkpoint_crops, load_checkpoint, save_checkpoint

    from helpers.export import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "run" / "best.pt", classes=tuple(PLANTDOC))
    old = load_checkpoint(path)
    assert old.crops == {}  # made before crops were stored: read from the class names
    assert checkpoint_crops(old, path) == CropMap.derive(PLANTDOC)
    old.crops = {"Potato___Early_blight": "Spud", "Potato___Late_blight": "Spud"}
    save_checkpoint(old, path)
    again = load_checkpoint(path)
    assert again.crops == old.crops and checkpoint_crops(again, path).resolve("spud") == "Spud"
    (tmp_path / "run" / "crops.yaml").write_text("Tomato___healthy: Other\n")
    assert checkpoint_crops(again, path).names == ["Pepper,_bell", "Spud", "Tomato", "Other"]
    (tmp_path / "run" / "crops.yaml").write_text("Tomato___sick: Other\n")
    with pytest.raises(CheckpointError, match="classes the model does not have"):
        checkpoint_crops(again, path)


def test_each_exported_version_has_its_own_crops(tmp_path: Path) -> None:
    from plantdx.export import ExportConfig, export

    from helpers.export import tiny_checkpoint

    run = tmp_path / "run"
    ckpt = tiny_checkpoint(run / "best.pt", classes=tuple(PLANTDOC))
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(ckpt), repository=str(repo)))
    (run / "crops.yaml").write_text("Tomato___healthy: Other\n")
    export(ExportConfig(source=str(ckpt), repository=str(repo)))
    one = json.loads((repo / "preprocess/1" / CROPS_FILENAME).read_text())
    two = json.loads((repo / "preprocess/2" / CROPS_FILENAME).read_text())
    assert one == CropMap.derive(PLANTDOC).to_dict()
    assert two["Tomato___healthy"] == "Other" and two["Tomato___Late_blight"] == "Tomato"
    provenance = json.loads((repo / "classifier/2/provenance.json").read_text())
    assert provenance["crops"] == two
    # What the postprocess reads per version; a version exported before crops: the labels.
    (repo / "preprocess/1" / CROPS_FILENAME).unlink()
    served = VersionCrops(repo / "preprocess", PLANTDOC)
    assert served.get("1") == CropMap.derive(PLANTDOC)
    assert served.get("2").resolve("other") == "Other"
    assert served.get("unknown") == CropMap.derive(PLANTDOC)
    with pytest.raises(CropError, match="unknown crop"):
        served.get("1").resolve("other")


def test_the_postprocess_restricts_each_item_by_its_versions_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two versions in one execute() (a hot update), requests with and without CROP, and bad
    crops: each request answered or refused on its own, outside Triton."""
    from helpers.backend_stub import StubTensor, load_backend

    labels = ["Tomato___a", "Tomato___b", "Pepper,_bell___c"]
    post = tmp_path / "postprocess"
    post.mkdir()
    (post / "labels.txt").write_text("\n".join(labels) + "\n")
    (tmp_path / "preprocess" / "1").mkdir(parents=True)  # exported before crops: no crops.json
    (tmp_path / "preprocess" / "2").mkdir()
    CropMap.derive(labels, {"Tomato___b": "Pepper,_bell"}).save(
        tmp_path / "preprocess" / "2" / CROPS_FILENAME
    )
    config: dict[str, Any] = {
        "input": [{"name": n} for n in ("LOGITS", "CALIBRATION", "IMAGE", "CROP")],
        "output": [{"name": "PROBABILITIES", "dims": ["3"]}, {"name": "DECISION"}],
    }
    model = load_backend("postprocess", monkeypatch).TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(post)})
    logits = np.array([[0.0, 2.0, 1.0]], dtype=np.float32)  # b, then c, then a

    def request(version: float, crop: bytes | None) -> dict[str, Any]:
        r = {
            "LOGITS": StubTensor("LOGITS", logits),
            "CALIBRATION": StubTensor("CALIBRATION", np.array([[1.0, 0.0, version]], np.float32)),
        }
        if crop is not None:
            r["CROP"] = StubTensor("CROP", np.array([[crop]], dtype=np.object_))
        return r

    plain, v1_pepper, v2_pepper, v2_tomato, unknown, empty, huge = model.execute(
        [
            request(1, None),
            request(1, b"pepper"),
            request(2, b"bell pepper"),
            request(2, b"tomato"),
            request(2, b"kiwi"),
            request(1, b""),
            request(1, b"x" * 10_240),
        ]
    )
    assert plain.outputs["DECISION"].tolist() == [[b"Tomato___b"]]
    assert np.array_equal(plain.outputs["PROBABILITIES"], softmax(logits))
    assert v1_pepper.outputs["DECISION"].tolist() == [[b"Pepper,_bell___c"]]  # labels: c alone
    assert v1_pepper.outputs["PROBABILITIES"].tolist() == [[0.0, 0.0, 1.0]]
    assert v2_pepper.outputs["DECISION"].tolist() == [[b"Tomato___b"]]  # version 2: b and c
    assert v2_pepper.outputs["PROBABILITIES"][0, 0] == 0.0
    assert v2_tomato.outputs["PROBABILITIES"].tolist() == [[1.0, 0.0, 0.0]]
    assert "invalid crop: unknown crop 'kiwi'" in unknown.error and not unknown.outputs
    assert "invalid crop: the crop name is empty" in empty.error
    assert "10240 bytes long" in huge.error and len(huge.error) < 200
    # Metrics carry the version and the class, never the crop text.
    assert {m.labels["version"] for m in model.per_class.values()} == {"1", "2"}
    assert all("kiwi" not in str(m.labels) for m in model.per_class.values())


def _synth_checkpoint(tmp_path: Path, seed: int) -> Path:
    from plantdx.checkpoint import load_checkpoint, save_checkpoint

    from helpers.export import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / f"run{seed}" / "best.pt", seed=seed, classes=tuple(SYNTH))
    ckpt = load_checkpoint(path)
    ckpt.state_dict = {  # sharper answers than a random init gives
        k: v * 30 if k.startswith("classifier.") else v for k, v in ckpt.state_dict.items()
    }
    ckpt.decision = DecisionRule(temperature=2.0, threshold=0.5).to_dict()
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def synth_crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plantdx.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth-crops")
    generate_dataset(out, per_class=8, size=64, seed=2, classes=SYNTH)
    return out


def test_evaluate_with_the_crop_from_the_labels(synth_crops: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from plantdx.cli import app

    ckpt = _synth_checkpoint(tmp_path, 0)
    runner = CliRunner()
    args = ["evaluate", str(ckpt), "--data", str(synth_crops), "--out", str(tmp_path / "e")]
    plain = runner.invoke(app, [*args, "--json"])
    crop = runner.invoke(app, [*args, "--crop-from-labels", "--json"])
    assert plain.exit_code == 0 and crop.exit_code == 0, plain.output + crop.output
    p, c = json.loads(plain.output), json.loads(crop.output)
    assert set(c) - set(p) == {"crop_from_labels", "without_crop"} and set(p) <= set(c)
    assert c["without_crop"] == {k: p[k] for k in ("accuracy", "coverage", "selective_accuracy")}
    # The true class is always among its crop's: a right answer stays right, and every wrong
    # answer naming another crop is taken back. Here the pepper photos can only be right.
    assert c["accuracy"] >= p["accuracy"] and c["n"] == p["n"] == 32
    assert c["per_class"]["Pepper,_bell___leaf_spot"]["recall"] == 1.0
    # Class-balanced: every class counts equally (the mean of the recalls of the classes present).
    for r in (p, c):
        recalls = [v["recall"] for v in r["per_class"].values() if v["support"]]
        assert r["class_balanced"]["accuracy"] == pytest.approx(sum(recalls) / len(recalls))
        assert 0 < r["class_balanced"]["coverage"] <= 1
    assert all(r["true"][:6] == r["predicted"][:6] for r in c["misclassified"])  # same crop
    assert any(r["true"][:6] != r["predicted"][:6] for r in p["misclassified"])  # the test bites
    text = runner.invoke(app, [*args, "--crop-from-labels"])
    assert text.exit_code == 0 and "with each photo's crop known" in text.output


def test_compare_reports_without_and_with_the_crop(synth_crops: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from plantdx.cli import app

    a, b = _synth_checkpoint(tmp_path, 0), _synth_checkpoint(tmp_path, 1)
    runner = CliRunner()
    args = ["compare", str(a), str(b), "--data", str(synth_crops)]
    done = runner.invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    d = json.loads(done.output)
    crop = d["with_crop"]
    assert set(crop) == {"sources", "overall", "mean_source_accuracy", "mcnemar_p"}
    for side in ("a", "b"):
        assert crop["overall"][side]["n"] == d["overall"][side]["n"] == 32
        assert crop["overall"][side]["accuracy"] >= d["overall"][side]["accuracy"]
    assert crop["overall"] != d["overall"]  # the crop changed some answers
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "crop known" in table.output
