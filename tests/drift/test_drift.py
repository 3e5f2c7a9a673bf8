"""The drift reference written at export, and `plantdx drift` on capture folders: lab photos
against a lab reference (no drift), darkened and blurred ones, field photos (drift on the
right statistics)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from plantdx.data import is_image_file
from plantdx.decision import DecisionRule
from plantdx.imagestats import EDGES
from plantdx.reference import CLASS, CONFIDENCE, REFERENCE_FILENAME, Reference

from helpers.common import SHARED_DATA, onnx_probabilities
from helpers.export import tiny_checkpoint

FIELD = SHARED_DATA / "plantdoc-field-train"


def _photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_image_file(p))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """(reference photos, other photos of the same kind): real lab photos, else drawn leaves."""
    mini = SHARED_DATA / "plantvillage-mini"
    if mini.is_dir():
        photos = _photos(mini)
    else:
        from plantdx.synth import generate_dataset

        out = tmp_path_factory.mktemp("leaves")
        generate_dataset(out, per_class=100, size=128, seed=3)
        photos = _photos(out)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(photos))
    return [photos[i] for i in sorted(order[0::2])], [photos[i] for i in order[1::2]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, lab: tuple[list[Path], list[Path]]) -> Path:
    """A version exported with a lab-photo reference (--check-data: half of the lab photos)."""
    from plantdx.export import ExportConfig, export

    tmp = tmp_path_factory.mktemp("drift")
    check = tmp / "check"
    for i, p in enumerate(lab[0]):
        (check / p.parent.name).mkdir(parents=True, exist_ok=True)
        (check / p.parent.name / f"{i}{p.suffix}").symlink_to(p)
    ckpt = tiny_checkpoint(tmp / "run" / "best.pt", classes=("a", "b", "c"), size=64)
    out = tmp / "models"
    result = export(ExportConfig(source=str(ckpt), repository=str(out), check_data=str(check)))
    assert result.version == 1
    return out


def _capture(
    root: Path,
    repo: Path,
    photos: list[Path],
    change: Callable[[Image.Image], Image.Image] | None = None,
    reason: str = "sampled",
) -> Path:
    """A capture folder as the served postprocess writes it, with the served model's answers."""
    day = root / "2026-12-04"
    day.mkdir(parents=True, exist_ok=True)
    datas = []
    for p in photos:
        data = p.read_bytes()
        if change is not None:
            buf = io.BytesIO()
            change(Image.open(io.BytesIO(data)).convert("RGB")).save(buf, format="JPEG")
            data = buf.getvalue()
        datas.append(data)
    probs = onnx_probabilities(repo, datas)
    rule = DecisionRule.load(repo / "preprocess" / "1" / "decision.json")
    labels = ["a", "b", "c"]
    for i, (data, p, decision) in enumerate(
        zip(datas, probs, rule.decisions(probs, labels), strict=True)
    ):
        sha = hashlib.sha256(data).hexdigest()
        stem = f"2015{i:02d}-{sha[:16]}"
        (day / f"{stem}.jpg").write_bytes(data)
        sidecar = {
            "time": f"2026-12-04T20:15:{i % 60:02d}Z",
            "version": "1",
            "prediction": labels[int(p.argmax())],
            "confidence": float(p.max()),
            "decision": decision,
            "sha256": sha,
            "reason": reason,
        }
        (day / f"{stem}.json").write_text(json.dumps(sidecar))
    return root


def _verdicts(repo: Path, capture: Path, out: Path | None = None) -> dict[str, str]:
    from plantdx.drift.offline import DriftConfig, drift

    report = drift(DriftConfig(str(repo), str(capture), out=str(out) if out else None))
    (version,) = report.versions
    verdicts = {c.statistic: c.verdict for c in version.comparisons}
    verdicts["abstention"] = version.abstention["verdict"]
    print(
        {c.statistic: round(c.psi, 3) for c in version.comparisons if c.psi is not None},
        version.abstention,
    )
    return verdicts


def test_export_writes_the_reference_listed_in_provenance(
    repo: Path, lab: tuple[list[Path], list[Path]]
) -> None:
    vdir = repo / "classifier" / "1"
    ref = Reference.load(vdir / REFERENCE_FILENAME)
    assert set(ref.distributions) == set(EDGES) | {CONFIDENCE, CLASS}
    n = min(200, len(lab[0]))
    assert all(ref.distributions[s].n == n for s in EDGES)
    assert ref.distributions[CONFIDENCE].n == ref.distributions[CLASS].n == ref.abstention_n == n
    assert ref.distributions[CLASS].buckets == ["a", "b", "c"]
    assert ref.abstention_share is not None and 0.0 <= ref.abstention_share <= 1.0
    assert "--check-data" in ref.sources["statistics"]
    provenance = json.loads((vdir / "provenance.json").read_text())
    assert provenance["reference"]["file"] == REFERENCE_FILENAME
    assert REFERENCE_FILENAME in provenance["files"]


def test_export_from_a_run_uses_its_split_and_says_when_there_is_no_reference(
    tmp_path: Path, synth_dir: Path
) -> None:
    from plantdx.export import ExportConfig, export

    classes = sorted(p.name for p in synth_dir.iterdir() if p.is_dir())
    rows: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        for i, p in enumerate(sorted((synth_dir / name).iterdir())):
            part = "train" if i < 8 else "val" if i < 10 else "test"
            rows[part].append([f"{name}/{p.name}", label])
    run = tmp_path / "run"
    ckpt = tiny_checkpoint(run / "best.pt", classes=tuple(classes), size=64)
    doc = {"root": str(synth_dir), "class_names": classes, "seed": 0, **rows}
    (run / "split.json").write_text(json.dumps(doc))
    export(ExportConfig(source=str(ckpt), repository=str(tmp_path / "a")))
    ref = Reference.load(tmp_path / "a" / "classifier" / "1" / REFERENCE_FILENAME)
    assert ref.distributions["brightness"].n == len(rows["train"]) + len(rows["val"])
    assert ref.abstention_n == len(rows["val"]) == ref.distributions[CLASS].n
    (run / "split.json").unlink()  # no split and no --check-data: no reference, and a note
    result = export(ExportConfig(source=str(ckpt), repository=str(tmp_path / "b")))
    assert any("no drift reference" in n for n in result.notes)
    assert not (tmp_path / "b" / "classifier" / "1" / REFERENCE_FILENAME).exists()
    assert result.provenance["reference"]["file"] is None


def test_lab_photos_against_a_lab_reference_do_not_drift(
    repo: Path, lab: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    capture = _capture(tmp_path / "capture", repo, lab[1][:200])
    # Captures kept for being uncertain are not a sample of the traffic: left out by default.
    _capture(
        tmp_path / "capture" / "x",
        repo,
        lab[1][:5],
        lambda im: im.point(lambda v: v // 5),
        "abstained",
    )
    verdicts = _verdicts(repo, capture, tmp_path / "plots")
    assert set(verdicts.values()) == {"ok"}, verdicts
    assert (tmp_path / "plots" / "v1-brightness.png").stat().st_size > 1000
    assert len(list((tmp_path / "plots").glob("*.png"))) == len(EDGES) + 2


def test_dark_blurred_photos_drift_on_brightness_and_sharpness(
    repo: Path, lab: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    def dark_blur(im: Image.Image) -> Image.Image:
        return ImageEnhance.Brightness(im.filter(ImageFilter.GaussianBlur(2))).enhance(0.4)

    verdicts = _verdicts(repo, _capture(tmp_path / "c", repo, lab[1][:200], dark_blur))
    assert verdicts["brightness"] == verdicts["sharpness"] == "drift", verdicts
    assert verdicts["megapixels"] == verdicts["aspect_ratio"] == "ok", verdicts


def test_field_photos_drift_against_a_lab_reference(repo: Path, tmp_path: Path) -> None:
    if not FIELD.is_dir():
        pytest.skip(f"field photos not found at {FIELD}")
    verdicts = _verdicts(repo, _capture(tmp_path / "c", repo, _photos(FIELD)[::2][:200]))
    assert "drift" in {verdicts["colourfulness"], verdicts["green_fraction"]}, verdicts


def test_cli_json_and_exit_code(
    repo: Path, lab: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from plantdx.cli import app

    capture = _capture(tmp_path / "c", repo, lab[1][:60], lambda im: im.point(lambda v: v // 4))
    args = ["drift", "--repository", str(repo), "--capture", str(capture), "--no-plots"]
    result = CliRunner().invoke(app, [*args, "--json", "--fail-on-drift"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.output)
    assert doc["drift"] is True and "brightness" in doc["versions"][0]["drifted"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0 and "brightness" in table.output and "drift: yes" in table.output
    missing = CliRunner().invoke(app, ["drift", "--repository", str(repo)])
    assert missing.exit_code != 0
