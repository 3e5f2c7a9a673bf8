"""One captured photo: its file name, its sidecar, and its bytes with metadata removed.

Stripping keeps the pixels and only what decoding needs. A JPEG is walked segment by segment up
to its end-of-image marker: SOF, DHT, DQT, DRI, SOS and the scans are kept, with APP0 (JFIF),
APP2 only when it is an ICC profile, and APP14 (Adobe colour transform), because they change
the pixels; everything else (EXIF and XMP in APP1, the MPF index in APP2, APP3-APP13, APP15,
comments) goes, and so does whatever follows the end-of-image marker: the second image of an
MPO photo (with its own EXIF and GPS) or any appended data. A PNG keeps its image and colour
chunks (IHDR, PLTE, IDAT, tRNS, gAMA, cHRM, sRGB, iCCP, sBIT, bKGD, pHYs) up to IEND: text,
time, eXIf and private chunks go. A photo whose EXIF says to rotate it is rotated (as the
preprocess does) and re-encoded from its pixels alone (JPEG quality 95), so the stored photo
looks the way the model saw it. WebP is re-encoded from its pixels (quality 95); TIFF, GIF and
BMP (tags, comments, application extensions, trailing bytes) are re-encoded as PNG.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import math
import re
import struct
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from plantdx.decision import UNCERTAIN
from plantdx.exceptions import CaptureError

MODEL = "plantdx"
REASONS = ("sampled", "abstained", "low_confidence")
SIDECAR_SUFFIX = ".json"
# What a stored photo's file name may end with (`sniff`, and "bin" for unknown bytes kept as sent).
SUFFIXES = ("jpg", "png", "webp", "gif", "bmp", "tiff", "bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^(?:[0-9]{1,9}|unknown)$")
_UNSAFE_LABEL = re.compile(r"[/\\\x00-\x1f\x7f]")
ORIENTATION = 0x0112

# JPEG segments kept: frames, tables and scans, and the application segments that change the
# pixels, each only with its own signature.
_JPEG_TABLES = {*range(0xC0, 0xD0), 0xDA, 0xDB, 0xDD}
_JPEG_APPS = {0xE0: b"JFIF\x00", 0xE2: b"ICC_PROFILE\x00", 0xEE: b"Adobe"}
_JPEG_EOI = 0xD9
_PNG_KEEP = {
    b"IHDR",
    b"PLTE",
    b"IDAT",
    b"IEND",
    b"tRNS",
    b"gAMA",
    b"cHRM",
    b"sRGB",
    b"iCCP",
    b"sBIT",
    b"bKGD",
    b"pHYs",
}


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

    def validate(self, key: str) -> Sidecar:
        """Every field as the writer makes it, for the sidecar stored under `key`; raises
        CaptureError naming the first that is not (a planted or corrupted sidecar)."""
        stem = key.rsplit("/", 1)[-1].removesuffix(SIDECAR_SUFFIX)
        suffix = self.file.rpartition(".")[2] if isinstance(self.file, str) else ""
        checks = {
            "time": isinstance(self.time, str) and _is_time(self.time),
            "version": isinstance(self.version, str) and bool(_VERSION.match(self.version)),
            "prediction": _is_label(self.prediction),
            "confidence": _is_number(self.confidence) and 0.0 <= self.confidence <= 1.0,
            "decision": self.decision == UNCERTAIN or _is_label(self.decision),
            "sha256": isinstance(self.sha256, str) and bool(_SHA256.match(self.sha256)),
            "reason": self.reason in REASONS,
            # the photo beside the sidecar, under the same name: no folder, no other photo
            "file": suffix in SUFFIXES and self.file == f"{stem}.{suffix}",
            "model": self.model == MODEL,
            "bytes": _is_number(self.bytes) and isinstance(self.bytes, int) and self.bytes >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise CaptureError(f"sidecar {key}: invalid {', '.join(bad)}")
        return self


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _is_label(text: object) -> bool:
    return (
        isinstance(text, str)
        and 0 < len(text) <= 200
        and not text.startswith(".")
        and not _UNSAFE_LABEL.search(text)
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    """The first image's pixels, upright, in a new file: nothing of the original's metadata
    (EXIF, comments, text, tags) is copied; only an ICC profile is carried over."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        icc = img.info.get("icc_profile")
        out = ImageOps.exif_transpose(img)
        mode = "RGBA" if "A" in out.getbands() or "transparency" in out.info else "RGB"
        if fmt == "jpg":
            mode = "RGB"
        out = out.convert(mode)
        out.info = {}  # Pillow writes some info keys (a JPEG comment) when they are present
        extra = {"icc_profile": icc} if icc else {}
        buf = io.BytesIO()
        if fmt == "jpg":
            out.save(buf, format="JPEG", quality=95, **extra)
        elif fmt == "webp":
            out.save(buf, format="WEBP", quality=95, **extra)
        else:
            out.save(buf, format="PNG", **extra)
            fmt = "png"
    return buf.getvalue(), fmt


def _jpeg_segment_kept(marker: int, payload: bytes) -> bool:
    if marker in _JPEG_TABLES:
        return True
    signature = _JPEG_APPS.get(marker)
    return signature is not None and payload.startswith(signature)


def _scan_end(data: bytes, i: int) -> int:
    """Where the entropy-coded data that starts at `i` ends: the next marker that is neither a
    stuffed 0xFF00 nor a restart marker."""
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            raise CaptureError("JPEG without an end-of-image marker")
        following = data[i + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            i += 2
        elif following == 0xFF:  # fill bytes before a marker
            i += 1
        else:
            return i


def _strip_jpeg(data: bytes) -> bytes:
    """The first image only, up to its end-of-image marker, with only the kept segments."""
    out = bytearray(data[:2])
    i = 2
    while i + 2 <= len(data):
        if data[i] != 0xFF:
            raise CaptureError("malformed JPEG segment")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == _JPEG_EOI:
            out += data[i : i + 2]
            return bytes(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length, no payload
            out += data[i : i + 2]
            i += 2
            continue
        if i + 4 > len(data):
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if length < 2 or end > len(data):
            raise CaptureError("truncated JPEG segment")
        if _jpeg_segment_kept(marker, data[i + 4 : end]):
            out += data[i:end]
        i = end
        if marker == 0xDA:  # the scan's entropy-coded data follows
            scan_end = _scan_end(data, i)
            out += data[i:scan_end]
            i = scan_end
    raise CaptureError("JPEG without an end-of-image marker")


def _strip_png(data: bytes) -> bytes:
    out = bytearray(data[:8])
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data):
            raise CaptureError("truncated PNG chunk")
        if kind in _PNG_KEEP:
            out += data[i:end]
        i = end
        if kind == b"IEND":
            return bytes(out)
    raise CaptureError("PNG without IEND")


def strip_metadata(data: bytes, fmt: str) -> tuple[bytes, str]:
    """The photo without metadata (EXIF with GPS, XMP, IPTC, comments) and its suffix."""
    if fmt in ("webp", "tiff", "gif", "bmp"):
        return _reencode(data, fmt)
    if fmt not in ("jpg", "png"):
        raise CaptureError(f"cannot strip metadata from format {fmt!r}")
    if _orientation(data) != 1:
        return _reencode(data, fmt)
    return (_strip_jpeg(data) if fmt == "jpg" else _strip_png(data)), fmt
