"""Instances from the cores of the machine that serves (model_repository/instances.py): the rule
for 1, 2, 4 and 16 cores, the cores a process may use (affinity, cgroup quota, PLANTDX_CORES),
the configs an export writes (sized and marked, or as given), and a server's view re-sizing
the marked configs for its own cores while leaving the repository alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plantdx import cores as cores_mod
from plantdx.exceptions import ConfigError
from plantdx.model_repository import config as mcfg
from plantdx.model_repository.instances import adapt_config_text, counts, is_auto, plan_for
from plantdx.serving.local_view import build_view


@pytest.mark.parametrize(
    ("cores", "pre", "clf", "threads", "post"),
    [(1, 1, 1, 1, 1), (2, 2, 2, 1, 1), (4, 4, 4, 1, 1), (16, 8, 4, 4, 2)],
)
def test_the_rule(cores: int, pre: int, clf: int, threads: int, post: int) -> None:
    plan = plan_for(cores)
    assert (plan.preprocess, plan.classifier, plan.classifier_threads, plan.postprocess) == (
        pre,
        clf,
        threads,
        post,
    )


def _configs(opts: mcfg.ServingOptions, **clf: object) -> dict[str, mcfg.mc.ModelConfig]:
    return {
        "preprocess": mcfg.preprocess_config(64, opts),
        "classifier": mcfg.classifier_config(64, 3, opts, **clf),  # type: ignore[arg-type]
        "postprocess": mcfg.postprocess_config(3, opts),
    }


@pytest.mark.parametrize(("cores", "expected"), [(1, [1, 1, 1]), (2, [2, 2, 1]), (16, [8, 4, 2])])
def test_an_export_writes_the_counts_for_its_cores_and_marks_them(
    cores: int, expected: list[int]
) -> None:
    configs = _configs(mcfg.ServingOptions(cores=cores))
    assert [c.instance_group[0].count for c in configs.values()] == expected
    for cfg in configs.values():
        assert cfg.parameters["instances"].string_value == "auto"
        assert is_auto(mcfg.to_pbtxt(cfg))


def test_the_default_sizes_for_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTDX_CORES", "4")
    assert mcfg.ServingOptions().plan() == plan_for(4)
    assert mcfg.preprocess_config(64, mcfg.ServingOptions()).instance_group[0].count == 4


def test_given_counts_and_gpu_groups_are_not_sized() -> None:
    opts = mcfg.ServingOptions(
        cores=16, preprocess=mcfg.Batching(instances=3), kind="gpu", version_policy="latest"
    )
    pre = mcfg.preprocess_config(64, opts)
    clf = mcfg.classifier_config(64, 3, opts, target="triton")
    assert pre.instance_group[0].count == 3 and "instances" not in pre.parameters
    assert clf.instance_group[0].count == 2 and "instances" not in clf.parameters
    for text in (mcfg.to_pbtxt(pre), mcfg.to_pbtxt(clf)):
        assert adapt_config_text(text, 1) == text


@pytest.mark.parametrize(("cores", "expected"), [(1, [1, 1, 1]), (4, [4, 4, 1]), (16, [8, 4, 2])])
def test_a_server_resizes_marked_configs(cores: int, expected: list[int]) -> None:
    configs = _configs(mcfg.ServingOptions(cores=2))
    got = []
    for name, cfg in configs.items():
        text = adapt_config_text(mcfg.to_pbtxt(cfg), cores)
        parsed = mcfg.parse_pbtxt(text)  # still Triton's ModelConfig, only the count changed
        got.append(parsed.instance_group[0].count)
        parsed.instance_group[0].count = cfg.instance_group[0].count
        assert parsed == cfg, name
        assert counts(text) == [got[-1]]
    assert got == expected


def test_an_unmarked_config_is_served_as_written() -> None:
    text = 'name: "preprocess"\ninstance_group {\n  count: 2\n  kind: KIND_CPU\n}\n'
    assert adapt_config_text(text, 16) == text


# --- the cores a process may use ------------------------------------------------------------


@pytest.fixture()
def sixteen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLANTDX_CORES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)


@pytest.mark.usefixtures("sixteen")
@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, 16),
        ({"cpu.max": "max 100000\n"}, 16),
        ({"cpu.max": "400000 100000\n"}, 4),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores of quota: 2 busy processes fit
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "6400000 100000\n"}, 16),  # a quota above the cpuset: the cpuset
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 16),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
    ],
)
def test_usable_cores_follow_the_cgroup_quota(
    tmp_path: Path, files: dict[str, str], expected: int
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cores_mod.usable_cores(root=tmp_path) == expected


@pytest.mark.usefixtures("sixteen")
def test_plantdx_cores_replaces_the_machine(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cores_mod.usable_cores({"PLANTDX_CORES": "6"}, root=tmp_path) == 6
    for bad in ("0", "two", "1.5"):
        with pytest.raises(ConfigError, match="PLANTDX_CORES"):
            cores_mod.usable_cores({"PLANTDX_CORES": bad}, root=tmp_path)


# --- the view a server serves ----------------------------------------------------------------


def _repo(root: Path, opts: mcfg.ServingOptions) -> Path:
    for name, cfg in _configs(opts).items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text("# stand-in\n")
        (root / name / "config.pbtxt").write_text(mcfg.to_pbtxt(cfg))
    (root / "plantdx" / "1").mkdir(parents=True)
    (root / "plantdx" / "config.pbtxt").write_text('name: "plantdx"\n')
    return root


def test_the_view_sizes_marked_models_for_the_serving_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path / "repo", mcfg.ServingOptions(cores=2))
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    monkeypatch.setenv("PLANTDX_CORES", "16")
    view = build_view(repo, 1, tmp_path / "view")
    got = {
        n: counts((view / n / "config.pbtxt").read_text()) for n in _configs(mcfg.ServingOptions())
    }
    assert got == {"preprocess": [8], "classifier": [4], "postprocess": [2]}
    # The postprocess is not pinned: a folder of links with its own config, not a link.
    assert not (view / "postprocess").is_symlink()
    assert (view / "postprocess" / "1").resolve() == (repo / "postprocess" / "1").resolve()
    assert "versions: 1" in (view / "classifier" / "config.pbtxt").read_text()
    assert (view / "plantdx").is_symlink()
    assert before == {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}


def test_the_view_keeps_given_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = mcfg.Batching(instances=3)
    opts = mcfg.ServingOptions(preprocess=fixed, classifier=fixed, postprocess=fixed)
    repo = _repo(tmp_path / "repo", opts)
    monkeypatch.setenv("PLANTDX_CORES", "1")
    view = build_view(repo, 1, tmp_path / "view")
    for name in ("preprocess", "classifier", "postprocess"):
        assert counts((view / name / "config.pbtxt").read_text()) == [3]
    assert (view / "postprocess").is_symlink()
