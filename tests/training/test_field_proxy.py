"""The field-photo proxy (training.field_proxy): segmentation, staging, the ImageFolder it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantdx.data import Sample, scan_image_folder
from plantdx.exceptions import DatasetError
from plantdx.training.compositing import cut_leaf, leaf_mask
from plantdx.training.field_grounds import field_background
from plantdx.training.field_proxy import EFFECTS, PROXY_MANIFEST, make_field_proxy, stage


@pytest.fixture(scope="module")
def few_samples(mini_dir: Path) -> tuple[list[Sample], list[str]]:
    """Two photos of each of four classes of the mini set."""
    folder = scan_image_folder(mini_dir)
    picked: list[Sample] = []
    for label in (0, 5, 10, 14):
        picked += [s for s in folder.samples if s.label == label][:2]
    return picked, folder.class_names


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_leaf_mask_covers_the_leaf_not_the_board(mini_photos: list[Path]) -> None:
    for path in mini_photos:
        rgb = _rgb(path)
        mask = leaf_mask(rgb)
        assert mask.shape == rgb.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        frac = float(mask.mean()) / 255
        assert 0.05 < frac < 0.85, f"{path.name}: leaf mask covers {frac:.2f} of the photo"
        # The photo's corners are board in every PlantVillage shot of the mini set.
        corners = [mask[:8, :8], mask[:8, -8:], mask[-8:, :8], mask[-8:, -8:]]
        assert sum(float(c.mean()) for c in corners) / 4 < 128, path.name


def test_leaf_mask_on_a_drawn_leaf_is_close_to_the_truth() -> None:
    rgb = np.full((200, 200, 3), (150, 145, 150), np.uint8)  # grey board
    truth = np.zeros((200, 200), np.uint8)
    yy, xx = np.mgrid[0:200, 0:200]
    truth[((xx - 100) / 70) ** 2 + ((yy - 100) / 45) ** 2 <= 1] = 255
    rgb[truth > 0] = (60, 130, 50)
    rgb[90:110, 90:110] = (150, 140, 145)  # a pale lesion inside the leaf, board-coloured
    mask = leaf_mask(rgb)
    iou = np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum()
    assert iou > 0.95


def test_leaf_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        leaf_mask(np.zeros((10, 10), np.uint8))


def test_cutout_is_cropped_to_the_leaf(mini_photos: list[Path]) -> None:
    rgb = _rgb(mini_photos[0])
    leaf = cut_leaf(rgb)
    h, w = leaf.alpha.shape
    assert leaf.rgb.shape == (h, w, 3) and h <= rgb.shape[0] and w <= rgb.shape[1]
    assert leaf.alpha.min() >= 0.0 and leaf.alpha.max() <= 1.0
    assert leaf.alpha.mean() > 0.3  # mostly leaf inside its own bounding box


def test_backgrounds_are_deterministic_and_in_range() -> None:
    a, name_a = field_background(np.random.default_rng(3), 96)
    b, name_b = field_background(np.random.default_rng(3), 96)
    assert name_a == name_b and np.array_equal(a, b)
    assert a.shape == (96, 96, 3) and a.min() >= 0 and a.max() <= 255
    assert a.std() > 3  # textured, not flat


def test_stage_applies_only_the_named_effects(mini_photos: list[Path]) -> None:
    leaf = cut_leaf(_rgb(mini_photos[0]))
    plain, info = stage(leaf, [], np.random.default_rng(0), size=128, effects=())
    assert plain.shape == (128, 128, 3) and plain.dtype == np.uint8
    assert set(info) == {"leaf"} and info["leaf"]["center"] == [0.5, 0.5]
    _, info = stage(leaf, [leaf], np.random.default_rng(0), size=128)
    assert {"ground", "jpeg_quality", "light"} <= set(info)
    with pytest.raises(ValueError, match="unknown effect"):
        stage(leaf, [], np.random.default_rng(0), effects=("fog",))


def test_make_field_proxy_writes_a_labelled_deterministic_image_folder(
    few_samples: tuple[list[Sample], list[str]], tmp_path: Path
) -> None:
    samples, names = few_samples
    first = make_field_proxy(samples, tmp_path / "a", seed=7, class_names=names, size=160)
    again = make_field_proxy(samples, tmp_path / "b", seed=7, class_names=names, size=160)
    other = make_field_proxy(samples, tmp_path / "c", seed=8, class_names=names, size=160)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == len(samples)
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        with Image.open(tmp_path / "a" / rel) as im:
            assert im.size == (160, 160) and im.mode == "RGB"
    assert any(
        (tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes() for r in files
    )
    # Folder names are the class names, and every image sits in its source photo's class.
    folder = scan_image_folder(tmp_path / "a", min_classes=1)
    manifest = json.loads((tmp_path / "a" / PROXY_MANIFEST).read_text())
    by_file = {m["file"]: Path(m["source"]) for m in manifest["images"]}
    for s in folder.samples:
        rel = f"{folder.class_names[s.label]}/{s.path.name}"
        assert by_file[rel].parent.name == folder.class_names[s.label]
    assert first.counts == again.counts and sum(first.counts.values()) == len(samples)
    assert other.class_names == names and manifest["effects"] == list(EFFECTS)


def test_make_field_proxy_reads_a_run_split(
    few_samples: tuple[list[Sample], list[str]], tmp_path: Path
) -> None:
    from plantdx.data import ImageFolder, save_split

    samples, names = few_samples
    root = samples[0].path.parent.parent
    folder = ImageFolder(root=root, class_names=names, samples=samples)
    split = {"train": samples[:2], "val": [], "test": samples[2:5]}
    run = tmp_path / "run"
    run.mkdir()
    save_split(split, folder, run / "split.json", seed=0)
    result = make_field_proxy(run, tmp_path / "proxy", per_photo=2, size=96)
    assert sum(result.counts.values()) == 6
    with pytest.raises(DatasetError, match="no split"):
        make_field_proxy(run, tmp_path / "x", split="holdout")
    with pytest.raises(DatasetError, match="neither"):
        make_field_proxy(tmp_path / "missing", tmp_path / "y")


def test_plantdx_data_field_proxy_stages_a_run_split(
    few_samples: tuple[list[Sample], list[str]], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from plantdx.cli import app
    from plantdx.data import ImageFolder, save_split

    samples, names = few_samples
    folder = ImageFolder(root=samples[0].path.parent.parent, class_names=names, samples=samples)
    run = tmp_path / "run"
    run.mkdir()
    split = {"train": samples[:2], "val": [], "test": samples[2:5]}
    save_split(split, folder, run / "split.json", seed=0)
    out = tmp_path / "proxy"
    args = ["data", "field-proxy", str(run), str(out), "--per-photo", "2", "--size", "96"]
    result = CliRunner().invoke(app, [*args, "--seed", "3", "--effects", "background,camera"])
    assert result.exit_code == 0, result.output
    assert f"wrote 6 images in {len(names)} classes to {out}" in result.output
    manifest = json.loads((out / PROXY_MANIFEST).read_text())
    assert manifest["seed"] == 3 and manifest["effects"] == ["background", "camera"]
    result = CliRunner().invoke(app, [*args, "--effects", "fog"])
    assert result.exit_code != 0 and "unknown effect" in result.output


def test_evaluate_runs_on_the_proxy_folder(
    tiny_run: Path, few_samples: tuple[list[Sample], list[str]], tmp_path: Path
) -> None:
    from plantdx.training import EvaluateConfig, evaluate_checkpoint

    samples, names = few_samples
    make_field_proxy(samples, tmp_path / "proxy", seed=1, class_names=names, size=128)
    report = evaluate_checkpoint(
        EvaluateConfig(checkpoint=str(tiny_run / "best.pt"), data=str(tmp_path / "proxy"))
    )
    assert report["n"] == len(samples)
    assert 0.0 <= report["accuracy"] <= 1.0
