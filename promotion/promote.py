"""`plantdx promote`: make the candidate version the served and registered champion, only if the
gate passes on the same labelled photos.

    1. load the candidate beside the champion (the ensemble stays on the champion),
    2. compare both through the server, per data source, and apply the gate,
    3. passed: move the ensemble to the candidate, unload the champion, write the version policy
       into the repository (every pod, every restart), move the MLflow alias, record the
       evidence; refused (or --dry-run): unload the candidate again, change nothing.

A repository in a bucket (`--repository s3://...`) is written and nothing else: no local
repository is needed, the server compared through is left as it was, and it switches to the
candidate by itself like every other server following the bucket (`wait_s`: how long to watch
it do so; the result's `followed` says whether it did).

Every failure path ends in a known state: before the switch (a failed comparison, a refused
gate) the server is restored on leaving the side-by-side; a switch that fails half way, even
after the candidate was loaded and the ensemble moved, is put back (switch.py:
PromotionFailedError, exit code 4); a failure to record the evidence after a complete switch
says so (PromotionUnrecordedError, exit code 5) and leaves the promotion in place.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from plantdx.exceptions import ConfigError, PlantDxError
from plantdx.model_repository.location import Repository, open_repository
from plantdx.model_repository.names import CLASSIFIER, ENSEMBLE, PREPROCESS

from .compare import Comparison
from .gate import Gate, evaluate_gate
from .photos import labelled_photos
from .predictions import from_server
from .record import candidate_provenance, record_in_mlflow, record_in_repository
from .side_by_side import SideBySide, control_for, served_version
from .switch import publish, switch


class PromotionRefusedError(PlantDxError):
    """The gate did not pass: nothing was changed."""

    exit_code = 3


class PromotionUnrecordedError(PlantDxError):
    """The candidate serves (server and repository), but its evidence was not recorded."""

    exit_code = 5


@dataclass
class PromoteConfig:
    url: str = "127.0.0.1:8000"
    protocol: str = "http"
    repository: str = ""
    candidate: int = 0
    data: list[str] = field(default_factory=list)
    dry_run: bool = False
    gate: Gate = field(default_factory=Gate)
    limit: int = 0
    concurrency: int = 4
    admin_key_env: str = "PLANTDX_ADMIN_KEY"
    registered_model: str = "plantdx"
    alias: str = "champion"
    mlflow: bool = True
    # A repository the servers follow (s3://): seconds to watch the server at `url` switch.
    wait_s: float = 60.0


def _check(cfg: PromoteConfig) -> Repository:
    cfg.gate.check()
    if not cfg.data:
        raise ConfigError("no labelled photos: pass --data DIR (repeatable, one per source)")
    repo = open_repository(cfg.repository)
    try:
        repo.check()
        held = {name: repo.versions(name) for name in (PREPROCESS, CLASSIFIER)}
    except PlantDxError as exc:
        raise ConfigError(str(exc)) from None
    for name, have in held.items():
        if cfg.candidate not in have:
            raise ConfigError(
                f"{repo.url} has no version {cfg.candidate} of {name} (it holds {held[CLASSIFIER]})"
            )
    return repo


def promote(cfg: PromoteConfig) -> dict[str, Any]:
    """The decision and its evidence; raises PromotionRefusedError after restoring the server
    when the gate fails (the evidence is on the exception as `.result`)."""
    from plantdx.client.options import ClientOptions

    repo = _check(cfg)
    options = ClientOptions.create(cfg.url, cfg.protocol)
    with control_for(cfg.url, cfg.protocol, cfg.admin_key_env) as control:
        side = SideBySide(control, [cfg.candidate])
        champion = side.served
        if champion == cfg.candidate:
            raise ConfigError(f"version {cfg.candidate} is already the served version")
        side.versions = sorted({champion, cfg.candidate})
        with side:
            photos = labelled_photos(cfg.data, side.class_names(options), limit=cfg.limit)
            a, b = from_server(
                options, [champion, cfg.candidate], photos, concurrency=cfg.concurrency
            )
            comparison = Comparison(a, b, photos).to_dict()
            verdict = evaluate_gate(cfg.gate, comparison)
            evidence = {
                "decided_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "champion": champion,
                "candidate": cfg.candidate,
                "server": cfg.url,
                "repository": repo.url,
                "data": list(cfg.data),
                "gate": verdict,
                "comparison": comparison,
                "dry_run": cfg.dry_run,
            }
            steps = _plan(champion, cfg, repo)
            result: dict[str, Any] = {
                "promoted": False,
                "dry_run": cfg.dry_run,
                "champion": champion,
                "candidate": cfg.candidate,
                "gate": verdict,
                "comparison": comparison,
                "steps": steps,
            }
            if not verdict["passed"] or cfg.dry_run:
                result["steps"] = [f"would {s}" for s in steps] if cfg.dry_run else []
                if not verdict["passed"]:
                    error = PromotionRefusedError(
                        f"version {cfg.candidate} was not promoted; the gate failed: "
                        + "; ".join(verdict["reasons"])
                        + f". Version {champion} keeps serving; nothing was changed."
                    )
                    error.result = result  # type: ignore[attr-defined]
                    raise error
                return result
            if not repo.is_remote:
                side.keep()
                switch(side, cfg.candidate, repo)  # all or nothing: put back on any failure
        if repo.is_remote:  # the server is as it was; it follows the repository like the rest
            publish(repo, cfg.candidate)
        result["promoted"] = True
        _record(cfg, repo, evidence, result)
        if repo.is_remote:
            result["followed"] = _wait_followed(control, cfg.candidate, cfg.wait_s)
    return result


def _wait_followed(control: Any, candidate: int, wait_s: float) -> bool:
    """Whether the server compared through serves the candidate within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if served_version(control) == candidate and control.ready_versions(CLASSIFIER) == [
                candidate
            ]:
                return True
        except PlantDxError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _record(
    cfg: PromoteConfig, repo: Repository, evidence: dict[str, Any], result: dict[str, Any]
) -> None:
    """The evidence, once the candidate serves: a failure here leaves the promotion complete
    and says what is missing."""
    result["recorded"] = {}
    try:
        result["recorded"]["repository"] = record_in_repository(repo, cfg.candidate, evidence)
        if cfg.mlflow:
            run_id = candidate_provenance(repo, cfg.candidate).get("mlflow_run_id")
            result["recorded"]["mlflow"] = record_in_mlflow(
                evidence, run_id=run_id, registered_model=cfg.registered_model, alias=cfg.alias
            )
    except Exception as exc:
        missing = "MLflow" if "repository" in result["recorded"] else "promotion.json"
        error = PromotionUnrecordedError(
            f"version {cfg.candidate} is promoted: it serves and the repository serves it on "
            f"every restart; recording it ({missing}) failed: {exc}"
        )
        error.result = result  # type: ignore[attr-defined]
        raise error from exc


def _plan(champion: int, cfg: PromoteConfig, repo: Repository) -> list[str]:
    serve = (
        f"serve version {cfg.candidate} from {repo.url} (version policy specific: "
        f"[{cfg.candidate}])"
    )
    record = f"record the evidence in {CLASSIFIER}/{cfg.candidate}/promotion.json" + (
        f" and MLflow (alias {cfg.alias!r} of {cfg.registered_model!r})" if cfg.mlflow else ""
    )
    if repo.is_remote:
        follow = f"every server following {repo.url} switches to version {cfg.candidate} by itself"
        return [serve, follow, record]
    return [
        f"move {ENSEMBLE} from version {champion} to version {cfg.candidate}",
        f"unload version {champion} of {CLASSIFIER} and {PREPROCESS}",
        serve,
        record,
    ]
