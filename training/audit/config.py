"""The audit's settings: which folders, which are known lab or field references, and the
thresholds (each measured on the shared photos: BENCHMARKS.md, "Data audit")."""

from __future__ import annotations

from dataclasses import dataclass, field

from plantdx.choices import Conflicts


@dataclass
class AuditConfig:
    # ImageFolders (one sub-folder per class), in the order training will get them as --data.
    sources: list[str] = field(default_factory=list)
    out: str = "audit"
    # Sources known to hold lab-style (plain board) or field-style photos only: the domain
    # classifier learns from them. None given: inferred (see domain.py).
    lab: list[str] = field(default_factory=list)
    field: list[str] = field(default_factory=list)
    # One photo under two labels in two sources: keep the copy in the source named first (the
    # curated source, named first, is trusted), or drop every copy. Copies in one source that
    # disagree are always all dropped.
    conflicts: Conflicts = "keep_first"
    # Photos cleanlab flags as mislabelled go into exclude.txt as comments only (their
    # precision by eye was too low to drop them by default); true: excluded.
    exclude_label_issues: bool = False
    # The one decode: every photo at this square size (hashes, mosaics, matching, thumbnails),
    # and at feature_size for the EfficientNet-Lite0 features.
    image_size: int = 256
    feature_size: int = 160
    batch_size: int = 64
    # A photo whose shorter side is below this many pixels is "tiny".
    min_side: int = 64
    # Near-duplicate candidates: perceptual hashes at most this many bits apart, or each
    # photo's `neighbours` most similar photos by feature cosine at or above `min_cosine`.
    max_phash_bits: int = 10
    min_cosine: float = 0.8
    neighbours: int = 5
    # A candidate pair is the same photo (or the same leaf shot again) when this many keypoint
    # matches agree on one affine transform (ORB + RANSAC), or, for photos with few keypoints,
    # at least `few_inliers` that are `inlier_share` of the fewer keypoints; or when the hashes
    # are at most `copy_phash_bits` apart and the cosine at least `copy_cosine`.
    min_inliers: int = 12
    few_inliers: int = 6
    inlier_share: float = 0.5
    copy_phash_bits: int = 2
    copy_cosine: float = 0.9
    # Mosaics: the centre row and column are seams (seam strength = the jump across the centre
    # line over the jumps between neighbouring rows/columns; 1 for a photo without a seam).
    mosaic_both: float = 1.2
    mosaic_one: float = 2.5
    mosaic_other: float = 0.95
    collage_one: float = 4.0
    # Two sources are taken as the lab and field references when a classifier tells their
    # photos apart with at least this recall of each (cross-validated).
    reference_recall: float = 0.95
    # A photo is lab-style when it scores as low as the lab reference's own photos do: below
    # this quantile of their (out-of-fold) scores, kept within `threshold_range`. Photos that
    # are neither (greenhouse plants before a board, leaves in a hand) score in between, and
    # they are not lab photos (0.087 on the shared photos, where 0.5 called many lab).
    lab_quantile: float = 0.98
    threshold_range: tuple[float, float] = (0.05, 0.5)
    folds: int = 5
    # Contact sheets: at most this many items per category.
    sheet_items: int = 120
    seed: int = 0
    # Training's split (plantdx train's defaults), to tell which copies would leak across it.
    split_seed: int = 42
    val_fraction: float = 0.2
    test_fraction: float = 0.1
