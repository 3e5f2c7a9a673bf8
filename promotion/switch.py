"""Moving a running server and its repository from the champion to the candidate, all or
nothing: if any step fails (the server refuses a load, the repository cannot be pinned, the
command is interrupted), the server is put back as it was (the champion loaded and serving,
the candidate unloaded, the ensembles' own configs) and the repository's version policy
restored, then the error is raised, saying whether putting back worked."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from plantdx.exceptions import ClientError, PlantDxError
from plantdx.model_repository.location import FolderRepository, Repository
from plantdx.model_repository.names import CLASSIFIER, ENSEMBLE, PREPROCESS
from plantdx.model_repository.policy import FOLLOWERS

from .side_by_side import SideBySide


class PromotionFailedError(PlantDxError):
    """The switch to the candidate failed; the server and the repository were put back."""

    exit_code = 4


def switch(side: SideBySide, candidate: int, repository: Path | Repository) -> None:
    """Both versions are loaded and the ensemble is pinned to the champion: move the traffic,
    drop the champion, make it durable in the repository, reload the ensembles' own configs."""
    repo = FolderRepository(repository) if isinstance(repository, Path) else repository
    configs = repo.saved_configs()
    # The explanations' classifier (classifier_cams, --target triton) moves with the pair; a
    # candidate without one serves without explanations, and nothing else depends on it.
    ready = {s.name for s in side.control.status() if s.state == "READY"}
    followers = {name: side.control.ready_versions(name) for name in FOLLOWERS if name in ready}
    try:
        side.pin_ensemble(candidate)
        for name in (CLASSIFIER, PREPROCESS):
            side.set_versions(name, [candidate], f"unloading the other versions of {name}")
        for name in followers:
            _explanations(side.set_versions, name, [candidate])
        repo.pin(candidate)
        # The repository's own ensemble configs again (their steps follow the loaded version).
        for name in side.ensembles:
            if name == ENSEMBLE:
                side.control.load_config(name, None, f"reloading {name} from the repository")
            else:
                _explanations(side.control.load_config, name, None)
    except BaseException as exc:
        problems = []
        try:  # whether or not the pin got through (an interrupt may follow it at once)
            repo.restore_configs(configs)
        except (PlantDxError, OSError) as undo:
            problems.append(f"the repository's version policy was not restored: {undo}")
        try:
            side.restore(also_loaded=[candidate])
        except PlantDxError as undo:
            problems.append(str(undo))
        for name, held in followers.items():
            _explanations(side.set_versions, name, held)
        if not isinstance(exc, Exception):
            raise  # interrupted: put back, then stop as asked
        where = f"version {side.served} serves as before" if not problems else "; ".join(problems)
        raise PromotionFailedError(
            f"version {candidate} was not promoted: {exc}. Put back: {where}"
            + ("" if not problems else " (check `plantdx models status` and the repository)")
        ) from exc


def _explanations(step: Any, name: str, arg: Any) -> None:
    """A step on an explanation model: its failure leaves the promotion alone (that version
    serves without explanations)."""
    with contextlib.suppress(ClientError):
        step(name, arg)


def publish(repo: Repository, candidate: int) -> None:
    """Only the repository moves (a repository the servers follow, such as `s3://`): its version
    policy serves `candidate`, and each following server switches by itself. A pin that fails
    half way (one config written) is put back."""
    configs = repo.saved_configs()
    try:
        repo.pin(candidate)
    except BaseException as exc:
        try:
            repo.restore_configs(configs)
            where = "the repository's version policy is as it was"
        except (PlantDxError, OSError) as undo:
            where = f"the repository's version policy was not restored: {undo}"
        if not isinstance(exc, Exception):
            raise
        raise PromotionFailedError(
            f"version {candidate} was not promoted: {exc}. Put back: {where}"
        ) from exc
