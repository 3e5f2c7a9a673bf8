"""Helpers for the serving, lifecycle and reliability tests: private repository copies with
changed configs, servers on free ports, gRPC calls with timeouts, the stub processes."""

from __future__ import annotations

import io
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR announcing width × height, with one tiny IDAT."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + ihdr
        + struct.pack(">I", zlib.crc32(ihdr))
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
    )


def copy_repo(src: Path, dest: Path, tweak: Callable[[str, Any], None] | None = None) -> Path:
    """Copy a repository; `tweak(model_name, config)` may change each composing config."""
    from plantdx.model_repository.config import parse_pbtxt, to_pbtxt

    shutil.copytree(src, dest)
    if tweak:
        for cfg_path in dest.glob("*/config.pbtxt"):
            cfg = parse_pbtxt(cfg_path.read_text())
            tweak(cfg_path.parent.name, cfg)
            cfg_path.write_text(to_pbtxt(cfg))
    return dest


def new_server(repo: Path, log: Path, **kwargs: Any) -> Any:
    """A TritonServer on free ports with its log in `log`, not started."""
    from plantdx.serving.server import TritonServer, free_port

    return TritonServer(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=log,
        **kwargs,
    )


def start_server(repo: Path, log: Path, **kwargs: Any) -> Any:
    return new_server(repo, log, **kwargs).start(timeout_s=180)


def infer(
    url: str, images: list[bytes], *, timeout_s: float = 30.0, client: Any = None
) -> np.ndarray:
    """Probabilities for one request holding `images` (raises InferenceServerException)."""
    import tritonclient.grpc as grpcclient

    own = client is None
    client = client or grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        result = client.infer("plantdx", [inp], client_timeout=timeout_s)
        return np.asarray(result.as_numpy("PROBABILITIES"))
    finally:
        if own:
            client.close()


def try_infer(url: str, image: bytes, *, timeout_s: float = 30.0, client: Any = None) -> Any:
    """(probabilities, None) or (None, error text), and never raises."""
    try:
        return infer(url, [image], timeout_s=timeout_s, client=client)[0], None
    except Exception as exc:
        return None, str(exc)


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def stub_pids(server_pid: int, model: str) -> list[int]:
    """The triton_python_backend_stub processes serving `model` (one per instance)."""
    pids = []
    for pid in children(server_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_stub = len(cmd) > 1 and cmd[0].endswith(b"triton_python_backend_stub")
        if is_stub and f"/{model}/".encode() in cmd[1]:
            pids.append(pid)
    return sorted(pids)


def alt_checkpoint(source: Path, dest: Path, shift: float = 2.0) -> Path:
    """The same model with a shifted classifier bias: a new version whose answers differ."""
    import torch

    from plantdx.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source)
    bias_key = next(k for k in ckpt.state_dict if k.endswith("classifier.bias"))
    bias = ckpt.state_dict[bias_key]
    ckpt.state_dict = {
        **ckpt.state_dict,
        bias_key: bias + torch.linspace(-shift, shift, bias.numel()).reshape(bias.shape),
    }
    return save_checkpoint(ckpt, dest)


def jpeg(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def png(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def heavy_png(photo: bytes, side: int = 2000) -> bytes:
    """The photo as a side × side PNG (no draft decoding for PNG): ~50 ms to preprocess at
    2000 px on a quiet machine, ~150 ms at 3500."""
    img = Image.open(io.BytesIO(photo)).convert("RGB")
    return png(img.resize((side, side), Image.Resampling.BILINEAR), compress_level=1)


def fixed_instances(cfg: Any, count: int) -> None:
    """Every instance group of a composing config set to `count`, served as written: the
    `instances` mark is dropped, so no server re-sizes it for its cores."""
    from plantdx.model_repository.instances import INSTANCES_PARAMETER

    for group in cfg.instance_group:
        group.count = count
    if INSTANCES_PARAMETER in cfg.parameters:
        del cfg.parameters[INSTANCES_PARAMETER]


def slow_preprocess(queue_size: int | None = None) -> Callable[[str, Any], None]:
    """A `copy_repo` tweak: one preprocess instance taking one image at a time, no batching
    delay, no response cache, so heavy images queue up in front of it (and, with `queue_size`,
    are refused once that many wait)."""

    def tweak(name: str, cfg: Any) -> None:
        cfg.response_cache.enable = False
        if name in ("plantdx", "plantdx_explain"):  # no ensemble may batch more than its steps
            cfg.max_batch_size = 1
        if name == "preprocess":
            fixed_instances(cfg, 1)
            cfg.max_batch_size = 1
            cfg.dynamic_batching.max_queue_delay_microseconds = 0
            if queue_size is not None:
                cfg.dynamic_batching.default_queue_policy.max_queue_size = queue_size

    return tweak


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
