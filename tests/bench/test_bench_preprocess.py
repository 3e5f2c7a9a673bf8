"""`plantdx bench preprocess`: preprocessing against Pillow decoding alone, in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_helpers import run_plantdx


def test_preprocess_bench_measures_both_in_one_run(mini_photos: list[Path]) -> None:
    from plantdx.bench.preprocess import measure

    cost = measure([p.read_bytes() for p in mini_photos[:8]], image_size=64, rounds=1)
    assert cost.images == 8 and cost.decode_ms > 0 and cost.preprocess_ms > 0
    assert cost.ratio == pytest.approx(cost.preprocess_ms / cost.decode_ms)


def test_spread_images_picks_over_every_class(tmp_path: Path) -> None:
    from plantdx.bench.images import spread_images

    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            (tmp_path / cls / f"{i}.jpg").write_bytes(f"{cls}{i}".encode())
    assert spread_images(tmp_path, 3) == [b"a0", b"b0", b"c0"]  # every 4th of 12
    assert len(spread_images(tmp_path, 100)) == 12


def test_preprocess_command_prints_one_json_line_per_set_and_size(
    tmp_path: Path, mini_photos: list[Path]
) -> None:
    for i, p in enumerate(mini_photos[:4]):
        (tmp_path / f"{i}.jpg").write_bytes(p.read_bytes())
    r = run_plantdx(
        "bench", "preprocess", "--data", str(tmp_path), "--images", "4", "--rounds", "1",
        "--image-size", "32", "--image-size", "64", "--upscale", "300",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["set"], row["image_size"]) for row in rows] == [
        ("photos", 32),
        ("photos", 64),
        ("photos re-encoded at 300px", 32),
        ("photos re-encoded at 300px", 64),
    ]
    assert rows[0]["images"] == 4 and rows[0]["ratio"] > 0


def test_preprocess_command_without_images_is_one_clear_error(tmp_path: Path) -> None:
    r = run_plantdx("bench", "preprocess", "--data", str(tmp_path))
    assert r.returncode == 1 and "no images under" in r.stderr and "Traceback" not in r.stderr
