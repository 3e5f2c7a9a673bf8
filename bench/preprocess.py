"""How much preprocessing costs next to decoding the same JPEG alone with Pillow.

    plantdx bench preprocess [--data DIR] [--image-size 224] [--images 200]

Both are timed in the same run, interleaved image by image (decode, then preprocess), so a
busy neighbour slows both alike; the figure is the ratio of the medians over rounds.
"Decode alone" is `Image.open(bytes).load()`: full-size decoding, nothing else. "Preprocess"
is what the Triton backend does for a batch: `Preprocessor.decode_batch` (limits, draft
decoding, EXIF, mode, resize) and one vectorised `Normalizer.batch`.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from plantdx.preprocessing import PreprocessMeta, Preprocessor

from .images import spread_images


@dataclass
class PreprocessCost:
    images: int
    image_size: int
    rounds: int
    decode_ms: float  # per image, Pillow decode alone
    preprocess_ms: float  # per image, the whole preprocessing, batched as the backend does
    ratio: float  # preprocess / decode

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _decode_alone(data: bytes) -> None:
    Image.open(io.BytesIO(data)).load()


def measure(
    images: Sequence[bytes], *, image_size: int = 224, rounds: int = 5, batch: int = 8
) -> PreprocessCost:
    """Median per-image cost of Pillow decoding vs. plantdx preprocessing, interleaved."""
    if not images:
        raise ValueError("no images to measure")
    pre = Preprocessor(PreprocessMeta(image_size=image_size))
    pre.batch(images[:batch])  # warm caches and imports outside the timed loop
    decode_rounds: list[float] = []
    pre_rounds: list[float] = []
    for _ in range(rounds):
        decode_s = pre_s = 0.0
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            t0 = time.process_time()
            for data in chunk:
                _decode_alone(data)
            t1 = time.process_time()
            pixels, _errors = pre.decode_batch(chunk)
            pre.normalize.batch(pixels)
            t2 = time.process_time()
            decode_s += t1 - t0
            pre_s += t2 - t1
        decode_rounds.append(decode_s / len(images))
        pre_rounds.append(pre_s / len(images))
    decode_ms = statistics.median(decode_rounds) * 1e3
    pre_ms = statistics.median(pre_rounds) * 1e3
    return PreprocessCost(len(images), image_size, rounds, decode_ms, pre_ms, pre_ms / decode_ms)


def run(
    data: str | Path,
    *,
    image_sizes: Sequence[int] = (224,),
    images: int = 200,
    rounds: int = 5,
    upscale: int = 0,
) -> Iterator[dict[str, Any]]:
    """One row per image set and size: the photos as they are and, with `upscale`, a tenth of
    them (at least 10) re-encoded at `upscale` pixels per side (a phone-sized JPEG)."""
    photos = spread_images(data, images)
    sets = {"photos": photos}
    if upscale:
        sets[f"photos re-encoded at {upscale}px"] = [
            _upscaled(d, upscale) for d in photos[: max(10, images // 10)]
        ]
    for name, chunk in sets.items():
        for size in image_sizes:
            yield {"set": name, **measure(chunk, image_size=size, rounds=rounds).to_dict()}


def _upscaled(data: bytes, side: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
