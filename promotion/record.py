"""Where a promotion leaves its evidence: the promoted version's `promotion.json` in the model
repository, and MLflow (the registry alias moved, tags on the registered version, a run holding
the comparison)."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from plantdx.model_repository.layout import PROVENANCE_FILENAME
from plantdx.model_repository.location import Repository

PROMOTION_FILENAME = "promotion.json"
PROMOTION_EXPERIMENT = "plantdx-promotions"


def candidate_provenance(repo: Repository, version: int) -> dict[str, Any]:
    return repo.version_json(version, PROVENANCE_FILENAME)


def record_in_repository(repo: Repository, version: int, evidence: dict[str, Any]) -> str:
    """Append the decision to classifier/N/promotion.json (a list: a version may be promoted,
    replaced and promoted again), in a folder or in the bucket."""
    return repo.append_record(version, PROMOTION_FILENAME, evidence)


def registered_version(client: Any, name: str, run_id: str) -> str | None:
    """The newest version of registered model `name` made from run `run_id`."""
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        return None
    return str(max(int(v.version) for v in found))


def record_in_mlflow(
    evidence: dict[str, Any], *, run_id: str | None, registered_model: str, alias: str
) -> dict[str, Any]:
    """Move `alias` to the candidate's registered version (found by its training run), tag that
    version, and log the comparison as a run of the `plantdx-promotions` experiment."""
    from plantdx.tracking import configure, tracking_uri

    mlflow = configure()
    client = mlflow.MlflowClient()
    out: dict[str, Any] = {"tracking_uri": tracking_uri(), "registered_model": registered_model}
    version = registered_version(client, registered_model, run_id) if run_id else None
    if version is None:
        out["alias"] = None
        out["note"] = (
            f"the candidate's training run ({run_id or 'unknown'}) has no version of registered "
            f"model {registered_model!r}: no alias was moved"
        )
    else:
        previous = None
        with contextlib.suppress(Exception):
            previous = client.get_model_version_by_alias(registered_model, alias).version
        client.set_registered_model_alias(registered_model, alias, version)
        client.set_model_version_tag(
            registered_model, version, "plantdx.promoted_at", evidence["decided_at"]
        )
        client.set_model_version_tag(
            registered_model, version, "plantdx.promotion_gate", evidence["gate"]["rule"]
        )
        out.update(
            {
                "alias": alias,
                "version": version,
                "previous_version": previous,
                "uri": f"models:/{registered_model}@{alias}",
            }
        )
    mlflow.set_experiment(PROMOTION_EXPERIMENT)
    with mlflow.start_run(run_name=f"promote version {evidence['candidate']}") as run:
        mlflow.log_params(
            {
                "champion": evidence["champion"],
                "candidate": evidence["candidate"],
                "gate": evidence["gate"]["rule"][:500],
                "registered_version": version or "",
            }
        )
        mlflow.log_metrics(_flat_metrics(evidence["comparison"]))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "promotion.json"
            path.write_text(json.dumps(evidence, indent=2, default=str) + "\n")
            mlflow.log_artifact(str(path))
        out["run_id"] = run.info.run_id
    return out


def _flat_metrics(comparison: dict[str, Any]) -> dict[str, float]:
    out = {"mcnemar_p": float(comparison["mcnemar_p"])}
    blocks = {"all": comparison["overall"], **comparison["sources"]}
    for source, block in blocks.items():
        for side, who in (("a", "champion"), ("b", "candidate")):
            for k in ("accuracy", "coverage", "selective_accuracy"):
                key = re.sub(r"[^\w\-./ ]", "_", f"{who}_{source}_{k}")
                out[key] = float(block[side][k])
    return out
