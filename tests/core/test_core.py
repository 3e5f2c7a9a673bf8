"""Core: config resolution, dataset scanning and the stratified split, checkpoints, labels."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from plantdx.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from plantdx.config import resolve, to_dict
from plantdx.data import load_split, save_split, scan_image_folder, stratified_split
from plantdx.exceptions import CheckpointError, ConfigError, DatasetError
from plantdx.models import create_model, get_spec, model_kwargs_for_checkpoint


@dataclass
class Inner:
    lr: float = 0.1
    name: str = "a"


@dataclass
class Outer:
    epochs: int = 3
    flag: bool = False
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_config_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 5\ninner:\n  lr: 0.5\n")
    cfg = resolve(Outer, y, {"inner.name": "b", "flag": True, "maybe": None})
    assert cfg == Outer(epochs=5, flag=True, maybe=None, inner=Inner(lr=0.5, name="b"))
    assert to_dict(cfg)["inner"] == {"lr": 0.5, "name": "b"}


def test_config_rejects_unknown_and_mistyped(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("epochz: 5\n")
    with pytest.raises(ConfigError, match="epochz"):
        resolve(Outer, y)
    with pytest.raises(ConfigError, match="epochs"):
        resolve(Outer, None, {"epochs": "many"})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(Outer, tmp_path / "missing.yaml")


def _make_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (i * 5 % 255, 100, 50)).save(d / f"img {i},x.jpg")
    return root


def test_scan_handles_commas_and_spaces(tmp_path: Path) -> None:
    root = _make_folder(tmp_path, {"Pepper,_bell___healthy": 3, "Tomato___Spider mites": 4})
    (root / "Tomato___Spider mites" / "notes.txt").write_text("not an image")
    folder = scan_image_folder(root)
    assert folder.class_names == ["Pepper,_bell___healthy", "Tomato___Spider mites"]
    assert folder.counts() == {"Pepper,_bell___healthy": 3, "Tomato___Spider mites": 4}


def test_scan_lists_non_image_files_and_ignores_hidden_ones(tmp_path: Path) -> None:
    root = _make_folder(tmp_path, {"a": 2, "b": 3})
    (root / "a" / "notes.txt").write_text("field notes")
    (root / "b" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / "b" / "README").write_text("no extension")
    (root / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    (root / "b" / ".ipynb_checkpoints").mkdir()
    (root / "b" / ".ipynb_checkpoints" / "x.txt").write_text("hidden folder")
    (root / "top-level.txt").write_text("not in a class folder")
    folder = scan_image_folder(root)
    assert folder.counts() == {"a": 2, "b": 3}
    assert [p.relative_to(root).as_posix() for p, _ in folder.skipped] == [
        "a/notes.txt",
        "b/README",
        "b/Thumbs.db",
    ]
    reasons = dict((p.name, why) for p, why in folder.skipped)
    assert reasons["notes.txt"].startswith("not_an_image: extension '.txt'")
    assert reasons["README"].startswith("not_an_image: no extension")
    clean = scan_image_folder(_make_folder(tmp_path / "clean", {"a": 2, "b": 2}))
    assert clean.skipped == []


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    _make_folder(tmp_path / "one", {"a": 2})
    with pytest.raises(DatasetError, match="at least 2"):
        scan_image_folder(tmp_path / "one")
    root = _make_folder(tmp_path / "two", {"a": 2})
    (root / "b").mkdir()
    with pytest.raises(DatasetError, match=r"no images.*b"):
        scan_image_folder(root)


def test_stratified_split_proportions_and_stability(tmp_path: Path) -> None:
    root = _make_folder(tmp_path, {"a": 50, "b": 30, "c": 20})
    folder = scan_image_folder(root)
    split = stratified_split(folder, seed=7)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 70, "val": 20, "test": 10}
    for name, items in split.items():
        per_class = Counter(s.label for s in items)
        frac = {"train": 0.7, "val": 0.2, "test": 0.1}[name]
        for label, total in ((0, 50), (1, 30), (2, 20)):
            assert per_class[label] == round(total * frac)
    all_paths = [s.path for v in split.values() for s in v]
    assert len(set(all_paths)) == 100
    assert stratified_split(folder, seed=7) == split
    assert stratified_split(folder, seed=8) != split
    save_split(split, folder, tmp_path / "split.json", seed=7)
    names, loaded = load_split(tmp_path / "split.json")
    assert names == folder.class_names
    assert loaded == split


def test_split_keeps_every_class_in_every_split_for_small_classes(tmp_path: Path) -> None:
    folder = scan_image_folder(_make_folder(tmp_path, {"a": 3, "b": 4}))
    split = stratified_split(folder)
    for items in split.values():
        assert {s.label for s in items} == {0, 1}


def test_split_on_real_photos(mini_dir: Path) -> None:
    folder = scan_image_folder(mini_dir)
    assert len(folder.class_names) == 15
    split = stratified_split(folder, seed=42)
    assert {k: len(v) for k, v in split.items()} == {"train": 630, "val": 180, "test": 90}


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    model = create_model("test_tiny", num_classes=4, width=4)
    ckpt = Checkpoint(
        model_name="test_tiny",
        class_names=["a", "b", "c", "d"],
        preprocessing=get_spec("test_tiny").preprocessing(48),
        state_dict=model.state_dict(),
        model_kwargs=model_kwargs_for_checkpoint(model),
        config={"lr": 0.1, "nested": {"x": [1, 2]}},
        metrics={"val_acc": 0.5},
    )
    path = save_checkpoint(ckpt, tmp_path / "best.pt")
    raw = torch.load(path, weights_only=True)  # no pickled code needed to open it
    assert raw["class_names"] == ["a", "b", "c", "d"]
    loaded = load_checkpoint(path)
    assert loaded.preprocessing.image_size == 48
    assert loaded.model_kwargs == {"width": 4}
    rebuilt = loaded.build_model()
    x = torch.randn(2, 3, 48, 48)
    model.eval()
    assert torch.equal(rebuilt(x), model(x))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a plantdx checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_labels_round_trip(tmp_path: Path) -> None:
    from plantdx.labels import pretty, read_labels, write_labels

    names = ["Pepper,_bell___healthy", "Tomato___Spider_mites Two-spotted_spider_mite"]
    write_labels(names, tmp_path / "labels.txt")
    assert read_labels(tmp_path / "labels.txt") == names
    assert pretty(names[0]) == "Pepper bell: healthy"
    assert json.dumps(names)
