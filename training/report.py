"""The end of a run: the best model on the held-out splits, the decision rule fitted on val,
and the run's reports (metrics.json, history.json, test_report.json, the plots, MLflow)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plantdx.checkpoint import load_checkpoint, save_checkpoint
from plantdx.crops import CropMap

from .build import Trainee
from .config import TrainConfig
from .crossfit import CrossfitResult
from .crossfit_report import crossfit_figures
from .distributed import Distributed
from .engine import EvalResult, evaluate
from .evaluate import classification_report, plot_confusion_matrix, plot_training_curves
from .loop_state import LoopState
from .predictions import write_predictions
from .run_data import LoadedData, ScannedData
from .sources import decide_and_report
from .tracking import RunTracker


def finish_run(
    cfg: TrainConfig,
    st: LoopState,
    trainee: Trainee,
    scan: ScannedData,
    loaded: LoadedData,
    dist: Distributed,
    tracker: RunTracker | None,
    started: float,
    run_dir: Path,
    crossfit: CrossfitResult | None = None,
) -> dict[str, Any]:
    """Rank 0: evaluate best.pt, store its metrics and decision rule in it, write the reports;
    returns the run's metrics (metrics.json)."""
    data = loaded.prepared
    best = load_checkpoint(run_dir / "best.pt")
    trainee.net.load_state_dict(best.state_dict)
    passes = {name: _eval(trainee, loaded, name) for name in loaded.loaders if name != "train"}
    test = passes["test"]
    best_row = next((r for r in st.history if r["epoch"] == st.best_epoch), {})
    metrics: dict[str, Any] = {
        "val_acc": best_row.get("val_acc", st.best_acc),
        "best_epoch": st.best_epoch,
        "select_on": cfg.select_on,
        "test_acc": test.acc,
        "test_loss": test.loss,
        "n_train": data.size("train"),
        "n_val": data.size("val"),
        "n_test": data.size("test"),
        "epochs": st.epoch,
        "planned_epochs": st.epochs,
        "stopped_early": st.stopped_early,
        "skipped_files": len(loaded.skipped),
        "seconds": 0.0,
        "model": cfg.model,
        "image_size": scan.meta.image_size,  # the model's: evaluated, exported and served at
        "train_image_size": (scan.train_meta or scan.meta).image_size,
        "resize": scan.meta.resize,
        "device": str(trainee.device),
        "world_size": dist.world_size,
        "amp": trainee.amp,
    }
    # The decision rule (temperature, abstention threshold) fitted on val, and the
    # per-source val/test figures under it.
    rule, decided = decide_and_report(
        val=passes["val"],
        val_sources=data.sources["val"],
        test=test,
        test_sources=data.sources["test"],
        names=scan.source_names,
        class_names=scan.class_names,
        unknown_val=passes.get("unknown_val"),
        unknown_test=passes.get("unknown_test"),
        cfg=cfg.abstain,
        cv=crossfit.oof if crossfit else None,
        cv_sources=crossfit.sources if crossfit else None,
    )
    metrics.update(decided)
    if crossfit is not None:
        crops = CropMap.from_dict(scan.class_names, best.crops)
        metrics["crossfit"] = crossfit_figures(
            rule, crossfit, scan.source_names, crops, scan.class_names
        )
    best.decision = rule.to_dict()
    write_predictions(
        run_dir,
        passes,
        data.paths,
        data.sources,
        crossfit,
        scan.class_names,
        scan.source_names,
    )
    if len(test.targets):
        metrics["test_macro_f1"] = _write_test_report(test, data.paths["test"], scan, run_dir)
    plot_training_curves(st.history, run_dir / "training_curves.png")
    metrics["seconds"] = time.perf_counter() - started
    best.metrics = {**best.metrics, **metrics}
    save_checkpoint(best, run_dir / "best.pt")
    (run_dir / "history.json").write_text(json.dumps(st.history, indent=2) + "\n")
    if tracker:
        metrics["mlflow_run_id"] = tracker.run_id
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.finish(metrics, run_dir)
        if tracker.registered:
            metrics["registered_model"] = tracker.registered
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _write_test_report(
    test: EvalResult, paths: list[Path], scan: ScannedData, run_dir: Path
) -> float:
    """test_report.json (per-class figures, the misclassified files) and the confusion matrix;
    returns the macro-F1."""
    class_names = scan.class_names
    report = classification_report(test.targets, test.predictions, class_names)
    report["misclassified"] = [
        {
            "file": str(paths[i]),
            "true": class_names[int(test.targets[i])],
            "predicted": class_names[int(test.predictions[i])],
        }
        for i in np.flatnonzero(test.predictions != test.targets)
    ]
    (run_dir / "test_report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion_matrix(report["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
    return float(report["macro_f1"])


def _eval(trainee: Trainee, loaded: LoadedData, split: str) -> EvalResult:
    """One pass of the best model over a held-out split (unknown photos: no loss)."""
    known = not split.startswith("unknown")
    return evaluate(
        trainee.net,
        loaded.loaders[split],
        trainee.criterion if known else _no_loss,
        trainee.device,
        channels_last=trainee.channels_last,
    )


def _no_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.new_zeros(())
