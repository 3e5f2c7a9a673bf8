"""The drift reference an export writes beside its classifier version (`reference.json`).

Photos: the run's split.json — the image statistics of up to `photos` training and up to
`photos` validation photos, the predictions (class shares, confidence, abstention) on the
validation photos only, which the model did not learn from — else the --check-data photos for
both, else no reference (and a note says so). Predictions are the exported ONNX model's under
the version's own decision rule: what the served version answers on them.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from plantdx.checkpoint import Checkpoint
from plantdx.data import load_split
from plantdx.decision import UNCERTAIN, DecisionRule
from plantdx.exceptions import DatasetError, PreprocessError
from plantdx.imagestats import EDGES, bucket_counts, image_stats
from plantdx.preprocessing import Preprocessor, to_chw
from plantdx.reference import (
    CLASS,
    CONFIDENCE,
    CONFIDENCE_EDGES,
    REFERENCE_FILENAME,
    Distribution,
    Reference,
)

from .onnx import onnx_logits, takes_uint8
from .sources import check_paths, run_split_file

log = logging.getLogger(__name__)

NO_REFERENCE = (
    "no drift reference: neither the run's split.json nor --check-data photos were found, so "
    "`plantdx drift` and the drift alerts have nothing to compare this version with"
)


def evenly(items: list[Path], n: int) -> list[Path]:
    """At most n items, evenly spaced over the whole list (every class of a sorted folder)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def reference_photos(
    ckpt: Checkpoint, check_data: str | None, source_path: Path, photos: int
) -> tuple[list[Path], list[Path], str]:
    """(photos for the statistics, photos for the predictions, where they come from)."""
    split_file = None if check_data else run_split_file(source_path, ckpt)
    if split_file is not None:
        try:
            _, split = load_split(split_file)
        except DatasetError:
            split = {}
        train = [s.path for s in split.get("train", []) if s.path.is_file()]
        val = [s.path for s in split.get("val", []) if s.path.is_file()]
        if val:
            stats = evenly(train, photos) + evenly(val, photos)
            return stats, evenly(val, photos), "the run's training and validation photos"
    paths, where = check_paths(ckpt, check_data, source_path) if check_data else ([], "")
    if paths:
        chosen = evenly(paths, photos)
        return chosen, chosen, f"--check-data {where}"
    return [], [], ""


def build_reference(
    ckpt: Checkpoint,
    rule: DecisionRule,
    onnx_path: Path,
    stats_paths: list[Path],
    predict_paths: list[Path],
    where: str,
) -> Reference | None:
    """The reference of the exported model on these photos; None when there are none."""
    if not stats_paths:
        return None
    pre = Preprocessor(ckpt.preprocessing)
    # The classifier's own input: uint8 pixels it normalises itself, or (older repositories)
    # normalised float32 pixels.
    feed = to_chw if takes_uint8(onnx_path) else pre.normalize
    values: dict[str, list[float]] = {name: [] for name in EDGES}
    inputs: dict[Path, np.ndarray] = {}
    wanted = set(predict_paths)
    skipped = 0
    for path in dict.fromkeys(stats_paths + predict_paths):
        try:
            pixels, size = pre.decode_sized(path.read_bytes())
        except (OSError, PreprocessError):
            skipped += 1
            continue
        if path in wanted:
            inputs[path] = feed(pixels)
        for name, value in image_stats(pixels, size).to_dict().items():
            values[name].append(value)
    ref = Reference(sources={"statistics": where})
    for name, edges in EDGES.items():
        ref.distributions[name] = Distribution.histogram(name, bucket_counts(values[name], edges))
    if skipped:
        ref.notes.append(f"{skipped} photos could not be decoded and were left out")
    if inputs:
        probs = rule.probabilities(onnx_logits(onnx_path, np.stack(list(inputs.values()))))
        decisions = rule.decisions(probs, ckpt.class_names)
        tops = Counter(int(i) for i in probs.argmax(axis=1))
        conf = Distribution.histogram(
            CONFIDENCE, bucket_counts(probs.max(axis=1), CONFIDENCE_EDGES)
        )
        ref.distributions[CONFIDENCE] = conf
        ref.distributions[CLASS] = Distribution(
            list(ckpt.class_names), [tops.get(i, 0) for i in range(len(ckpt.class_names))]
        )
        ref.abstention_share = sum(d == UNCERTAIN for d in decisions) / len(decisions)
        ref.abstention_n = len(decisions)
        ref.sources["predictions"] = where.replace("training and validation", "validation")
        ref.notes.append(
            f"confidence and abstention under the version's own rule (threshold "
            f"{rule.threshold:g}); a deployment's abstain_threshold changes the served share"
        )
    return ref


def export_reference(
    ckpt: Checkpoint,
    rule: DecisionRule,
    onnx_path: Path,
    check_data: str | None,
    source_path: Path,
    photos: int,
) -> tuple[Reference | None, dict[str, object]]:
    """The version's reference and its provenance entry (None and a note when no photos)."""
    stats_paths, predict_paths, where = reference_photos(ckpt, check_data, source_path, photos)
    ref = build_reference(ckpt, rule, onnx_path, stats_paths, predict_paths, where)
    if ref is None:
        log.warning(NO_REFERENCE)
        return None, {"file": None, "note": NO_REFERENCE}
    entry: dict[str, object] = {
        "file": REFERENCE_FILENAME,
        "sources": ref.sources,
        "statistics_photos": next(iter(ref.distributions.values())).n,
        "prediction_photos": ref.abstention_n,
    }
    return ref, entry
