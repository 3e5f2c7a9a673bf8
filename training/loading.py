"""Datasets and loaders for a training run: cached or lazily decoded, reproducibly augmented.

With `cache_images` (the default) every photo is decoded once into memory
(`data.decode_samples`); without it, files are checked once up front and decoded again on
every access, for datasets too large to hold in memory. Either way, unreadable files are
skipped before training starts, so a run never dies half-way on a bad file.

Augmentation draws one seed per sample from torch's RNG: in the main process that RNG is part
of the resumable state, and each DataLoader worker is seeded from the loader's generator, so a
run is reproducible for a given seed and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from plantdx.data import Sample
from plantdx.exceptions import PreprocessError
from plantdx.preprocessing import Normalizer, PreprocessMeta, Preprocessor

from .augment import build_augment
from .config import AugmentConfig
from .data import DecodedImages, PixelDataset, decode_samples

Augment = Callable[..., np.ndarray]
Item = tuple[torch.Tensor, int]


def sample_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


class SeededPixelDataset(PixelDataset):
    """Cached uint8 images, augmented with a per-sample seed from torch's RNG."""

    def __getitem__(self, i: int) -> Item:
        pixels = self.images.pixels[i]
        if self.augment is not None:
            augment: Augment = self.augment
            pixels = augment(pixels, seed=sample_seed())
        return torch.from_numpy(self.normalize(pixels)), int(self.images.labels[i])


class LazyImageDataset(Dataset[Item]):
    """Decodes each file on access (in DataLoader workers when there are any)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        pre: Preprocessor,
        normalize: Normalizer,
        augment: Augment | None = None,
    ) -> None:
        self.samples = list(samples)
        self.pre = pre
        self.normalize = normalize
        self.augment = augment
        self.labels = np.asarray([s.label for s in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Item:
        sample = self.samples[i]
        pixels = self.pre.decode(sample.path.read_bytes())
        if self.augment is not None:
            pixels = self.augment(pixels, seed=sample_seed())
        return torch.from_numpy(self.normalize(pixels)), sample.label


def readable_samples(
    samples: Sequence[Sample],
    pre: Preprocessor,
    *,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Decode every file once without keeping the pixels: the readable ones, and the others."""

    def check(s: Sample) -> str | None:
        try:
            pre.decode(s.path.read_bytes())
        except PreprocessError as exc:
            return f"{exc.reason}: {exc}"
        except OSError as exc:
            return f"unreadable: {exc}"
        return None

    keep: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for s, why in zip(samples, pool.map(check, samples), strict=True):
            if why is None:
                keep.append(s)
            else:
                skipped.append((s.path, why))
            if progress:
                progress(1)
    return keep, skipped


@dataclass
class PreparedData:
    datasets: dict[str, Dataset[Item]]
    labels: dict[str, np.ndarray]
    paths: dict[str, list[Path]]
    skipped: list[tuple[Path, str]]
    # The source index of every kept photo, per split.
    sources: dict[str, np.ndarray]

    def size(self, split: str) -> int:
        return len(self.labels[split])


def prepare_datasets(
    split: dict[str, list[Sample]],
    meta: PreprocessMeta,
    augment: AugmentConfig,
    *,
    cache: bool,
    progress: Callable[[int], None] | None = None,
    train_meta: PreprocessMeta | None = None,
) -> PreparedData:
    """Train (augmented), val and test datasets; unreadable files are left out and listed.

    With a `train_meta` of another size, "train" decodes at its size and every other split
    at `meta`'s; a "cv" split (trained on and evaluated) is decoded at both, its training
    copy as "cv_train"."""
    train_meta = train_meta or meta
    normalize = Normalizer(meta)
    train_aug = build_augment(augment)
    datasets: dict[str, Dataset[Item]] = {}
    labels: dict[str, np.ndarray] = {}
    paths: dict[str, list[Path]] = {}
    sources: dict[str, np.ndarray] = {}
    skipped: list[tuple[Path, str]] = []
    jobs = [
        (name, samples, train_meta if name == "train" else meta) for name, samples in split.items()
    ]
    if "cv" in split and train_meta != meta:
        jobs.append(("cv_train", split["cv"], train_meta))
    for name, samples, at in jobs:
        aug = train_aug if name == "train" else None
        pre = Preprocessor(at)
        if cache:
            decoded: DecodedImages = decode_samples(samples, pre, progress=progress)
            datasets[name] = SeededPixelDataset(decoded, normalize, aug)
            labels[name], paths[name] = decoded.labels, decoded.paths
            skipped += decoded.skipped if name != "cv_train" else []
        else:
            keep, bad = readable_samples(samples, pre, progress=progress)
            lazy = LazyImageDataset(keep, pre, normalize, aug)
            datasets[name] = lazy
            labels[name], paths[name] = lazy.labels, [s.path for s in keep]
            skipped += bad if name != "cv_train" else []
        source_of = {s.path: s.source for s in samples}
        sources[name] = np.asarray([source_of[p] for p in paths[name]], dtype=np.int64)
    return PreparedData(datasets, labels, paths, skipped, sources)


def train_loader(
    dataset: Dataset[Item],
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    sampler: Sampler[int] | None = None,
) -> DataLoader[Item]:
    """Shuffled batches; the generator is the loader's RNG state that a resume restores.

    Workers are started afresh each epoch (not persistent) and seeded from that generator, so
    an epoch's augmentation does not depend on how many epochs the same workers ran before.
    """
    n = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=n > batch_size,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(dataset: Dataset[Item], *, batch_size: int = 64) -> DataLoader[Item]:
    return DataLoader(dataset, batch_size=batch_size, num_workers=0)
