"""One version's answers on the labelled photos, from a checkpoint (PyTorch on this machine)
or from a running server (that version's preprocess and classifier, addressed by version)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.checkpoint import Checkpoint, load_checkpoint
from plantdx.decision import DecisionRule
from plantdx.exceptions import ClientError, PreprocessError, ServerUnavailableError

from .photos import LabelledPhotos


@dataclass
class Predictions:
    """Calibrated probabilities per photo, each photo's abstention threshold, which photos got
    an answer at all (`ok`; a photo that fails to decode fails for its own reason) and the time
    each took."""

    name: str
    probs: np.ndarray  # [n, C]
    thresholds: np.ndarray  # [n]
    ok: np.ndarray  # [n] bool
    latency_ms: np.ndarray  # [n]
    errors: dict[str, str] = field(default_factory=dict)  # photo → why it failed
    where: str = ""  # "checkpoint" or "server"
    info: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(source: str) -> Path:
    """A checkpoint file, a run directory, or an MLflow URI (models:/NAME/N, models:/NAME@ALIAS,
    runs:/ID/PATH) resolved to a local best.pt."""
    path = Path(source)
    if path.is_dir():
        return path / "best.pt"
    if not path.exists() and source.startswith(("models:/", "runs:/")):
        from plantdx.tracking import download_checkpoint

        return download_checkpoint(source)
    return path


def load_source(source: str) -> Checkpoint:
    return load_checkpoint(checkpoint_path(source))


def from_checkpoint(
    ckpt: Checkpoint, photos: LabelledPhotos, *, name: str, batch_size: int = 16
) -> Predictions:
    """PyTorch on this machine's CPU; latency is each photo's preprocessing plus its share of
    its batch's forward pass."""
    import torch

    from plantdx.preprocessing import Preprocessor

    rule = DecisionRule.from_dict(ckpt.decision)
    model = ckpt.build_model().eval()
    pre = Preprocessor(ckpt.preprocessing)
    n, c = len(photos), ckpt.num_classes
    probs = np.zeros((n, c), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    latency = np.zeros(n, dtype=np.float64)
    errors: dict[str, str] = {}
    with torch.no_grad():  # the first pass allocates and picks kernels: not timed
        model(torch.zeros(1, 3, pre.size[0], pre.size[1]))
    for start in range(0, n, batch_size):
        idx, arrays, spent = [], [], []
        for i in range(start, min(n, start + batch_size)):
            t0 = time.perf_counter()
            try:
                arrays.append(pre(photos.paths[i].read_bytes()))
            except (PreprocessError, OSError) as exc:
                errors[str(photos.paths[i])] = str(exc)
                continue
            idx.append(i)
            spent.append(time.perf_counter() - t0)
        if not idx:
            continue
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.stack(arrays))).float().numpy()
        share = (time.perf_counter() - t0) / len(idx)
        probs[idx] = rule.probabilities(logits)
        ok[idx] = True
        latency[idx] = (np.asarray(spent) + share) * 1000
    thresholds = np.full(n, rule.threshold, dtype=np.float32)
    info = {"model": ckpt.model_name, "decision": rule.to_dict(), "run_id": ckpt.mlflow_run_id}
    return Predictions(name, probs, thresholds, ok, latency, errors, "checkpoint", info)


def from_server(
    options: Any,
    version: int,
    photos: LabelledPhotos,
    *,
    concurrency: int = 4,
) -> Predictions:
    """Version `version` of preprocess and classifier on a server, one photo per request,
    `concurrency` requests in flight; decisions with the rule that version's preprocess sends."""
    from plantdx.client.versioned import VersionedClient

    n, c = len(photos), len(photos.class_names)
    probs = np.zeros((n, c), dtype=np.float32)
    thresholds = np.zeros(n, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    latency = np.zeros(n, dtype=np.float64)
    errors: dict[str, str] = {}
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        todo.put(i)
    down: list[str] = []

    def work() -> None:
        with VersionedClient.from_options(options) as client:
            assert isinstance(client, VersionedClient)
            while not down:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    answer = client.classify_version(photos.paths[i].read_bytes(), version)
                except (ClientError, OSError) as exc:
                    errors[str(photos.paths[i])] = str(exc)
                    if isinstance(exc, ServerUnavailableError):
                        down.append(str(exc))
                    continue
                if answer.logits.shape != (c,):
                    errors[str(photos.paths[i])] = (
                        f"version {version} answered {answer.logits.shape[0]} classes, not {c}"
                    )
                    continue
                rule = DecisionRule(temperature=answer.temperature, threshold=answer.threshold)
                probs[i] = rule.probabilities(answer.logits[None])[0]
                thresholds[i] = answer.threshold
                ok[i] = True
                latency[i] = answer.latency_ms

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if down:
        raise ClientError(f"version {version}: {down[0]}")
    return Predictions(
        f"version {version}", probs, thresholds, ok, latency, errors, "server", {"version": version}
    )
