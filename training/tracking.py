"""MLflow for one training run: parameters, per-epoch metrics, artifacts, the Model Registry.

The store is `plantdx.tracking.tracking_uri()`: MLFLOW_TRACKING_URI, else `mlflow.db` (SQLite,
registry included) in the working directory. The registered version is an MLflow model
(`mlflow_model.py`: pyfunc, with the checkpoint as its artifact), so `mlflow models serve`
answers and `plantdx export models:/plantdx/3` (or `@alias`) finds the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

from plantdx.config import to_dict
from plantdx.data import ImageFolder

from .config import TrainConfig
from .sources import flat_source_metrics

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "plantdx"
RUN_ARTIFACTS = (
    "config.yaml",
    "labels.txt",
    "split.json",
    "metrics.json",
    "history.json",
    "test_report.json",
    "confusion_matrix.png",
    "training_curves.png",
    "skipped.json",
)


def dataset_hash(dataset: ImageFolder) -> str:
    """A hash of the file list, sizes and labels: cheap, and changes whenever the data does."""
    h = hashlib.sha256()
    roots = [src.root for src in dataset.sources]
    for s in dataset.samples:
        rel = s.path.relative_to(roots[s.source])
        h.update(f"{rel}:{s.path.stat().st_size}:{s.label}\n".encode())
    return h.hexdigest()


def flat_params(cfg: TrainConfig, num_classes: int) -> dict[str, str]:
    flat = {k: v for k, v in to_dict(cfg).items() if not isinstance(v, dict)}
    flat.update({f"augment.{k}": v for k, v in to_dict(cfg.augment).items()})
    if cfg.model_kwargs:
        flat["model_kwargs"] = cfg.model_kwargs
    flat["num_classes"] = num_classes
    return {k: str(v)[:500] for k, v in flat.items()}


class RunTracker:
    """Logs one run; a resumed run continues its MLflow run when the store still has it."""

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: ImageFolder,
        *,
        resume_run_id: str | None = None,
        extra_params: dict[str, Any] | None = None,
    ) -> None:
        from plantdx.tracking import configure

        self.mlflow = configure()
        self.cfg = cfg
        self.registered: str | None = None
        self.mlflow.set_experiment(cfg.experiment)
        self.run = self._start(resume_run_id)
        self.run_id: str = self.run.info.run_id
        self.data_hash = dataset_hash(dataset)
        self.mlflow.set_tags({"data_sha256": self.data_hash, "data_root": str(dataset.root)})
        if self.resumed:
            # MLflow params are write-once; what changed on resume goes into tags.
            self.mlflow.set_tags({"resumed_with_epochs": str(cfg.epochs)})
        else:
            params = flat_params(cfg, len(dataset.class_names))
            params.update({k: str(v) for k, v in (extra_params or {}).items()})
            self.mlflow.log_params(params)

    def _start(self, run_id: str | None) -> Any:
        from mlflow.exceptions import MlflowException

        self.resumed = False
        if run_id:
            try:
                run = self.mlflow.start_run(run_id=run_id)
                self.resumed = True
                return run
            except MlflowException as exc:
                log.warning("MLflow run %s not found (%s); starting a new run", run_id, exc)
        return self.mlflow.start_run()

    def log_skipped(self, count: int) -> None:
        with contextlib.suppress(Exception):  # a param already logged by the run we resume
            self.mlflow.log_param("skipped_files", count)
        self.mlflow.log_metric("skipped_files", float(count))

    def log_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        self.mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=step)

    def finish(self, metrics: dict[str, Any], run_dir: Path) -> None:
        numeric = {
            ("best_val_acc" if k == "val_acc" else k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float)
        }
        numeric.update(flat_source_metrics(metrics))
        self.mlflow.log_metrics(numeric)
        for name in RUN_ARTIFACTS:
            if (run_dir / name).is_file():
                self.mlflow.log_artifact(str(run_dir / name))
        self.mlflow.log_artifact(str(run_dir / "best.pt"), artifact_path="checkpoint")
        if self.cfg.register:
            self.register(self.cfg.register_as or DEFAULT_MODEL_NAME, metrics, run_dir / "best.pt")
        self.mlflow.end_run()

    def register(self, name: str, metrics: dict[str, Any], checkpoint: Path) -> None:
        """A registry version that is an MLflow model (pyfunc, with signature and input example,
        the checkpoint as its artifact), tagged with data and scores."""
        from mlflow.exceptions import MlflowException

        from .mlflow_model import log_model

        info = log_model(self.mlflow, checkpoint)
        client = self.mlflow.MlflowClient()
        with contextlib.suppress(MlflowException):  # already registered
            client.create_registered_model(name)
        tags = {k: str(v) for k, v in metrics.items() if isinstance(v, int | float | str)}
        tags["data_sha256"] = self.data_hash
        version = client.create_model_version(
            name, info.model_uri, run_id=self.run_id, tags=tags, model_id=info.model_id
        )
        if self.cfg.register_alias:
            client.set_registered_model_alias(name, self.cfg.register_alias, version.version)
        self.registered = f"models:/{name}/{version.version}"

    def fail(self) -> None:
        self.mlflow.end_run(status="FAILED")
