"""Datasets for training: decode once, augment on the fly.

Every photo is decoded with `plantdx.preprocessing.Preprocessor.decode` (JPEG draft mode, the
model's size and interpolation) and kept as uint8, so evaluation sees exactly the pixels the
server computes, and an epoch costs augmentation only, not JPEG decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plantdx.data import Sample
from plantdx.exceptions import PreprocessError
from plantdx.preprocessing import Normalizer, Preprocessor

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    pixels: np.ndarray  # N×H×W×3 uint8
    labels: np.ndarray  # N int64
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def decode_samples(
    samples: Sequence[Sample],
    pre: Preprocessor,
    *,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> DecodedImages:
    """Decode every sample; unreadable files are skipped and listed, never fatal."""

    def one(s: Sample) -> np.ndarray | str:
        try:
            return pre.decode(s.path.read_bytes())
        except PreprocessError as exc:
            return f"{exc.reason}: {exc}"
        except OSError as exc:
            return f"unreadable: {exc}"

    size = pre.meta.image_size
    pixels = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    keep: list[int] = []
    skipped: list[tuple[Path, str]] = []
    # Pillow releases the GIL while decoding, so threads scale.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, result in enumerate(pool.map(one, samples)):
            if isinstance(result, str):
                skipped.append((samples[i].path, result))
            else:
                pixels[i] = result
                keep.append(i)
            if progress:
                progress(1)
    for path, why in skipped:
        log.warning("skipping %s (%s)", path, why)
    idx = np.asarray(keep, dtype=np.int64)
    return DecodedImages(
        pixels=pixels[idx] if len(skipped) else pixels,
        labels=np.asarray([samples[i].label for i in keep], dtype=np.int64),
        paths=[samples[i].path for i in keep],
        skipped=skipped,
    )


class PixelDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decoded uint8 images → normalised tensors, optionally augmented."""

    def __init__(
        self,
        images: DecodedImages,
        normalize: Normalizer,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.images = images
        self.normalize = normalize
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = self.images.pixels[i]
        if self.augment is not None:
            pixels = self.augment(pixels)
        return torch.from_numpy(self.normalize(pixels)), int(self.images.labels[i])
