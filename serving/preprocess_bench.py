"""How much preprocessing costs next to decoding the same JPEG alone with Pillow.

    python scripts/preprocess_bench.py [--data DIR] [--image-size 224] [--images 200]

Both are timed in the same run, interleaved image by image (decode, then preprocess), so a
busy neighbour slows both alike; the figure is the ratio of the medians over rounds.
"Decode alone" is `Image.open(bytes).load()`: full-size decoding, nothing else. "Preprocess"
is what the Triton backend does for a batch: `Preprocessor.decode_batch` (limits, draft
decoding, EXIF, mode, resize) and one vectorised `Normalizer.batch`.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from plantdx.preprocessing import PreprocessMeta, Preprocessor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


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


def load_images(folder: str | Path, limit: int) -> list[bytes]:
    paths = sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    # Spread the pick over every class folder instead of taking the first class only.
    step = max(1, len(paths) // limit) if paths else 1
    return [p.read_bytes() for p in paths[::step][:limit]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", default="../shared/data/plantvillage-mini")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--upscale",
        type=int,
        default=0,
        help="also re-encode each photo at this many pixels per side (a phone-sized JPEG)",
    )
    args = parser.parse_args(argv)
    images = load_images(args.data, args.images)
    if not images:
        raise SystemExit(f"no JPEG/PNG images under {args.data}")
    sets = {"photos": images}
    if args.upscale:
        sets[f"photos re-encoded at {args.upscale}px"] = [
            _upscaled(d, args.upscale) for d in images[: max(10, args.images // 10)]
        ]
    for name, data in sets.items():
        for size in args.image_size:
            cost = measure(data, image_size=size, rounds=args.rounds)
            print(json.dumps({"set": name, **cost.to_dict()}))


def _upscaled(data: bytes, side: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


if __name__ == "__main__":
    main()
