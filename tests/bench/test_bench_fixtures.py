"""`plantdx bench checkpoint` and the benchmark repository: real architectures, no training."""

from __future__ import annotations

from pathlib import Path

from plantdx.bench.fixtures import benchmark_checkpoint, benchmark_repository, numbered_classes


def test_benchmark_checkpoint_loads_and_builds(tmp_path: Path) -> None:
    from plantdx.checkpoint import load_checkpoint

    path = benchmark_checkpoint(tmp_path / "b" / "best.pt", "test_tiny", numbered_classes(3),
                                image_size=32)  # fmt: skip
    ckpt = load_checkpoint(path)
    assert ckpt.model_name == "test_tiny" and ckpt.class_names == [
        "class_00",
        "class_01",
        "class_02",
    ]
    assert ckpt.preprocessing.image_size == 32
    assert ckpt.build_model()  # the weights fit the architecture


def test_benchmark_repository_exports_a_served_version(tmp_path: Path, synth_dir: Path) -> None:
    from plantdx.model_repository.layout import versions

    repo, version = benchmark_repository(synth_dir, tmp_path / "work", "test_tiny", 32)
    assert version == 1 and repo == tmp_path / "work" / "repo"
    assert versions(repo / "classifier") == [1]
    assert (tmp_path / "work" / "run" / "best.pt").is_file()
