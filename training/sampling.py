"""How a training epoch draws its photos when the sources are uneven, and the loss that teaches
"none of these" on photos of no class.

A few hundred field photos among thousands of lab photos barely move a model when every photo
is drawn once per epoch. `BalancedSampler` draws with replacement from weights that give each
source a share of the epoch (`source_balance`: 0 = in proportion to its size, as plain
concatenation does; 1 = the same share for every source) and, inside a source, each class a
share (`class_balance`: 0 = in proportion to its photos; 1 = the same for every class); photos
of no class ("unknown", label -1) get `unknown_share` of the draws.

`OutlierExposureLoss` is cross-entropy on labelled photos plus `unknown_weight` × the
cross-entropy to the uniform distribution on unknown ones (Hendrycks et al., "Deep Anomaly
Detection with Outlier Exposure", 2019): the model learns to spread its probability on leaves
it does not know, which the abstention threshold then catches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from plantdx.choices import Sampling
from plantdx.data import UNKNOWN_LABEL
from plantdx.exceptions import ConfigError


@dataclass
class SamplingConfig:
    # balanced: BalancedSampler with the shares below; concat: every photo once per epoch,
    # shuffled (unknown photos included), as one concatenated dataset.
    mode: Sampling = "balanced"
    source_balance: float = 0.5
    class_balance: float = 0.5
    unknown_share: float = 0.15
    # Weight of the outlier-exposure term (the loss on unknown photos).
    unknown_weight: float = 0.5
    # A source's share multiplied by this, by source name (a mixed source's lab-style part is
    # NAME:lab); unnamed sources keep 1. Used by the base epochs and the continuations alike.
    # A name that is not a source of the run is ignored (the run says so when it starts).
    # The default halves the cleaned tomato-mixed-extra photos of the default command, so that
    # PlantDoc's photos get most of the field draws (BENCHMARKS.md, "Field recipe candidates").
    source_weights: dict[str, float] = field(default_factory=lambda: {"tomato-mixed-extra": 0.5})

    def not_sources(self, names: Sequence[str]) -> list[str]:
        """The names in source_weights that are not among the run's sources."""
        return sorted(set(self.source_weights) - set(names))

    def source_multipliers(self, names: Sequence[str]) -> dict[int, float]:
        """{source index: multiplier} for `names` (the run's sources, in order)."""
        bad = {k: v for k, v in self.source_weights.items() if not v > 0}
        if bad:
            raise ConfigError(f"sampling.source_weights must be > 0: {bad}")
        return {i: self.source_weights[n] for i, n in enumerate(names) if n in self.source_weights}


def sample_weights(
    labels: np.ndarray,
    sources: np.ndarray,
    *,
    source_balance: float,
    class_balance: float,
    unknown_share: float,
    source_multipliers: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Probability of drawing each photo (sums to 1)."""
    labels = np.asarray(labels)
    sources = np.asarray(sources)
    known = labels != UNKNOWN_LABEL
    w = np.zeros(len(labels), dtype=np.float64)
    src_ids = sorted(set(sources[known].tolist()))
    src_mass = np.array([np.sum(known & (sources == s)) for s in src_ids], dtype=np.float64)
    src_mass = src_mass ** (1.0 - source_balance)
    mult = source_multipliers or {}
    src_mass *= np.array([mult.get(s, 1.0) for s in src_ids], dtype=np.float64)
    src_mass /= src_mass.sum()
    for s, mass in zip(src_ids, src_mass, strict=True):
        in_src = known & (sources == s)
        classes, counts = np.unique(labels[in_src], return_counts=True)
        cls_mass = counts.astype(np.float64) ** (1.0 - class_balance)
        cls_mass /= cls_mass.sum()
        for c, n, m in zip(classes, counts, cls_mass, strict=True):
            w[in_src & (labels == c)] = mass * m / n
    n_unknown = int((~known).sum())
    if n_unknown and unknown_share > 0:
        w[known] *= 1.0 - unknown_share
        w[~known] = unknown_share / n_unknown
    return w / w.sum()


class BalancedSampler(Sampler[int]):
    """`num_samples` draws per epoch with replacement from `weights`; the draws depend only on
    the seed and the epoch (`set_epoch`), so a resumed run draws what the unbroken run did.
    Under DDP every rank computes the same draws and takes its own slice of them."""

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.total = int(num_samples) - int(num_samples) % world_size or int(num_samples)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        draws = torch.multinomial(self.weights, self.total, replacement=True, generator=g)
        return iter(draws[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.world_size))


class OutlierExposureLoss(nn.Module):
    """Cross-entropy (with label smoothing) on labelled rows; on rows labelled UNKNOWN_LABEL,
    `unknown_weight` × cross-entropy to the uniform distribution. Without unknown rows and
    without a crop term it is exactly nn.CrossEntropyLoss.

    `crop_of_class` (the crop index of each class) with `crop_weight` > 0 adds `crop_weight` ×
    the cross-entropy of the crop on labelled rows, a crop's logit being the log-sum-exp of its
    classes' logits (the log of the probability the model gives the crop): a class of the
    wrong crop then costs more than a look-alike disease of the right one."""

    def __init__(
        self,
        *,
        label_smoothing: float = 0.0,
        unknown_weight: float = 0.5,
        crop_of_class: Sequence[int] | None = None,
        crop_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.unknown_weight = unknown_weight
        self.crop_weight = crop_weight
        crops = torch.as_tensor(list(crop_of_class or []), dtype=torch.long)
        self.use_crops = crop_weight > 0 and len(crops) > 0 and int(crops.max()) > 0
        # [C, K]: 0 where class c is of crop k, -1e4 (a finite -inf) elsewhere.
        onehot = F.one_hot(crops, int(crops.max()) + 1) if len(crops) else torch.zeros(0, 0)
        self.crop_of_class: torch.Tensor = crops
        self.crop_log_mask: torch.Tensor = torch.log(onehot.float()).clamp(min=-1e4)

    def _class_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if not self.use_crops:
            return loss
        mask = self.crop_log_mask.to(logits.device)
        crop_logits = torch.logsumexp(logits.float()[:, :, None] + mask[None], dim=1)
        crop_targets = self.crop_of_class.to(logits.device)[targets]
        return loss + self.crop_weight * F.cross_entropy(crop_logits, crop_targets)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = targets != UNKNOWN_LABEL
        if bool(known.all()):
            return self._class_loss(logits, targets)
        loss = logits.new_zeros(())
        if bool(known.any()):
            loss = self._class_loss(logits[known], targets[known])
        outliers = logits[~known].float()
        uniform_ce = -(outliers.log_softmax(dim=1).mean(dim=1)).mean()
        return loss + self.unknown_weight * uniform_ce
