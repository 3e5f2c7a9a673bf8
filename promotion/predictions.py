"""One version's answers on the labelled photos, from a checkpoint (PyTorch on this machine)
or from a running server (that version's preprocess and classifier, addressed by version):
without the crop, and with each photo's crop known from its label (the answer restricted to
that crop's classes, as the served CROP input does). A checkpoint's crops are its own (with
`crops.yaml` beside it); a server version's are read from the class names, since the server's
API does not expose the `crops.json` exported with it."""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.checkpoint import Checkpoint, checkpoint_crops, load_checkpoint
from plantdx.crops import CropMap
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
    # [n, C]: the same answers with each photo's crop known from its label.
    crop_probs: np.ndarray | None = None


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


def source_crops(source: str, ckpt: Checkpoint) -> CropMap:
    """The crops of a compared checkpoint, with `crops.yaml` beside it (as export reads them)."""
    return checkpoint_crops(ckpt, checkpoint_path(source))


def from_checkpoints(
    ckpts: list[Checkpoint],
    photos: LabelledPhotos,
    *,
    names: list[str],
    batch_size: int = 16,
    crops: list[CropMap] | None = None,
) -> list[Predictions]:
    """PyTorch on this machine's CPU, the models taking turns batch by batch so that both see
    the same machine load; a photo's latency is its preprocessing plus its share of its batch's
    forward pass. Models with the same preprocessing share the decoded photos."""
    import torch

    from plantdx.preprocessing import Preprocessor

    n = len(photos)
    rules = [DecisionRule.from_dict(c.decision) for c in ckpts]
    models = [c.build_model().eval() for c in ckpts]
    pres = [Preprocessor(c.preprocessing) for c in ckpts]
    probs = [np.zeros((n, c.num_classes), dtype=np.float32) for c in ckpts]
    crop_probs = [np.zeros_like(p) for p in probs]
    masks = [m.class_masks() for m in crops or [checkpoint_crops(c) for c in ckpts]]
    ok = [np.zeros(n, dtype=bool) for _ in ckpts]
    latency = [np.zeros(n, dtype=np.float64) for _ in ckpts]
    errors: list[dict[str, str]] = [{} for _ in ckpts]
    with torch.no_grad():  # the first pass allocates and picks kernels: not timed
        for model, pre in zip(models, pres, strict=True):
            model(torch.zeros(1, 3, pre.size[0], pre.size[1]))
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        decoded: dict[Any, tuple[list[int], list[np.ndarray], list[float]]] = {}
        for k, (model, pre) in enumerate(zip(models, pres, strict=True)):
            key = json.dumps(pre.meta.to_dict(), sort_keys=True)
            if key not in decoded:
                idx, arrays, spent = [], [], []
                for i in rows:
                    t0 = time.perf_counter()
                    try:
                        arrays.append(pre(photos.paths[i].read_bytes()))
                    except (PreprocessError, OSError) as exc:
                        errors[k][str(photos.paths[i])] = str(exc)
                        continue
                    idx.append(i)
                    spent.append(time.perf_counter() - t0)
                decoded[key] = (idx, arrays, spent)
            idx, arrays, spent = decoded[key]
            for i in rows:
                if i not in idx:
                    errors[k].setdefault(str(photos.paths[i]), "could not be decoded")
            if not idx:
                continue
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = model(torch.from_numpy(np.stack(arrays))).float().numpy()
            share = (time.perf_counter() - t0) / len(idx)
            probs[k][idx] = rules[k].probabilities(logits)
            crop_probs[k][idx] = rules[k].probabilities(logits, masks[k][photos.labels[idx]])
            ok[k][idx] = True
            latency[k][idx] = (np.asarray(spent) + share) * 1000
    out = []
    for k, ckpt in enumerate(ckpts):
        thresholds = np.full(n, rules[k].threshold, dtype=np.float32)
        info = {
            "model": ckpt.model_name,
            "decision": rules[k].to_dict(),
            "run_id": ckpt.mlflow_run_id,
        }
        out.append(
            Predictions(
                names[k],
                probs[k],
                thresholds,
                ok[k],
                latency[k],
                errors[k],
                "checkpoint",
                info,
                crop_probs[k],
            )
        )
    return out


def from_server(
    options: Any,
    versions: list[int],
    photos: LabelledPhotos,
    *,
    concurrency: int = 4,
) -> list[Predictions]:
    """Each version's preprocess and classifier on a server, one photo per request and
    `concurrency` requests in flight; every photo goes to every version in turn (the order
    alternating), so the versions see the same server load. Decisions use the rule each
    version's preprocess sends."""
    from plantdx.client.versioned import VersionedClient

    n, c = len(photos), len(photos.class_names)
    m = len(versions)
    probs = np.zeros((m, n, c), dtype=np.float32)
    crop_probs = np.zeros_like(probs)
    masks = CropMap.derive(photos.class_names).class_masks()
    thresholds = np.zeros((m, n), dtype=np.float32)
    ok = np.zeros((m, n), dtype=bool)
    latency = np.zeros((m, n), dtype=np.float64)
    errors: list[dict[str, str]] = [{} for _ in versions]
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        todo.put(i)
    down: list[str] = []

    def one(client: VersionedClient, k: int, i: int, image: bytes) -> None:
        try:
            answer = client.classify_version(image, versions[k])
        except ClientError as exc:
            errors[k][str(photos.paths[i])] = str(exc)
            if isinstance(exc, ServerUnavailableError):
                down.append(str(exc))
            return
        if answer.logits.shape != (c,):
            errors[k][str(photos.paths[i])] = (
                f"version {versions[k]} answered {answer.logits.shape[0]} classes, not {c}"
            )
            return
        rule = DecisionRule(temperature=answer.temperature, threshold=answer.threshold)
        probs[k, i] = rule.probabilities(answer.logits[None])[0]
        crop_probs[k, i] = rule.probabilities(answer.logits[None], masks[photos.labels[i]])[0]
        thresholds[k, i] = answer.threshold
        ok[k, i] = True
        latency[k, i] = answer.latency_ms

    def work() -> None:
        with VersionedClient.from_options(options) as client:
            assert isinstance(client, VersionedClient)
            while not down:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    image = photos.paths[i].read_bytes()
                except OSError as exc:
                    for k in range(m):
                        errors[k][str(photos.paths[i])] = str(exc)
                    continue
                order = range(m) if i % 2 == 0 else range(m - 1, -1, -1)
                for k in order:
                    one(client, k, i, image)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if down:
        raise ClientError(down[0])
    return [
        Predictions(
            f"version {v}",
            probs[k],
            thresholds[k],
            ok[k],
            latency[k],
            errors[k],
            "server",
            {"version": v},
            crop_probs[k],
        )
        for k, v in enumerate(versions)
    ]
