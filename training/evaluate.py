"""`plantdx evaluate`: accuracy, macro-F1, per-class report, confusion matrix, misclassified files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from plantdx.checkpoint import Checkpoint, checkpoint_crops, load_checkpoint
from plantdx.choices import Device, EvalSplit
from plantdx.data import SPLIT_FILENAME, Sample, read_split, scan_image_folder, scan_unknown
from plantdx.decision import DecisionRule
from plantdx.exceptions import DatasetError
from plantdx.preprocessing import Normalizer, Preprocessor

from .calibrate import class_balanced, selective
from .config import as_list
from .data import DecodedImages, PixelDataset, decode_samples


@dataclass
class EvaluateConfig:
    checkpoint: str = ""
    # One ImageFolder or several (each reported on its own under `sources`).
    data: list[str] | str = ""
    # Photos of no class: how many the model abstains on (unknown_n, unknown_abstain_rate).
    unknown_data: list[str] | str | None = None
    split: EvalSplit = "all"
    batch_size: int = 64
    # Replaces the checkpoint's abstention threshold (its temperature stays).
    threshold: float | None = None
    # Where report.json and confusion_matrix.png go (default: eval-SPLIT beside the checkpoint).
    out: str | None = None
    device: Device = "auto"
    # Overlays (class-activation heatmaps) of up to this many misclassified photos.
    explain: int = 0
    # Each photo's crop taken from its label folder: its answer is chosen among that crop's
    # classes (as the served CROP input does), and every figure is with the crop known.
    crop_from_labels: bool = False


def classification_report(
    targets: np.ndarray, predictions: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (targets, predictions), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0
    )
    present = cm.sum(1) > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "n": int(cm.sum()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion_matrix(cm: list[list[int]], class_names: list[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plantdx.labels import pretty

    arr = np.asarray(cm)
    size = max(5.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    norm = arr / np.maximum(arr.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Greens", vmin=0, vmax=1)
    names = [pretty(n) for n in class_names]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if arr[i, j]:
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(arr[i, j]), ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Loss, accuracy and learning rate per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes[:2], ("loss", "acc"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [r[f"{split}_{key}"] for r in history], style, label=split, ms=3)
        ax.set_title("accuracy" if key == "acc" else key)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [r["lr"] for r in history], "-o", ms=3, color="tab:green")
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _folder_samples(
    root: str, class_names: list[str], source: int
) -> tuple[list[Sample], list[tuple[Path, str]]]:
    folder = scan_image_folder(root, min_classes=1)
    index = {name: i for i, name in enumerate(class_names)}
    samples = [
        Sample(s.path, index[folder.class_names[s.label]], source)
        for s in folder.samples
        if folder.class_names[s.label] in index
    ]
    if not samples:
        raise DatasetError(
            f"no folder in {root} is named after a class of this checkpoint "
            f"(classes: {', '.join(class_names[:5])}...)"
        )
    not_images = [
        (p, why) for p, why in folder.skipped if p.relative_to(folder.root).parts[0] in index
    ]
    return samples, not_images


def _samples(
    cfg: EvaluateConfig, class_names: list[str]
) -> tuple[list[Sample], list[tuple[Path, str]], list[str], list[Sample]]:
    """The images to evaluate, the files of --data left out as non-images, the source names,
    and the photos of no class (from --unknown-data, or the run's unknown split)."""
    data = as_list(cfg.data)
    unknown_roots = as_list(cfg.unknown_data)
    if cfg.split != "all":
        split_file = Path(cfg.checkpoint).parent / SPLIT_FILENAME
        if Path(cfg.checkpoint).is_dir():
            split_file = Path(cfg.checkpoint) / SPLIT_FILENAME
        f = read_split(split_file, root=data[0] if len(data) == 1 else None)
        if f.class_names != class_names:
            raise DatasetError(f"{split_file} was written for other classes")
        unknown = (
            scan_unknown(unknown_roots, source=len(f.source_names))
            if unknown_roots
            else f.unknown[cfg.split]
        )
        return f.split[cfg.split], [], f.source_names, unknown
    samples: list[Sample] = []
    not_images: list[tuple[Path, str]] = []
    for i, root in enumerate(data):
        got, skipped = _folder_samples(root, class_names, i)
        samples += got
        not_images += skipped
    names = [Path(r).name or str(r) for r in data]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    unknown = scan_unknown(unknown_roots, source=len(data)) if unknown_roots else []
    return samples, not_images, names, unknown


def _checkpoint_path(source: str) -> Path:
    path = Path(source)
    if not path.exists() and source.startswith(("models:/", "runs:/")):
        from plantdx.tracking import download_checkpoint

        return download_checkpoint(source)
    return path / "best.pt" if path.is_dir() else path


def _logits(
    model: torch.nn.Module,
    samples: list[Sample],
    ckpt: Checkpoint,
    device: torch.device,
    bs: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, DecodedImages]:
    decoded = decode_samples(samples, Preprocessor(ckpt.preprocessing), progress=progress)
    loader = DataLoader(PixelDataset(decoded, Normalizer(ckpt.preprocessing)), batch_size=bs)
    out = []
    with torch.no_grad():
        for images, _ in loader:
            out.append(model(images.to(device)).float().cpu().numpy())
    z = np.concatenate(out) if out else np.zeros((0, ckpt.num_classes), np.float32)
    return z, decoded


def evaluate_checkpoint(
    cfg: EvaluateConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Plain top-1 (`accuracy`) and, under the checkpoint's decision rule, `coverage` and
    `selective_accuracy`; per source when there are several; the unknown photos' abstention.
    With `crop_from_labels` every labelled photo's answer is restricted to the crop of its label
    (`crop_from_labels: true` and the plain figures under `without_crop` join the report); the
    unknown photos, which have no crop, are judged as without it.

    `progress(done, total)` is called as photos are decoded (labelled and unknown together)."""
    from .distributed import pick_device

    path = _checkpoint_path(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    rule = DecisionRule.from_dict(ckpt.decision)
    threshold = rule.threshold if cfg.threshold is None else cfg.threshold
    device = pick_device(cfg.device)
    model = ckpt.build_model().to(device)
    samples, not_images, names, unknown = _samples(
        replace(cfg, checkpoint=str(path)), ckpt.class_names
    )
    report: dict[str, Any] = {
        "checkpoint": str(path),
        "model": ckpt.model_name,
        "temperature": rule.temperature,
        "threshold": threshold,
        "split": cfg.split,
    }
    out = Path(cfg.out) if cfg.out else path.parent / f"eval-{cfg.split}"
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[Path, str]] = list(not_images)
    total, done = len(samples) + len(unknown), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if samples:
        z, decoded = _logits(model, samples, ckpt, device, cfg.batch_size, advance)
        skipped += decoded.skipped
        p = rule.probabilities(z)
        if cfg.crop_from_labels:
            plain = {k: v for k, v in selective(p, decoded.labels, threshold).items() if k != "n"}
            report.update(crop_from_labels=True, without_crop=plain)
            allowed = checkpoint_crops(ckpt, path).class_masks()[decoded.labels]
            p = rule.probabilities(z, allowed)
        pred = p.argmax(1)
        report.update(classification_report(decoded.labels, pred, ckpt.class_names))
        report.update(
            {k: v for k, v in selective(p, decoded.labels, threshold).items() if k != "n"}
        )
        # The same figures with every class counting equally, for uneven photo sets.
        report["class_balanced"] = class_balanced(p, decoded.labels, threshold)
        if len(names) > 1:
            src_of = {s.path: s.source for s in samples}
            src = np.asarray([src_of[q] for q in decoded.paths])
            report["sources"] = {
                name: {
                    **selective(p[src == i], decoded.labels[src == i], threshold),
                    "macro_f1": classification_report(
                        decoded.labels[src == i], pred[src == i], ckpt.class_names
                    )["macro_f1"],
                }
                for i, name in enumerate(names)
                if (src == i).any()
            }
        wrong = np.flatnonzero(pred != decoded.labels)
        # The most confident mistakes first: those are the ones worth a look.
        report["misclassified"] = [
            {
                "file": str(decoded.paths[i]),
                "true": ckpt.class_names[int(decoded.labels[i])],
                "predicted": ckpt.class_names[int(pred[i])],
                "confidence": float(p[i, pred[i]]),
            }
            for i in wrong[np.argsort(-p[wrong, pred[wrong]], kind="stable")]
        ]
        plot_confusion_matrix(
            report["confusion_matrix"], ckpt.class_names, out / "confusion_matrix.png"
        )
        report["confusion_matrix_png"] = str(out / "confusion_matrix.png")
        if cfg.explain > 0:
            from .explain_eval import explain_misclassified

            report["explanations"] = explain_misclassified(
                model, ckpt, report["misclassified"], out, device, cfg.explain
            )
    if unknown:
        zu, decoded_u = _logits(model, unknown, ckpt, device, cfg.batch_size, advance)
        skipped += decoded_u.skipped
        top = rule.probabilities(zu).max(1) if len(zu) else np.zeros(0)
        report["unknown_n"] = len(top)
        report["unknown_abstain_rate"] = float((top < threshold).mean()) if len(top) else 0.0
    report["skipped"] = [[str(q), why] for q, why in skipped]
    report["report_json"] = str(out / "report.json")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
