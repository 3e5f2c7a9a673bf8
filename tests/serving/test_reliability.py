"""Reliability under bad and unusual input, and when a Python-backend stub dies.

A corpus of malformed files and of unusual but valid images goes to the server interleaved
with ordinary photos at concurrency 8: every malformed one must get a clear error, every valid
one its answer (equal to the in-process one), and the server must stay ready."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers.common import onnx_probabilities
from helpers.serving import (
    jpeg,
    png,
    png_header_only,
    start_server,
    stub_pids,
    try_infer,
    wait_until,
)

pytestmark = pytest.mark.triton


def _jpeg_announcing(photo: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) claims another size."""
    i = photo.index(b"\xff\xc0")
    head = photo[: i + 5]
    return head + height.to_bytes(2, "big") + width.to_bytes(2, "big") + photo[i + 9 :]


def malformed_corpus(photo: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    small = Image.open(io.BytesIO(photo)).convert("RGB")
    good_png = png(small)
    return {
        "empty": b"",
        "one byte": b"\xff",
        "random bytes 1 KB": rng.bytes(1024),
        "random bytes 200 KB": rng.bytes(200_000),
        "zeros": bytes(5000),
        "html": b"<!DOCTYPE html><html><head><title>Not Found</title></head></html>",
        "json": b'{"image": "leaf.jpg", "base64": false}',
        "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF",
        "jpeg cut in half": photo[: len(photo) // 2],
        "jpeg header only": photo[:300],
        "png cut in half": good_png[: len(good_png) // 2],
        "png signature then junk": b"\x89PNG\r\n\x1a\n" + rng.bytes(500),
        "gif signature then junk": b"GIF89a" + rng.bytes(200),
        "1x1 png": png(Image.new("RGB", (1, 1), (0, 255, 0))),
        "1x1 jpeg": jpeg(Image.new("RGB", (1, 1), (0, 255, 0))),
        "31x31 jpeg": jpeg(small.resize((31, 31))),
        "strip 2000x10 png": png(Image.new("RGB", (2000, 10), (0, 90, 0))),
        "png announcing 10000x10000": png_header_only(10000, 10000),
        "png announcing 7000x6000": png_header_only(7000, 6000),
        "jpeg announcing 60000x60000": _jpeg_announcing(photo, 60000, 60000),
        "over 20 MiB": b"\xff\xd8\xff\xe0" + rng.bytes(20 * 1024 * 1024 + 10),
    }


def valid_corpus(photo: bytes) -> dict[str, bytes]:
    img = Image.open(io.BytesIO(photo)).convert("RGB")
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    exif = Image.Exif()
    exif[0x0112] = 8
    gray16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    out = {
        "png with alpha": png(rgba),
        "grey + alpha png": png(rgba.convert("LA")),
        "16-bit grey png": png(Image.fromarray(gray16)),
        "cmyk jpeg": jpeg(img.convert("CMYK")),
        "grey jpeg": jpeg(img.convert("L")),
        "palette png": png(img.convert("P", palette=Image.Palette.ADAPTIVE)),
        "palette png with transparency": png(pal),
        "3000x3000 photo": jpeg(img.resize((3000, 3000), Image.Resampling.BICUBIC), quality=90),
        "exif-rotated jpeg": jpeg(img.resize((300, 200)), exif=exif.tobytes()),
        "progressive jpeg": jpeg(img, progressive=True, quality=85),
        "bmp": _encode(img, "BMP"),
        "tiff": _encode(img, "TIFF"),
        "gif": _encode(img, "GIF"),
        "exactly 32x32": png(img.resize((32, 32))),
    }
    with contextlib.suppress(KeyError, OSError):  # a Pillow built without WebP
        out["webp"] = _encode(img, "WEBP")
    return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    tmp = tmp_path_factory.mktemp("reliability")
    s = start_server(tiny_repo, tmp / "triton.log")
    try:
        yield s
    finally:
        s.stop()


def test_corpus_interleaved_with_photos_at_concurrency_8(
    server, tiny_repo: Path, mini_photos: list[Path]
) -> None:
    photo = mini_photos[0].read_bytes()
    bad = malformed_corpus(photo)
    unusual = valid_corpus(photo)
    ordinary = {f"photo {i}": p.read_bytes() for i, p in enumerate(mini_photos[1:21])}
    assert len(bad) >= 20 and len(unusual) >= 10
    # Interleave: photo, malformed, unusual, photo, ...
    names = []
    lists = [list(ordinary), list(bad), list(unusual)]
    while any(lists):
        names += [lst.pop(0) for lst in lists if lst]
    corpus = {**ordinary, **bad, **unusual}
    local = threading.local()

    def send(name: str) -> tuple[str, float, object, str | None]:
        import tritonclient.grpc as grpcclient

        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(server.grpc_url)
        t0 = time.monotonic()
        probs, error = try_infer(server.grpc_url, corpus[name], timeout_s=60, client=local.client)
        return name, time.monotonic() - t0, probs, error

    with ThreadPoolExecutor(8) as pool:
        results = {name: (s, p, e) for name, s, p, e in pool.map(send, names)}
    for name in bad:
        _, probs, error = results[name]
        assert probs is None, f"{name}: answered instead of refused"
        assert error and "invalid image (" in error, f"{name}: unclear error {error!r}"
    valid = {**ordinary, **unusual}
    expected = onnx_probabilities(tiny_repo, list(valid.values()))
    for (name, _), want in zip(valid.items(), expected, strict=True):
        _, probs, error = results[name]
        assert error is None, f"{name}: {error}"
        assert np.abs(probs - want).max() < 1e-5, name
    assert all(s < 60 for s, _, _ in results.values())
    assert server.is_ready()


def test_a_killed_stub_fails_requests_cleanly_and_the_server_recovers(
    server, mini_photos: list[Path]
) -> None:
    images = [p.read_bytes() for p in mini_photos[:12]]
    victims = stub_pids(server.pid, "preprocess")
    assert victims, "no preprocess stub found under the server process"
    timeout_s = 10.0
    stop = threading.Event()
    log: list[tuple[float, float, str | None]] = []  # (start, seconds, error)

    def pump(worker: int) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url)
        n = worker
        try:
            while not stop.is_set() and len(log) < 5000:
                t0 = time.monotonic()
                _, error = try_infer(
                    server.grpc_url, images[n % 12], timeout_s=timeout_s, client=client
                )
                log.append((t0, time.monotonic() - t0, error))
                n += 4
        finally:
            client.close()

    threads = [threading.Thread(target=pump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        t_kill = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)

        def recovered() -> bool:
            return any(t0 > t_kill + 0.5 and e is None for t0, _, e in list(log))

        assert wait_until(recovered, timeout=60), (
            "no request succeeded after the stub died: "
            + recovery_report(server, log, t_kill, victims)
        )
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=timeout_s + 30)
    assert all(not t.is_alive() for t in threads)
    assert all(seconds < timeout_s + 2 for _, seconds, _ in log)  # none hung
    failed = [e for _, _, e in log if e]
    for error in failed:
        assert (error.strip() and "plantdx" in error) or "Stub" in error or "stub" in error, error
    assert all(e is None for t0, sec, e in log if t0 + sec < t_kill)  # fine before the kill
    assert server.is_ready()
    assert "preprocess" in server.stub_restarts  # the launcher's watchdog reloaded it
    new_stubs = stub_pids(server.pid, "preprocess")
    assert new_stubs and not set(new_stubs) & set(victims)
    probs, error = try_infer(server.grpc_url, images[0])
    assert error is None and probs is not None


def recovery_report(
    server: Any, log: list[tuple[float, float, str | None]], t_kill: float, victims: list[int]
) -> str:
    """What a failed recovery looked like: the watchdog's reloads, the stubs now, the errors
    after the kill, the server's log."""
    errors = sorted({str(e)[:200] for t0, _, e in list(log) if e and t0 > t_kill})
    return (
        f"reloaded {server.stub_restarts}; killed {victims}; stubs now {server.stubs()}; "
        f"{len(log)} requests, errors after the kill: {errors[:5]}; server log:\n"
        + Path(server.log_file).read_text(errors="replace")[-4000:]
    )
