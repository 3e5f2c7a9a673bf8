"""MLflow wiring shared by training (logging, registry) and export (resolving model URIs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plantdx.exceptions import CheckpointError

DEFAULT_STORE = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the working directory (registry included)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def configure() -> Any:
    import logging

    import mlflow

    # Alembic and MLflow announce every schema migration of a new store at INFO.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def download_checkpoint(source: str) -> Path:
    """`models:/name/3`, `models:/name@alias`, `runs:/id/path` or a bare run id → best.pt."""
    mlflow = configure()
    try:
        if source.startswith("models:/"):
            uri = source.rstrip("/")
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        elif source.startswith("runs:/"):
            local = mlflow.artifacts.download_artifacts(artifact_uri=source)
        else:
            local = mlflow.artifacts.download_artifacts(run_id=source, artifact_path="checkpoint")
    except Exception as exc:
        raise CheckpointError(
            f"cannot fetch {source!r} from MLflow at {tracking_uri()}: {exc}"
        ) from exc
    path = Path(local)
    if path.is_dir():
        found = sorted(path.rglob("best.pt")) or sorted(path.rglob("*.pt"))
        if not found:
            raise CheckpointError(f"{source!r} holds no checkpoint (.pt) file")
        path = found[0]
    return path
