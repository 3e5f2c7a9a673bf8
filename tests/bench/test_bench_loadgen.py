"""`plantdx bench serve`: the load generator measures what it claims (windows, errors, cache
hits, fields, identical decoded work); the measurements themselves are benchmarks, reported in
BENCHMARKS.md."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import LEVEL_FIELDS, run_plantdx
from bench_helpers import photo_dir as make_photo_dir
from typer.testing import CliRunner

from plantdx.cli import app


@pytest.mark.parametrize("cmd", [["bench", "serve"], ["bench", "inprocess"]])
def test_help(cmd: list[str]) -> None:
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_unique_payloads_decode_exactly_like_the_original(mini_photos: list[Path]) -> None:
    """The bytes appended to make each request unique change nothing that is decoded (so a
    cache keyed on decoded pixels still answers the repeats: hence the cache-hit count)."""
    from PIL import Image

    from plantdx.bench.loadgen import _Payloads
    from plantdx.preprocessing import PreprocessMeta, Preprocessor

    jpeg = mini_photos[0].read_bytes()
    buf = io.BytesIO()
    Image.open(mini_photos[1]).save(buf, format="PNG")
    png = buf.getvalue()
    payloads = _Payloads([jpeg, png], unique=True)
    sent = [payloads.next() for _ in range(4)]
    assert len(set(sent)) == 4 and sent[0].startswith(jpeg) and sent[1].startswith(png)
    pre = Preprocessor(PreprocessMeta(image_size=224))
    for original, unique in ((jpeg, sent[0]), (png, sent[1]), (jpeg, sent[2])):
        assert np.array_equal(pre(original), pre(unique))
    same = _Payloads([jpeg], unique=False)
    assert same.next() == same.next() == jpeg
    # Levels and runs never repeat each other's request bytes (a counter alone would).
    assert _Payloads([jpeg], unique=True).next() != _Payloads([jpeg], unique=True).next()


def test_window_counts_only_requests_inside_it() -> None:
    from plantdx.bench.loadgen import ServeBenchConfig, _Record, _summarise

    rec = _Record(
        starts=[0.5, 1.0, 1.5, 2.0, 10.9],
        ends=[1.1, 1.2, 1.6, 2.4, 11.2],  # first starts before, last ends after the window
        errors=[(0.9, "before"), (5.0, "invalid_image: x"), (5.1, "invalid_image: x")],
    )
    r = _summarise(ServeBenchConfig(), 4, rec, t0=1.0, t1=11.0, cpu_s=0.5)
    assert r.images == 3 and r.errors == 2 and r.img_per_s == 0.3
    assert r.p50_ms == 200.0 and r.p99_ms is not None and 390 < r.p99_ms <= 400
    assert r.client_cpu_pct == 5.0 and r.error_examples == ["invalid_image: x"]
    assert set(r.to_dict()) >= LEVEL_FIELDS


def test_started_window_counts_every_request_sent_in_it() -> None:
    """The sweep's and profile's count: nothing before the window, everything sent inside it
    with its answer however late (as the server's statistics count them)."""
    from plantdx.bench.loadgen import ServeBenchConfig, _Record, _summarise

    rec = _Record(starts=[1.0, 1.5, 10.9], ends=[1.2, 1.7, 11.5], errors=[(11.2, "timeout: x")])
    r = _summarise(ServeBenchConfig(window="started"), 2, rec, t0=1.0, t1=11.0, cpu_s=0.5)
    assert r.images == 3 and r.errors == 1 and r.duration_s == 10.5  # to the last answer
    assert r.latencies_ms == pytest.approx([200.0, 200.0, 600.0])
    assert r.percentile(50) == pytest.approx(200.0) and "latencies_ms" not in r.to_dict()
    early = _Record(starts=[1.0, 1.5], ends=[1.2, 2.0])  # out of requests at 2.0
    assert _summarise(ServeBenchConfig(window="started"), 1, early, 1.0, 11.0, 0.1).img_per_s == 2
    inside = _summarise(ServeBenchConfig(), 2, rec, t0=1.0, t1=11.0, cpu_s=0.5)
    assert inside.images == 2 and inside.errors == 0 and inside.duration_s == 10.0


def test_request_budget_applies_to_started_windows_only() -> None:
    from plantdx.bench.loadgen import ServeBenchConfig, _Budget, closed_loop
    from plantdx.exceptions import ConfigError

    far = 1e12
    budget = _Budget(ServeBenchConfig(window="started", max_requests=3))
    assert [budget.more(far) for _ in range(5)] == [True, True, True, False, False]
    assert not _Budget(ServeBenchConfig(window="started")).more(0.0)  # past the window
    unbounded = _Budget(ServeBenchConfig(max_requests=3))  # "inside": time only
    assert all(unbounded.more(far) for _ in range(5))
    with pytest.raises(ConfigError, match="at least one image"):
        closed_loop("localhost:1", [], concurrency=1, duration_s=1.0)


def test_option_parsing() -> None:
    from plantdx.bench.inprocess import default_layouts, parse_layout
    from plantdx.cli.bench_serve import _levels
    from plantdx.exceptions import ConfigError

    assert _levels("1, 8,32") == [1, 8, 32]
    for bad in ("0,8", "a,b", ""):
        with pytest.raises(ConfigError):
            _levels(bad)
    assert parse_layout("2x1b8") == (2, 1, 8)
    for bad in ("2x1", "0x1b1", "2*1b8"):
        with pytest.raises(ConfigError, match="WORKERSxTHREADSbBATCH"):
            parse_layout(bad)
    assert default_layouts(2) == ["1x2b1", "2x1b1", "1x2b8", "2x1b8"]
    assert default_layouts(1) == ["1x1b1", "1x1b8"]


# get_inference_statistics as Triton 2.51 answers it: HTTP JSON, and gRPC as_json (int64 as
# strings, zero counts left out); trimmed to the fields read.
HTTP_STATS = {
    "model_stats": [
        {"name": "classifier", "version": "1",
         "inference_stats": {"cache_hit": {"count": 7, "ns": 1}, "cache_miss": {"count": 3}}},
        {"name": "plantdx", "version": "1",
         "inference_stats": {"cache_hit": {"count": 0, "ns": 0}}},
        {"name": "preprocess", "version": "1", "inference_stats": {"cache_hit": {"count": 5}}},
    ]
}  # fmt: skip
GRPC_STATS = {
    "model_stats": [
        {"name": "classifier", "version": "1", "inference_stats": {"cache_hit": {"count": "7"}}},
        {"name": "plantdx", "version": "1", "inference_stats": {"cache_hit": {}}},
        {"name": "postprocess", "version": "1"},
    ]
}


def test_cache_hits_are_read_from_the_server_statistics() -> None:
    from plantdx.bench.loadgen import (
        LevelResult,
        ServeBenchConfig,
        _hits_between,
        _read_cache_hits,
        _Record,
        _summarise,
    )
    from plantdx.cli.bench_serve import cache_warning
    from plantdx.client.results import cache_hit_count

    assert cache_hit_count(HTTP_STATS) == 12 and cache_hit_count(GRPC_STATS) == 7
    assert cache_hit_count({}) == 0

    class Stats:
        def __init__(self, answer: object) -> None:
            self.answer = answer

        def inference_statistics(self) -> object:
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    assert _read_cache_hits(Stats(HTTP_STATS)) == 12  # type: ignore[arg-type]
    # A gateway that does not forward the statistics API: unknown, and the benchmark goes on.
    assert _read_cache_hits(Stats(RuntimeError("404 Not Found"))) is None  # type: ignore[arg-type]
    assert _hits_between(12, 40) == 28 and _hits_between(None, 40) is None

    def level(c: int, hits: int | None) -> LevelResult:
        rec = _Record(starts=[1.0, 1.5], ends=[1.2, 1.7])
        return _summarise(ServeBenchConfig(), c, rec, 1.0, 2.0, 0.1, cache_hits=hits)

    assert level(1, 28).to_dict()["cache_hits"] == 28
    assert level(1, None).to_dict()["cache_hits"] is None
    assert cache_warning([level(1, 0), level(8, None)]) is None
    warning = cache_warning([level(1, 0), level(8, 28)])
    assert warning and "include Triton response-cache hits" in warning
    assert "concurrency 8: 28 hits" in warning and "concurrency 1" not in warning
    assert "--no-response-cache" in warning


def test_plot_goes_next_to_the_json_unless_given() -> None:
    from plantdx.cli.bench_serve import plot_path

    assert plot_path(None, Path("out/serve.json")) == Path("out/serve.png")
    assert plot_path(Path("p.png"), Path("out/serve.json")) == Path("p.png")
    assert plot_path(None, None) is None


def test_unique_help_no_longer_claims_to_defeat_the_cache() -> None:
    import typing

    from plantdx.cli.bench_serve import serve

    hint = typing.get_type_hints(serve, include_extras=True)["unique"]
    text = typing.get_args(hint)[1].help
    assert "defeats the response cache" not in text
    assert "request bytes" in text and "not one keyed on decoded pixels" in text


def test_plot_is_a_png(tmp_path: Path) -> None:
    from plantdx.bench.loadgen import LevelResult
    from plantdx.bench.report import plot_levels

    rows = [
        LevelResult(c, "grpc", "async", 1.0, 10 * c, 0, 10.0 * c, 5.0, 6.0, 7.0 * c, 5.5, 3.0, 0.2)
        for c in (1, 8, 32)
    ]
    out = plot_levels(rows, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- against the real server ------------------------------------------------------------------
@pytest.mark.triton
def test_bench_serve_http_counts_errors(
    triton_server, mini_photos: list[Path], tmp_path: Path
) -> None:
    photo_dir = make_photo_dir(tmp_path, mini_photos)
    (photo_dir / "zz-broken.jpg").write_bytes(b"not an image " + uuid.uuid4().bytes)
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    r = run_plantdx(
        "bench", "serve", "--url", triton_server.http_url, "--images", str(photo_dir),
        "--concurrency", "1,3", "--duration", "1.5", "--warmup", "0.3",
        "--json", str(out), "--plot", str(plot),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["concurrency"] for row in rows] == [1, 3]
    for row in rows:
        assert set(row) >= LEVEL_FIELDS and row["protocol"] == "http"
        assert row["images"] > 0 and row["img_per_s"] > 0
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["errors"] > 0  # one image in eleven is rejected, every time it is sent
        assert any("invalid_image" in e for e in row["error_examples"])
        assert 0 < row["client_cpu_pct"] < 200  # measured over the window, not after it
        assert isinstance(row["cache_hits"], int)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "img/s" in r.stdout
    # Eleven images cycled on a server whose classifier caches pixels: the cache answers, and
    # the report says so however unique the request bytes are.
    assert sum(row["cache_hits"] for row in rows) > 0
    assert "include Triton response-cache hits" in r.stderr


@pytest.mark.triton
def test_bench_serve_grpc_threads(triton_server, mini_photos: list[Path], tmp_path: Path) -> None:
    photo_dir = make_photo_dir(tmp_path, mini_photos)
    out = tmp_path / "serve.json"
    r = run_plantdx(
        "bench", "serve", "--url", triton_server.grpc_url, "--protocol", "grpc",
        "--driver", "threads", "--images", str(photo_dir), "--concurrency", "2",
        "--duration", "1.5", "--warmup", "0.3", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())
    assert row["driver"] == "threads" and row["errors"] == 0 and row["images"] > 0
    assert isinstance(row["cache_hits"], int)  # read over gRPC too
    # No --plot: the plot is written next to the JSON, and the output says where.
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {tmp_path / 'serve.png'}" in r.stderr


def test_bench_serve_unreachable_is_one_clear_error(
    tmp_path: Path, mini_photos: list[Path]
) -> None:
    from plantdx.serving.server import free_port

    (tmp_path / "a.jpg").write_bytes(mini_photos[0].read_bytes())
    r = run_plantdx(
        "bench", "serve", "--url", f"127.0.0.1:{free_port()}", "--images", str(tmp_path)
    )
    assert r.returncode == 1
    assert "cannot reach plantdx" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.triton
def test_closed_loop_counts_what_the_server_served(triton_server, mini_photos: list[Path]) -> None:
    """The sweep's load (gRPC, threads, through PlantDxClient): a request budget is kept, each
    image is sent once, and every request counts."""
    from plantdx.bench.loadgen import closed_loop

    images = [p.read_bytes() for p in mini_photos[:5]]
    r = closed_loop(triton_server.grpc_url, images, concurrency=1, duration_s=30, max_requests=5)
    assert r.images == 5 and r.errors == 0 and r.protocol == "grpc" and r.driver == "threads"
    assert r.duration_s < 30 and len(r.latencies_ms) == 5
    r = closed_loop(triton_server.grpc_url, images, concurrency=2, duration_s=0.5)
    assert r.images > 0 and r.errors == 0
