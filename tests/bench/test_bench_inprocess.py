"""`plantdx bench inprocess`: the machine's limit, the same work as a served request."""

from __future__ import annotations

import json
from pathlib import Path

from bench_helpers import LEVEL_FIELDS, run_plantdx


def test_bench_inprocess(tiny_repo: Path, mini_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "inproc.json"
    r = run_plantdx(
        "bench", "inprocess", "--repository", str(tiny_repo), "--images", str(mini_dir),
        "--layouts", "1x1b1,1x1b4", "--duration", "1", "--warmup", "0.2",
        "--max-images", "40", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["layout"] for row in rows] == ["1x1b1", "1x1b4"]
    assert sum(row["best"] for row in rows) == 1
    for row in rows:
        assert set(row) >= LEVEL_FIELDS and row["errors"] == 0 and row["images"] > 0
        assert row["preprocess_ms_per_img"] > 0 and row["model_ms_per_img"] > 0
    assert rows[1]["concurrency"] == 4 and rows[1]["batch"] == 4


def test_bench_inprocess_bad_repository(tmp_path: Path, mini_dir: Path) -> None:
    r = run_plantdx("bench", "inprocess", "--repository", str(tmp_path), "--images", str(mini_dir))
    assert r.returncode == 1 and "no classifier versions" in r.stderr


def test_version_dir_is_the_newest_classifier_version(tiny_repo: Path, tmp_path: Path) -> None:
    import shutil

    import pytest

    from plantdx.bench.inprocess import version_dir
    from plantdx.exceptions import RepositoryError

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    assert version_dir(repo) == repo / "classifier" / "1"
    (repo / "classifier" / "7").mkdir()  # newer, but empty
    with pytest.raises(RepositoryError, match=r"has no model\.onnx"):
        version_dir(repo)
    assert version_dir(repo, 1) == repo / "classifier" / "1"
