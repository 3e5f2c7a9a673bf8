"""`plantdx bench serve`, `plantdx bench inprocess` and the helpers of scripts/bench_all.sh.

These check that the tools measure what they claim (windows, errors, fields, identical work);
the measurements themselves are benchmarks, reported in BENCHMARKS.md.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from plantdx.cli import app

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "scripts" / "bench_helpers.py"
LEVEL_FIELDS = {"concurrency", "img_per_s", "p50_ms", "p90_ms", "p99_ms", "errors"}


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantdx", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("cmd", [["bench", "serve"], ["bench", "inprocess"]])
def test_help(cmd: list[str]) -> None:
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_unique_payloads_decode_exactly_like_the_original(mini_photos: list[Path]) -> None:
    """The bytes appended to make each request unique change nothing that is decoded (so a
    cache keyed on decoded pixels still answers the repeats: hence the cache-hit count)."""
    from PIL import Image

    from plantdx.client.loadgen import _Payloads
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
    from plantdx.client.loadgen import ServeBenchConfig, _Record, _summarise

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


def test_option_parsing() -> None:
    from plantdx.cli.bench_serve import _levels
    from plantdx.client.inprocess import default_layouts, parse_layout
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
    from plantdx.cli.bench_serve import cache_warning
    from plantdx.client.loadgen import (
        LevelResult,
        ServeBenchConfig,
        _hits_between,
        _read_cache_hits,
        _Record,
        _summarise,
    )
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
    import inspect

    from plantdx.cli.bench_serve import serve

    text = inspect.signature(serve).parameters["unique"].default.help
    assert "defeats the response cache" not in text
    assert "request bytes" in text and "not one keyed on decoded pixels" in text


def test_plot_is_a_png(tmp_path: Path) -> None:
    from plantdx.client.loadgen import LevelResult, plot_levels

    rows = [
        LevelResult(c, "grpc", "async", 1.0, 10 * c, 0, 10.0 * c, 5.0, 6.0, 7.0 * c, 5.5, 3.0, 0.2)
        for c in (1, 8, 32)
    ]
    out = plot_levels(rows, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- against the real server ------------------------------------------------------------------
@pytest.fixture()
def photo_dir(tmp_path: Path, mini_photos: list[Path]) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i, p in enumerate(mini_photos[:10]):
        (d / f"leaf{i:02d}.jpg").write_bytes(p.read_bytes())
    return d


@pytest.mark.triton
def test_bench_serve_http_counts_errors(triton_server, photo_dir: Path, tmp_path: Path) -> None:
    (photo_dir / "zz-broken.jpg").write_bytes(b"not an image " + uuid.uuid4().bytes)
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    r = _run(
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
def test_bench_serve_grpc_threads(triton_server, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    r = _run(
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
    r = _run("bench", "serve", "--url", f"127.0.0.1:{free_port()}", "--images", str(tmp_path))
    assert r.returncode == 1
    assert "cannot reach plantdx" in r.stderr and "Traceback" not in r.stderr


def test_bench_inprocess(tiny_repo: Path, mini_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "inproc.json"
    r = _run(
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
    r = _run("bench", "inprocess", "--repository", str(tmp_path), "--images", str(mini_dir))
    assert r.returncode == 1 and "no classifier versions" in r.stderr


# -- scripts/bench_helpers.py ---------------------------------------------------------------
def _helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HELPERS), *args], capture_output=True, text=True, timeout=120
    )


def test_perf_analyzer_input_is_length_prefixed(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "input.json"
    r = _helper("perf-input", "--images", str(photo_dir), "--out", str(out), "--max-images", "3")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())["data"]
    assert len(data) == 3
    raw = base64.b64decode(data[0]["IMAGE"]["content"]["b64"])
    (n,) = struct.unpack("<I", raw[:4])
    assert raw[4:] == (photo_dir / "leaf00.jpg").read_bytes() and n == len(raw) - 4
    assert data[0]["IMAGE"]["shape"] == [1]


# The header perf_analyzer 2.50 writes with -f (latencies in microseconds).
PA_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Server Cache Hit,"
    "Server Cache Miss,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "8,80.5,11,7803,2,183,35457,1107,0,0,3,99000,110000,120000,150500\n"
)


def _write(path: Path, rows: object) -> None:
    path.write_text(json.dumps(rows))


def test_perf_json_and_table(tmp_path: Path) -> None:
    res = tmp_path / "results"
    res.mkdir()
    (tmp_path / "pa.csv").write_text(PA_CSV)
    r = _helper(
        "perf-json",
        "--csv",
        str(tmp_path / "pa.csv"),
        "--out",
        str(res / "perf_analyzer_grpc.json"),
    )
    assert r.returncode == 0, r.stderr
    (pa,) = json.loads((res / "perf_analyzer_grpc.json").read_text())
    assert pa == {
        "system": "perf_analyzer",
        "concurrency": 8,
        "img_per_s": 80.5,
        "p50_ms": 99.0,
        "p90_ms": 110.0,
        "p99_ms": 150.5,
        "mean_ms": None,
        "errors": 0,
    }

    def level(c: int, rate: float, p50: float, p99: float, proto: str = "grpc") -> dict:
        return {"concurrency": c, "protocol": proto, "img_per_s": rate, "p50_ms": p50,
                "p90_ms": p50, "p99_ms": p99, "errors": 0}  # fmt: skip

    _write(
        res / "inprocess.json",
        [
            {**level(1, 40.0, 45.0, 60.0), "layout": "1x2b1", "workers": 1, "batch": 1},
            {**level(2, 85.0, 23.0, 30.0), "layout": "2x1b1", "workers": 2, "batch": 1},
        ],
    )
    _write(res / "serve_grpc.json", [level(1, 30.0, 50.0, 70.0), level(8, 78.0, 100.0, 160.0)])
    _write(res / "serve_http.json", [level(8, 75.0, 105.0, 170.0, "http")])
    _write(res / "fastapi_c8.json", {**level(8, 19.0, 415.0, 600.0), "system": "fastapi"})
    _write(res / "interference_fastapi.json", {"foreign_pct_of_machine": 3.2})
    r = _helper("table", "--results", str(res), "--out", str(tmp_path / "table.md"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "table.md").read_text()
    assert "| in-process limit, best layout `2x1b1` | – | 85.0 |" in text
    assert "| original FastAPI + PyTorch eager, concurrency 8 | 8 | 19.0 |" in text
    assert text.count("| 3% |") == 1  # only the FastAPI phase had a monitor
    assert "in-process limit: 92% (target ≥ 90%: met)" in text
    assert "4.1× the throughput, p99 160 ms vs 600 ms" in text and "p99: met)" in text
    assert "= +5.0 ms (target ≤ +3 ms: missed)" in text
    assert "78.0 vs 80.5 img/s (-3%; agreement within 15%: yes)" in text


def test_cpu_monitor_counts_processes_outside_the_tree(tmp_path: Path) -> None:
    """A busy process that is not a descendant of the benchmark shows up; the benchmark's own
    children do not."""
    import os
    import signal
    import time

    out = tmp_path / "mon.json"
    mon = subprocess.Popen(
        [sys.executable, str(HELPERS), "cpu-monitor", "--tree", str(os.getpid()), "--out", str(out),
         "--interval", "0.2"]
    )  # fmt: skip
    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"
    tag = uuid.uuid4().hex[:8]
    # The shell exits at once, so the busy loop is re-parented away from this process tree.
    subprocess.run(
        ["sh", "-c", f"{sys.executable} -c '#foreign-{tag}\n{busy}' &"], check=True
    )  # fmt: skip
    ours = subprocess.Popen([sys.executable, "-c", f"#ours-{tag}\n{busy}"])
    ours.wait()
    time.sleep(0.5)
    mon.send_signal(signal.SIGTERM)
    mon.wait(timeout=10)
    report = json.loads(out.read_text())
    # The list holds the top five only; other people's jobs may share the machine.
    by_cmd = {cmd: cpu for cmd, cpu in report["top"]}
    foreign = [cpu for cmd, cpu in by_cmd.items() if f"foreign-{tag}" in cmd]
    assert foreign and 0.2 < foreign[0] < 2.5, report  # 1.5 s of a shared core at most
    assert not any(f"ours-{tag}" in cmd for cmd in by_cmd)
    assert report["foreign_cpu_s"] >= foreign[0]


# -- scripts/serving_profile.py: Triton statistics and CPU per served image ----------------------
def test_profile_arithmetic_is_per_request_and_per_image() -> None:
    from plantdx.serving.profile import cpu_per_image, stats_delta

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
    from plantdx.serving.profile import format_level, profile_level

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
