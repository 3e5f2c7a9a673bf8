"""The one preprocessing implementation: training evaluation, export checks and the Triton
Python backend all call these functions, so served and in-process results agree exactly.

Decoding is the expensive part, so JPEGs are decoded with Pillow's draft mode (the DCT scales
down by 1/2, 1/4 or 1/8 while decoding) whenever the photo is at least twice the model's size.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
from PIL import Image, ImageFile, ImageOps

from plantdx.choices import Resize
from plantdx.exceptions import PreprocessError

# Limits applied to every encoded image before any pixel is decoded: the size in bytes, and the
# width x height its header announces. Together they bound the CPU one image can cost: at
# 16 MP the slowest formats measured (an RGBA or 16-bit PNG, a lossless WebP, a progressive
# JPEG of high entropy) cost 0.2-0.6 s of CPU each on this project's 2-core machines, where a
# 12 MP phone JPEG costs about 20 ms (README, "Security").
MAX_ENCODED_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 16_000_000
MIN_SIDE = 32

# A truncated file must fail, not silently decode as grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit is checked first with a clear message; Pillow's bomb check (warning above this,
# error above twice this) stays as a backstop for every other use of Pillow in the process.
Image.MAX_IMAGE_PIXELS = 40_000_000

REJECTION_REASONS = (
    "empty",
    "too_large",
    "not_an_image",
    "too_many_pixels",
    "too_small",
    "truncated",
)

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

META_FILENAME = "preprocessing.json"

# How a photo of any aspect ratio becomes the model's square input:
#   squash  resize both sides to the square (the aspect ratio is lost; the whole photo is seen)
#   crop    resize the shorter side to the square, cut the centre (the edges are lost)
#   pad     resize the longer side to the square, pad the rest with the mean colour
RESIZE_MODES: tuple[str, ...] = get_args(Resize)


@dataclass(frozen=True)
class PreprocessMeta:
    """What a model expects of its input; travels in the checkpoint and beside the export."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    channels_order: str = "RGB"
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict)
    # RESIZE_MODES; metadata written before it existed means "squash".
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r} is not one of {list(RESIZE_MODES)}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {sorted(_INTERPOLATIONS)}"
            )
        if self.image_size < MIN_SIDE:
            raise ValueError(f"image_size must be at least {MIN_SIDE}, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "mean" in known:
            known["mean"] = tuple(float(x) for x in known["mean"])
        if "std" in known:
            known["std"] = tuple(float(x) for x in known["std"])
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PreprocessMeta:
        return cls.from_dict(json.loads(Path(path).read_text()))


# What the exported classifier takes: uint8 NCHW pixels (it normalises inside its graph, with
# the same two float32 operations as `Normalizer`), or, in repositories exported before that,
# the normalised float32 NCHW pixels.
PIXEL_DTYPES = ("uint8", "float32")


def to_chw(pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC → uint8 CHW (NHWC → NCHW), contiguous: the served hand-over to the classifier."""
    axes = (2, 0, 1) if pixels.ndim == 3 else (0, 3, 1, 2)
    return np.ascontiguousarray(pixels.transpose(axes))


class Normalizer:
    """uint8 HWC → float32 CHW (or NHWC → NCHW), normalised.

    One multiply reads the uint8 pixels through a transposed view and writes float32 straight
    into the output, then one in-place add: no float temporaries, no float transpose copy
    (about 8× faster than astype → scale → transpose, and bit-identical to it).
    """

    def __init__(self, meta: PreprocessMeta) -> None:
        mean = np.asarray(meta.mean, dtype=np.float32) * 255.0
        std = np.asarray(meta.std, dtype=np.float32) * 255.0
        self.scale = (1.0 / std).astype(np.float32)
        self.offset = (-mean / std).astype(np.float32)
        self._scale = self.scale[:, None, None]
        self._offset = self.offset[:, None, None]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim == 4:
            return self.batch(pixels)
        height, width = pixels.shape[:2]
        out = np.empty((3, height, width), dtype=np.float32)
        np.multiply(pixels.transpose(2, 0, 1), self._scale, out=out, dtype=np.float32)
        out += self._offset
        return out

    def batch(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 NHWC → float32 NCHW in one vectorised pass over the whole batch."""
        n, height, width = pixels.shape[:3]
        if out is None:
            out = np.empty((n, 3, height, width), dtype=np.float32)
        np.multiply(pixels.transpose(0, 3, 1, 2), self._scale, out=out, dtype=np.float32)
        out += self._offset
        return out

    def chw(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 CHW (or NCHW), as the classifier takes it → float32, normalised: what the
        exported graph computes from it (Cast, Mul, Add), bit for bit."""
        out = np.multiply(pixels, self._scale, dtype=np.float32)
        out += self._offset
        return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparent areas become white, 16-bit keeps its range."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# The first bytes of every format PIL is asked to decode here; anything else may be base64.
_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")
_BASE64_HEAD = re.compile(rb"^(data:image/[\w.+-]+;base64,)?[A-Za-z0-9+/]{16}")


def from_base64(data: bytes) -> bytes:
    """The photo's bytes when `data` is its base64 text (optionally a `data:image/...;base64,`
    URI), as a JSON request from curl sends it; otherwise `data` unchanged."""
    if data.startswith(_MAGIC):
        return data
    head = _BASE64_HEAD.match(data[:80])
    if head is None:
        return data
    if len(data) > MAX_ENCODED_BYTES * 4 // 3 + 128:
        raise PreprocessError(
            "too_large",
            f"base64 image text is {len(data) / 2**20:.1f} MiB; the limit is "
            f"{MAX_ENCODED_BYTES / 2**20:.0f} MiB of image bytes",
        )
    try:
        start = head.end(1) if head.group(1) else 0
        decoded = base64.b64decode(b"".join(data[start:].split()), validate=True)
    except (binascii.Error, ValueError):
        return data
    return decoded if decoded.startswith(_MAGIC) else data


def open_image(data: bytes, *, draft_size: int | None = None) -> Image.Image:
    """Decode encoded bytes into an upright RGB image, enforcing every input limit.

    Raises PreprocessError with a machine-readable `reason` (one of REJECTION_REASONS).
    """
    return open_image_sized(data, draft_size=draft_size)[0]


def open_image_sized(
    data: bytes, *, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """`open_image`, and the photo's upright (width, height) before any draft-mode scaling."""
    if not data:
        raise PreprocessError("empty", "empty input: no bytes were sent")
    data = from_base64(data)
    if len(data) > MAX_ENCODED_BYTES:
        raise PreprocessError(
            "too_large",
            f"encoded image is {len(data) / 2**20:.1f} MiB; the limit is "
            f"{MAX_ENCODED_BYTES / 2**20:.0f} MiB",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PreprocessError("too_many_pixels", f"image is too large: {exc}") from exc
    except Exception as exc:
        if "truncated" in str(exc).lower():  # the header itself is cut off
            raise PreprocessError(
                "truncated", f"image could not be decoded (truncated): {exc}"
            ) from exc
        raise PreprocessError(
            "not_an_image", "not a decodable image: no JPEG, PNG, WebP, BMP, GIF or TIFF header"
        ) from exc
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise PreprocessError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {MAX_PIXELS / 1e6:.0f}",
        )
    if min(width, height) < MIN_SIDE:
        raise PreprocessError(
            "too_small", f"image is {width}x{height}; both sides must be at least {MIN_SIDE} px"
        )
    try:
        jpeg = img.format in ("JPEG", "MPO")
        if draft_size and jpeg and min(width, height) >= 2 * draft_size:
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        # A JPEG without an APP1 block has no orientation: skip parsing EXIF for it.
        orientation = 1
        if (not jpeg or "exif" in img.info) and img.getexif().get(0x0112, 1) != 1:
            orientation = img.getexif().get(0x0112, 1)
            img = ImageOps.exif_transpose(img)
        upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        return _to_rgb(img), upright
    except OSError as exc:
        msg = str(exc)
        reason = (
            "truncated" if "truncated" in msg or "broken data stream" in msg else "not_an_image"
        )
        raise PreprocessError(reason, f"image could not be decoded ({reason}): {msg}") from exc
    except Exception as exc:
        raise PreprocessError("not_an_image", f"image could not be decoded: {exc}") from exc


class Preprocessor:
    """Bytes or a PIL image → normalised float32 CHW array for one model's metadata."""

    def __init__(self, meta: PreprocessMeta) -> None:
        self.meta = meta
        self.size = (meta.image_size, meta.image_size)
        self.resample = _INTERPOLATIONS[meta.interpolation]
        self.normalize = Normalizer(meta)
        self.fill = tuple(round(m * 255) for m in meta.mean)

    def resize(self, img: Image.Image) -> np.ndarray:
        """Upright RGB image → uint8 HWC array at the model's size (the meta's resize mode)."""
        if img.mode != "RGB":
            img = _to_rgb(img)
        if img.size == self.size:
            return np.asarray(img, dtype=np.uint8)
        side = self.size[0]
        width, height = img.size
        mode = self.meta.resize if width != height else "squash"
        if mode == "squash":
            img = img.resize(self.size, self.resample)
        elif mode == "crop":
            scale = side / min(width, height)
            w, h = max(side, round(width * scale)), max(side, round(height * scale))
            left, top = (w - side) / 2 / scale, (h - side) / 2 / scale
            box = (left, top, left + side / scale, top + side / scale)
            img = img.resize(self.size, self.resample, box=box)
        else:  # pad
            scale = side / max(width, height)
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            canvas = Image.new("RGB", self.size, self.fill)  # type: ignore[arg-type]
            canvas.paste(img.resize((w, h), self.resample), ((side - w) // 2, (side - h) // 2))
            img = canvas
        return np.asarray(img, dtype=np.uint8)

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded bytes → uint8 HWC array at the model's size (raises PreprocessError)."""
        return self.decode_sized(data)[0]

    def decode_sized(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """`decode`, and the photo's original upright (width, height)."""
        img, size = open_image_sized(data, draft_size=self.meta.image_size)
        try:
            return self.resize(img), size
        except Exception as exc:
            raise PreprocessError("truncated", f"image could not be decoded: {exc}") from exc

    def __call__(self, image: bytes | Image.Image | np.ndarray) -> np.ndarray:
        if isinstance(image, bytes | bytearray | memoryview):
            return self.normalize(self.decode(bytes(image)))
        if isinstance(image, Image.Image):
            return self.normalize(self.resize(image))
        return self.normalize(np.asarray(image, dtype=np.uint8))

    def pixels(self, image: bytes | Image.Image | np.ndarray) -> np.ndarray:
        """The uint8 CHW pixels the classifier takes (`__call__` is them normalised)."""
        if isinstance(image, bytes | bytearray | memoryview):
            return to_chw(self.decode(bytes(image)))
        if isinstance(image, Image.Image):
            return to_chw(self.resize(image))
        return to_chw(np.asarray(image, dtype=np.uint8))

    def decode_batch(
        self, images: Sequence[bytes], sizes: list[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, list[PreprocessError | None]]:
        """Decode every image into one uint8 NHWC buffer; each bad image leaves its row zero
        and its PreprocessError in the list (None for the good ones), so one bad image never
        stops the others. `sizes`, when given, receives each photo's original upright
        (width, height), (0, 0) for a bad one."""
        pixels = np.zeros((len(images), *self.size, 3), dtype=np.uint8)
        errors: list[PreprocessError | None] = [None] * len(images)
        if sizes is not None:
            sizes[:] = [(0, 0)] * len(images)
        for i, data in enumerate(images):
            try:
                pixels[i], size = self.decode_sized(bytes(data))
                if sizes is not None:
                    sizes[i] = size
            except PreprocessError as exc:
                errors[i] = exc
            except Exception as exc:  # an unexpected decoder failure is still this image's
                errors[i] = PreprocessError("not_an_image", f"image could not be decoded: {exc}")
        return pixels, errors

    def batch(self, images: Sequence[bytes]) -> np.ndarray:
        """Several encoded images (all valid) → float32 NCHW batch; raises the first error."""
        pixels, errors = self.decode_batch(images)
        for err in errors:
            if err is not None:
                raise err
        return self.normalize.batch(pixels)


def preprocess_file(path: str | Path, meta: PreprocessMeta) -> np.ndarray:
    return Preprocessor(meta)(Path(path).read_bytes())
