"""The synthetic dataset behind `plantdx demo`: layout, determinism and learnable classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantdx.exceptions import DatasetError
from plantdx.synth import CLASSES, draw_leaf, generate_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_counts_and_classes_file(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    counts = generate_dataset(
        tmp_path, per_class=3, size=48, progress=lambda done, total: seen.append((done, total))
    )
    assert counts == dict.fromkeys(CLASSES, 3)
    assert (tmp_path / "classes.txt").read_text().splitlines() == sorted(CLASSES)
    assert sorted(d.name for d in tmp_path.iterdir() if d.is_dir()) == sorted(CLASSES)
    for cls in CLASSES:
        names = sorted(p.name for p in (tmp_path / cls).iterdir())
        assert names == [f"{cls}_{i:04d}.jpg" for i in range(3)]
    total = 3 * len(CLASSES)
    assert seen == [(i, total) for i in range(1, total + 1)]


def test_images_decode_as_rgb_of_requested_size(tmp_path: Path) -> None:
    generate_dataset(tmp_path, per_class=1, size=72, classes=CLASSES[:2])
    for path in tmp_path.rglob("*.jpg"):
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (72, 72)
    drawn = draw_leaf("Leaf___rust", np.random.default_rng(0), size=40)
    assert drawn.mode == "RGB" and drawn.size == (40, 40)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_dataset(tmp_path / name, per_class=2, size=48, seed=seed, classes=CLASSES[:3])
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in images)
    # Within one dataset every image is different, too.
    assert len({a[k] for k in images}) == len(images)


def test_files_do_not_depend_on_class_order(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "all", per_class=1, size=48)
    generate_dataset(tmp_path / "one", per_class=1, size=48, classes=["Leaf___mosaic"])
    name = "Leaf___mosaic/Leaf___mosaic_0000.jpg"
    assert (tmp_path / "all" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": ["Leaf___healthy", "Leaf___frostbite"]},
        {"classes": ["banana"]},
        {"classes": []},
        {"classes": ["Leaf___rust", "Leaf___rust"]},
        {"per_class": 0},
        {"seed": -1},
        {"size": 8},
    ],
)
def test_invalid_arguments_raise_dataset_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DatasetError):
        generate_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_draw_leaf_unknown_class() -> None:
    with pytest.raises(DatasetError, match="unknown"):
        draw_leaf("Leaf___scurvy", np.random.default_rng(0))


def test_disease_suffix_selects_the_pattern() -> None:
    # Other crop prefixes reuse the same painters: same rng, same picture.
    a = draw_leaf("Tomato___blight", np.random.default_rng(3), size=64)
    b = draw_leaf("Leaf___blight", np.random.default_rng(3), size=64)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def _colour_features(img: Image.Image, bins: int = 6) -> np.ndarray:
    """Log of a joint RGB histogram of the pixels that differ from the border (the leaf)."""
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    edges = (rgb[:2], rgb[-2:], rgb[:, :2], rgb[:, -2:])
    background = np.median(np.concatenate([e.reshape(-1, 3) for e in edges]), axis=0)
    leaf = np.abs(rgb - background).sum(axis=-1) > 0.12
    q = np.minimum((rgb * bins).astype(int), bins - 1)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.bincount(idx[leaf], minlength=bins**3) / max(1, int(leaf.sum()))
    return np.log(hist + 1e-3)


def test_classes_are_separable_by_colour(tmp_path: Path) -> None:
    """A nearest-centroid colour-histogram classifier must beat chance (1/6) by a wide margin.

    A generator whose classes look alike (or all healthy) scores near chance here; the demo's
    CNN needs far more signal than this crude classifier to reach its accuracy target.
    """
    per_class, n_train = 30, 15
    generate_dataset(tmp_path, per_class=per_class, size=64, seed=123)
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, cls in enumerate(CLASSES):
        for i in range(per_class):
            with Image.open(tmp_path / cls / f"{cls}_{i:04d}.jpg") as img:
                feats = _colour_features(img.convert("RGB"))
            if i < n_train:
                train_x.append(feats)
                train_y.append(label)
            else:
                test_x.append(feats)
                test_y.append(label)
    x_train, y_train = np.stack(train_x), np.array(train_y)
    centroids = np.stack([x_train[y_train == k].mean(axis=0) for k in range(len(CLASSES))])
    dist = ((np.stack(test_x)[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = float((dist.argmin(axis=1) == np.array(test_y)).mean())
    print(f"nearest-centroid colour accuracy: {accuracy:.3f}")
    assert accuracy > 0.6, f"classes barely separable: accuracy {accuracy:.3f} (chance 0.167)"
