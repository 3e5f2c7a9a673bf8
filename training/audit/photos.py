"""The photos of every source, and the audit's one pass over them: each file is read and decoded
once, small, and everything the audit needs is taken from that decode (its hash, perceptual
hash, mosaic seams, keypoints, a thumbnail for the contact sheets, its features)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from plantdx.data import Source, scan_image_folder
from plantdx.exceptions import DatasetError, PreprocessError
from plantdx.preprocessing import open_image_sized

from .config import AuditConfig
from .matching import keypoints
from .mosaic import seam_strengths

THUMB = 96
# The reason training's decoder gives for a photo under its minimum side: tiny, not corrupt.
TOO_SMALL = "too_small"
HASH_BITS = 64


@dataclass
class Photo:
    path: Path
    source: int
    label: str
    sha256: str = ""
    nbytes: int = 0
    width: int = 0
    height: int = 0
    # Why training's decoder refuses the file (corrupt, truncated, not an image, ...).
    unreadable: str | None = None


@dataclass
class Described:
    """Per photo, in the order of `photos`; rows of unreadable photos are zeros."""

    photos: list[Photo]
    sources: list[Source]
    not_images: list[tuple[Path, str]]
    phash: np.ndarray  # (N, 64) bool
    seams: np.ndarray  # (N, 4) float32
    thumbs: np.ndarray  # (N, THUMB, THUMB, 3) uint8
    features: np.ndarray  # (N, D) float32, L2-normalised
    points: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)

    @property
    def readable(self) -> np.ndarray:
        return np.array([p.unreadable is None for p in self.photos], dtype=bool)

    def too_small(self, i: int) -> bool:
        """Refused by training's decoder for its size alone (tiny, not corrupt)."""
        reason = self.photos[i].unreadable
        return reason is not None and reason.startswith(TOO_SMALL)


def scan_photos(roots: Sequence[str | Path]) -> tuple[list[Photo], list[Source], list]:
    """Every image of every class folder; sources named as `scan_sources` names them."""
    if not roots:
        raise DatasetError("no sources: give one or more ImageFolders")
    photos: list[Photo] = []
    sources: list[Source] = []
    not_images: list[tuple[Path, str]] = []
    for k, root in enumerate(roots):
        folder = scan_image_folder(root, min_classes=1)
        if any(folder.root.resolve() == s.root.resolve() for s in sources):
            raise DatasetError(f"{folder.root} is given twice")
        base = folder.root.name or str(folder.root)
        name = base if base not in {s.name for s in sources} else f"{base}-{k}"
        sources.append(Source(name, folder.root))
        photos += [Photo(s.path, k, folder.class_names[s.label]) for s in folder.samples]
        not_images += folder.skipped
    return photos, sources, not_images


@dataclass
class _One:
    phash: np.ndarray
    seams: np.ndarray
    thumb: np.ndarray
    pixels: np.ndarray  # at the feature size
    points: tuple[np.ndarray, np.ndarray | None]


def _describe(photo: Photo, cfg: AuditConfig) -> _One | None:
    """Fills the photo's hash, size and readability; None when it does not decode."""
    try:
        data = photo.path.read_bytes()
    except OSError as exc:
        photo.unreadable = f"unreadable: {exc}"
        return None
    photo.nbytes = len(data)
    photo.sha256 = hashlib.sha256(data).hexdigest()
    try:
        img, (photo.width, photo.height) = open_image_sized(data, draft_size=cfg.image_size)
    except PreprocessError as exc:
        photo.unreadable = f"{exc.reason}: {exc}"
        if exc.reason == TOO_SMALL:  # tiny rather than corrupt: say how tiny
            with contextlib.suppress(Exception):
                photo.width, photo.height = Image.open(io.BytesIO(data)).size
        return None
    side = cfg.image_size
    square = img.resize((side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(square, dtype=np.uint8)
    grey = np.asarray(square.convert("L"), dtype=np.uint8)
    small = img.resize((cfg.feature_size,) * 2, Image.Resampling.BILINEAR)
    return _One(
        phash=_phash(square),
        seams=seam_strengths(pixels),
        thumb=np.asarray(square.resize((THUMB, THUMB), Image.Resampling.BILINEAR)),
        pixels=np.asarray(small, dtype=np.uint8),
        points=keypoints(grey),
    )


def _phash(img: Image.Image) -> np.ndarray:
    import imagehash

    return np.asarray(imagehash.phash(img).hash, dtype=bool).reshape(HASH_BITS)


def describe(
    photos: list[Photo],
    sources: list[Source],
    not_images: list,
    cfg: AuditConfig,
    features: Callable[[np.ndarray], np.ndarray],
    *,
    progress: Callable[[int], None] | None = None,
) -> Described:
    """Decode every photo once (two threads) and describe it; `features` maps a batch of
    uint8 NHWC pixels to L2-normalised feature rows."""
    n = len(photos)
    phash = np.zeros((n, HASH_BITS), dtype=bool)
    seams = np.zeros((n, 4), dtype=np.float32)
    thumbs = np.zeros((n, THUMB, THUMB, 3), dtype=np.uint8)
    points: list[tuple[np.ndarray, np.ndarray | None]] = [(np.zeros((0, 2)), None)] * n
    found: list[tuple[int, np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, n, cfg.batch_size):
            chunk = photos[start : start + cfg.batch_size]
            done = list(pool.map(lambda p: _describe(p, cfg), chunk))
            index = [i for i, one in enumerate(done, start) if one is not None]
            for i in index:
                one = done[i - start]
                assert one is not None
                phash[i], seams[i], thumbs[i], points[i] = (
                    one.phash,
                    one.seams,
                    one.thumb,
                    one.points,
                )
            if index:
                batch = np.stack([done[i - start].pixels for i in index])  # type: ignore[union-attr]
                found += list(zip(index, features(batch), strict=True))
            if progress:
                progress(len(chunk))
    dim = len(found[0][1]) if found else 1
    matrix = np.zeros((n, dim), dtype=np.float32)
    for i, row in found:
        matrix[i] = row
    return Described(photos, sources, not_images, phash, seams, thumbs, matrix, points)
