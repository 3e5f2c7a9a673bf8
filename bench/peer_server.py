"""The FastAPI servers plantdx is compared with, run and driven the way their own `bench` does.

    ../shared/baselines/fastapi_onnx.py     FastAPI + onnxruntime, Uvicorn workers, one image per
                                            request, the same ONNX network (the peer)
    ../shared/baselines/original_fastapi.py FastAPI + PyTorch eager, one worker (the original design)

Each server is started with its own `serve` command in a session of its own and driven by a
closed loop of `requests` sessions posting one photo per request as multipart form data, one
thread per concurrent client: the load generator of the scripts' own `bench`
(`original_fastapi.run_load`), with the window counted as `plantdx bench serve` counts it
(requests that start and finish inside it, after a warm-up). The CPU of the server's whole
process tree and of this process (the load generator) is read over the window.

The peer feeds float32 NCHW pixels that it normalises itself. The exported classifier takes
uint8 pixels and normalises them in its graph, so the peer gets the same network with a float
input: the graph after its normalisation (`float_onnx`), weights and operators unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from plantdx.exceptions import ConfigError, PlantDxError

from .levels import LevelResult, ServeBenchConfig, _Record, _summarise
from .monitor import in_tree, proc_table

# The torchvision names the original design can build itself; other architectures are built
# by plantdx.models behind the same server (bench/original_model.py).
TORCHVISION_MODELS = ("efficientnet_b0", "mobilenet_v3_large", "mobilenet_v3_small", "resnet50")


def float_onnx(onnx_path: Path, out_dir: Path) -> Path:
    """The classifier with a float32 NCHW input, for servers that normalise pixels themselves:
    the graph as exported when it already takes floats, else the graph after its in-graph
    normalisation (Cast → Mul → Add), and preprocessing.json beside it."""
    import onnx

    from plantdx.export.onnx import takes_uint8
    from plantdx.model_repository.names import ONNX_INPUT

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "model.onnx"
    meta = onnx_path.parent / "preprocessing.json"
    if meta.is_file():
        shutil.copyfile(meta, out_dir / "preprocessing.json")
    if not takes_uint8(onnx_path):
        shutil.copyfile(onnx_path, out)
        return out
    model = onnx.load(str(onnx_path))
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    prefix, tensor = [], ONNX_INPUT
    for op in ("Cast", "Mul", "Add"):
        nodes = consumers.get(tensor, [])
        if len(nodes) != 1 or nodes[0].op_type != op:
            raise PlantDxError(f"{onnx_path} does not start with Cast → Mul → Add")
        prefix.append(nodes[0])
        tensor = nodes[0].output[0]
    kept = [n for n in graph.node if n not in prefix]
    for node in kept:
        node.input[:] = [ONNX_INPUT if name == tensor else name for name in node.input]
    used = {name for node in kept for name in node.input}
    first = onnx.ValueInfoProto()
    first.CopyFrom(graph.input[0])
    first.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(
            kept,
            graph.name,
            [first],
            list(graph.output),
            initializer=[i for i in graph.initializer if i.name in used],
        ),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    onnx.checker.check_model(sub)
    onnx.save(sub, str(out))
    return out


def peer_command(script: Path, onnx_path: Path, workers: int, port: int) -> list[str]:
    return [sys.executable, str(script), "serve", "--onnx", str(onnx_path),
            "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def original_command(
    script: Path, model: str, classes: int, image_size: int, port: int
) -> list[str]:
    args = ["serve", "--model", model, "--num-classes", str(classes),
            "--image-size", str(image_size), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if model in TORCHVISION_MODELS:
        return [sys.executable, str(script), *args]
    return [sys.executable, "-m", "plantdx.bench.original_model", str(script), *args]


class PeerServer:
    """One FastAPI server process (and its workers) in a session of its own."""

    def __init__(self, cmd: list[str], port: int, timeout_s: float = 180.0) -> None:
        self.cmd, self.port, self.timeout_s = cmd, port, timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PeerServer:
        self.proc = subprocess.Popen(
            self.cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode()[-600:]
                raise PlantDxError(f"{self.cmd[1]} exited with {self.proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise PlantDxError(f"{self.cmd[1]} was not healthy in {self.timeout_s:.0f} s")
            time.sleep(0.5)

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the server and every process it started."""
        if self.proc is None:
            return 0.0
        table = proc_table()
        return sum(
            cpu for pid, (_, cpu, _) in table.items() if in_tree(pid, table, (self.proc.pid,))
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def http_closed_loop(
    url: str, images: list[bytes], *, concurrency: int, duration_s: float
) -> LevelResult:
    """Closed-loop POST /predict load, one `requests` session and thread per client, from now
    for `duration_s`: every request sent in that time is counted with its answer (the window
    "started" of the serving profile), so the server's CPU over the call is theirs."""
    try:
        import requests
    except ImportError as exc:
        raise ConfigError("the FastAPI comparison needs plantdx[bench] (requests)") from exc
    if not images:
        raise ConfigError("no images to send")
    rec, lock = _Record(), threading.Lock()
    t0 = time.perf_counter()
    t1 = t0 + duration_s

    def worker(k: int) -> None:
        session = requests.Session()
        i = k
        starts, ends, errors = [], [], []
        while time.perf_counter() < t1:
            data = images[i % len(images)]
            i += concurrency
            start = time.perf_counter()
            try:
                r = session.post(
                    url + "/predict", files={"file": ("leaf.jpg", data, "image/jpeg")}, timeout=60
                )
                ok, why = r.status_code == 200, f"HTTP {r.status_code}"
            except requests.RequestException as exc:
                ok, why = False, str(exc)[:200]
            if ok:
                starts.append(start)
                ends.append(time.perf_counter())
            else:
                errors.append((time.perf_counter(), why))
        with lock:
            rec.starts += starts
            rec.ends += ends
            rec.errors += errors

    c0 = time.process_time()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 120)
    cpu_s = time.process_time() - c0
    cfg = ServeBenchConfig(url=url, protocol="http", driver="threads", window="started")
    return _summarise(cfg, concurrency, rec, t0, t1, cpu_s)
