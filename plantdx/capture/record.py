"""One captured photo: its file name, its sidecar, and its bytes with metadata removed.

Stripping keeps the pixels: a JPEG loses its APP1 (EXIF, XMP), APP3-APP13, APP15 and comment
segments, a PNG its text, time and eXIf chunks, byte for byte otherwise. A photo whose EXIF
says to rotate it is rotated (as the preprocess does) and re-encoded (JPEG quality 95), so the
stored photo looks the way the model saw it. WebP is re-encoded without metadata (quality 95),
TIFF (whose tags are metadata) re-encoded as PNG; GIF and BMP carry no EXIF and are kept.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import struct
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from plantdx.exceptions import CaptureError

MODEL = "plantdx"
REASONS = ("sampled", "abstained", "low_confidence")
SIDECAR_SUFFIX = ".json"
ORIENTATION = 0x0112

# Kept: APP0 (JFIF), APP2 (ICC profile), APP14 (Adobe colour transform): they change the pixels.
_JPEG_DROP = {0xE1, *range(0xE3, 0xEE), 0xEF, 0xFE}
_PNG_DROP = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}


@dataclass(frozen=True)
class Sidecar:
    """The facts beside a captured photo (the capture format's JSON sidecar)."""

    time: str  # ISO 8601, UTC
    version: str  # the classifier version that answered
    prediction: str  # top-1 label
    confidence: float  # calibrated top-1 probability
    decision: str  # the label, or "uncertain"
    sha256: str  # of the photo as it was sent
    reason: str  # sampled | abstained | low_confidence
    file: str  # the photo's file name, beside the sidecar
    model: str  # "plantdx"
    bytes: int  # size of the stored photo

    def to_json(self) -> builtins.bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: builtins.bytes) -> Sidecar:
        try:
            raw = json.loads(data)
            fields = {k: raw[k] for k in cls.__dataclass_fields__}
        except (ValueError, KeyError, TypeError) as exc:
            raise CaptureError(f"not a capture sidecar: {exc}") from exc
        return cls(**fields)


def sniff(data: bytes) -> str | None:
    """The image format by its magic bytes, as a file suffix; None when unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def stem(when: datetime, sha256: str) -> str:
    """`YYYY-MM-DD/HHMMSS-<16 hex>`: the key of a photo and its sidecar, without the suffix."""
    when = when.astimezone(timezone.utc)
    return f"{when:%Y-%m-%d}/{when:%H%M%S}-{sha256[:16]}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _orientation(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return int(img.getexif().get(ORIENTATION, 1))


def _reencode(data: bytes, fmt: str) -> tuple[bytes, str]:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        out = ImageOps.exif_transpose(img)
        buf = io.BytesIO()
        if fmt == "jpg":
            out.convert("RGB").save(buf, format="JPEG", quality=95)
        elif fmt == "webp":
            out.save(buf, format="WEBP", quality=95)
        else:
            out.save(buf, format="PNG")
            fmt = "png"
    return buf.getvalue(), fmt


def _strip_jpeg(data: bytes) -> bytes:
    out = bytearray(data[:2])
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise CaptureError("malformed JPEG segment")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            out += data[i:]
            return bytes(out)
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if marker not in _JPEG_DROP:
            out += data[i:end]
        i = end
    raise CaptureError("JPEG without image data")


def _strip_png(data: bytes) -> bytes:
    out = bytearray(data[:8])
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if kind not in _PNG_DROP:
            out += data[i:end]
        i = end
        if kind == b"IEND":
            return bytes(out)
    raise CaptureError("PNG without IEND")


def strip_metadata(data: bytes, fmt: str) -> tuple[bytes, str]:
    """The photo without metadata (EXIF with GPS, XMP, IPTC, comments) and its suffix."""
    if fmt in ("gif", "bmp"):
        return data, fmt
    if fmt in ("webp", "tiff"):
        return _reencode(data, fmt)
    if fmt not in ("jpg", "png"):
        raise CaptureError(f"cannot strip metadata from format {fmt!r}")
    if _orientation(data) != 1:
        return _reencode(data, fmt)
    return (_strip_jpeg(data) if fmt == "jpg" else _strip_png(data)), fmt
