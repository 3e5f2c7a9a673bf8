"""The steps of scripts/bench_all.sh: perf_analyzer's files, the comparison table, the CPU
monitor (`plantdx bench perf-input|perf-json|table|cpu-monitor`)."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import uuid
from pathlib import Path

from bench_helpers import photo_dir as make_photo_dir
from bench_helpers import run_plantdx


def test_perf_analyzer_input_is_length_prefixed(tmp_path: Path, mini_photos: list[Path]) -> None:
    photo_dir = make_photo_dir(tmp_path, mini_photos)
    out = tmp_path / "input.json"
    r = run_plantdx(
        "bench", "perf-input", "--images", str(photo_dir), "--out", str(out), "--max-images", "3"
    )
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
    r = run_plantdx(
        "bench",
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
    r = run_plantdx("bench", "table", "--results", str(res), "--out", str(tmp_path / "table.md"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "table.md").read_text()
    assert "| in-process limit, best layout `2x1b1` | – | 85.0 |" in text
    assert "| original FastAPI + PyTorch eager, concurrency 8 | 8 | 19.0 |" in text
    assert text.count("| 3% |") == 1  # only the FastAPI phase had a monitor
    assert "in-process limit: 92% (target ≥ 90%: met)" in text
    assert "4.1× the throughput, p99 160 ms vs 600 ms" in text and "p99: met)" in text
    assert "= +5.0 ms (target ≤ +3 ms: missed)" in text
    assert "78.0 vs 80.5 img/s (-3%; agreement within 15%: yes)" in text


def _wait_for_sigterm_handler(pid: int, timeout_s: float = 60.0) -> None:
    """Until process `pid` catches SIGTERM (SigCgt in /proc/PID/status)."""
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16
        )
        if caught & (1 << (signal.SIGTERM - 1)):
            time.sleep(0.3)
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never caught SIGTERM")


def test_cpu_monitor_counts_processes_outside_the_tree(tmp_path: Path) -> None:
    """A busy process that is not a descendant of the benchmark shows up; the benchmark's own
    children do not."""
    import os
    import signal
    import time

    out = tmp_path / "mon.json"
    mon = subprocess.Popen(
        [sys.executable, "-m", "plantdx", "bench", "cpu-monitor", "--tree", str(os.getpid()),
         "--out", str(out), "--interval", "0.2"]
    )  # fmt: skip
    _wait_for_sigterm_handler(mon.pid)  # then it samples: the CLI takes a moment to start
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
