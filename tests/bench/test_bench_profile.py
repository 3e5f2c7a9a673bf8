"""`plantdx bench profile` and `plantdx bench sweep`: Triton's statistics and the CPU per served
image, and the sweep's rows."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_profile_arithmetic_is_per_request_and_per_image() -> None:
    from plantdx.bench.profile import cpu_per_image, stats_delta

    zero = {k: 0 for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
    before = {"m": {**zero, "requests": 10, "executions": 10, "inferences": 10, "queue": 5_000}}
    after = {
        "m": {**zero, "requests": 30, "executions": 15, "inferences": 30, "queue": 45_000},
        "idle": {**zero, "requests": 0, "executions": 0, "inferences": 0},
    }
    delta = stats_delta(before, after)
    assert set(delta) == {"m"}  # a model that served nothing in the window is left out
    assert delta["m"]["requests"] == 20 and delta["m"]["mean_batch"] == 4.0
    assert delta["m"]["queue_us"] == 2.0  # 40 µs of queueing over 20 requests
    cpu = cpu_per_image({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 2.1, "new": 0.1}, images=100)
    assert cpu == {"a": 5.0, "b": 1.0, "new": 1.0, "total": 7.0}
    assert cpu_per_image({}, {"a": 1.0}, images=0) == {}


@pytest.mark.triton
def test_profile_accounts_for_every_served_image(triton_server, mini_photos: list[Path]) -> None:
    from plantdx.bench.profile import format_level, profile_level

    images = [p.read_bytes() for p in mini_photos[:6]]
    p = profile_level(triton_server, images, concurrency=2, seconds=1.5)
    assert p.images > 0 and p.failed == 0
    # The window's statistics hold exactly the measured requests: none from the warm-up.
    assert p.models["plantdx"]["requests"] == p.images
    assert p.models["preprocess"]["requests"] == p.images
    groups = {"triton core", "preprocess stubs", "classifier stubs", "postprocess stubs"}
    assert groups | {"load generator", "total"} <= set(p.cpu_ms_per_img)
    assert all(p.cpu_ms_per_img[k] >= 0 for k in groups)
    # Decoding real photos takes CPU time (/proc counts in 10 ms ticks; the tiny classifier's
    # answers may all come from the response cache, so only preprocessing is sure to show).
    assert p.cpu_ms_per_img["preprocess stubs"] > 0
    assert "CPU ms per image" in format_level(p)


def test_sweep_rows_keep_their_fields() -> None:
    from plantdx.bench.loadgen import LevelResult
    from plantdx.bench.sweep import _brief, summary

    r = LevelResult(4, "grpc", "threads", 2.0, 4, 1, 2.0, 10.0, 11.0, 12.0, 10.5, 50.0, 1.0,
                    ["timeout: x"], latencies_ms=[10.0, 10.0, 12.0, 12.0])  # fmt: skip
    row = summary(r)
    assert list(row) == [
        "concurrency", "seconds", "ok", "failed", "throughput",
        "p50_ms", "p95_ms", "p99_ms", "mean_ms", "first_errors",
    ]  # fmt: skip
    assert row["ok"] == 4 and row["failed"] == 1 and row["p95_ms"] == 12.0
    assert row["first_errors"] == ["timeout: x"] and row["mean_ms"] == 10.5
    assert set(_brief(r)) == {"ok", "failed", "throughput", "p50_ms", "p95_ms"}


def test_sweep_variant_rewrites_a_copy_of_the_configs(tiny_repo: Path, tmp_path: Path) -> None:
    import shutil

    from plantdx.bench.sweep import Variant, configure
    from plantdx.model_repository.config import parse_pbtxt

    copy = tmp_path / "repo"
    shutil.copytree(tiny_repo, copy)
    configure(copy, Variant("v", preprocess_instances=3, classifier_threads=2, cache="ensemble"))
    pre = parse_pbtxt((copy / "preprocess" / "config.pbtxt").read_text())
    clf = parse_pbtxt((copy / "classifier" / "config.pbtxt").read_text())
    ens = parse_pbtxt((copy / "plantdx" / "config.pbtxt").read_text())
    assert pre.instance_group[0].count == 3 and not pre.response_cache.enable
    assert clf.parameters["intra_op_threads"].string_value == "2"
    assert ens.response_cache.enable
