"""`plantdx repo`: inspect and validate a Triton model repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Inspect and validate a Triton model repository.", no_args_is_help=True)


def _summary(prov: dict[str, Any]) -> str:
    """One line of what a classifier version is and where it came from."""
    if not prov:
        return ""
    parts = [
        f"{prov.get('model_name', '?')}",
        f"{prov.get('format', '?')}/{prov.get('precision', '?')}",
    ]
    engines = (prov.get("engines") or {}).get("plans") or {}
    if engines:
        parts.append("sm" + ",".join(cc.replace(".", "") for cc in sorted(engines)))
    parity = prov.get("parity") or {}
    if "top1_agreement" in parity:
        parts.append(f"parity {parity['top1_agreement']:.0%}")
    gate = prov.get("precision_gate") or {}
    if "top1_agreement" in gate:
        parts.append(f"gate {gate['top1_agreement']:.1%}")
    decision = prov.get("decision")
    if isinstance(decision, dict):
        parts.append(
            f"T {float(decision.get('temperature', 1.0)):.3g} "
            f"abstain<{float(decision.get('threshold', 0.0)):.3g}"
        )
    acc = (prov.get("metrics") or {}).get("test_acc")
    if isinstance(acc, float):
        parts.append(f"test_acc {acc:.4f}")
    parts.append(f"exported {prov.get('exported_at', '?')}")
    if prov.get("mlflow_run_id"):
        parts.append(f"run {str(prov['mlflow_run_id'])[:12]}")
    parts.append(f"sha256 {str(prov.get('checkpoint_sha256', ''))[:12]}")
    return "  ".join(parts)


@app.command("list")
def list_repo(
    repository: Annotated[Path, typer.Argument(help="Model repository directory.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Everything, with full provenance.")
    ] = False,
) -> None:
    """Models, versions (* = served under the version policy), precision and provenance."""
    from plantdx.model_repository.repository import describe_repository

    doc = describe_repository(repository)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    if doc["target"]:
        typer.echo(
            f"{repository}: --target {doc['target']}, {doc['platform']} classifier, "
            f"{doc['kind']} instances, {doc['classes']} classes, {doc['image_size']} px"
        )
    for model, entries in sorted(doc["models"].items()):
        for v in entries:
            mark = "*" if v["served"] else " "
            typer.echo(f"{model:12s} {v['version']:3d}{mark} {_summary(v['provenance'])}".rstrip())


@app.command()
def validate(
    repository: Annotated[Path, typer.Argument(help="Model repository directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {ok, problems} as JSON.")] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="First roll back (or complete) an export or pin that was killed half way.",
        ),
    ] = False,
) -> None:
    """Check configs, files, labels, ensemble wiring, version pairs, plans and ONNX I/O.

    Exits non-zero with the reasons when anything would stop the ensemble from serving,
    including an export or pin that was interrupted (killed, power lost) half way: `--repair`
    rolls it back from the repository's journal (or completes it, when only its cleanup was
    left), then checks.
    """
    from plantdx.model_repository import journal
    from plantdx.model_repository.repository import validate_repository

    repaired = journal.repair(repository) if repair else None
    if repaired and not as_json:
        typer.echo(f"{repository}: {repaired}")
    problems = journal.publish_problems(repository) + validate_repository(repository)
    if as_json:
        doc: dict[str, Any] = {"ok": not problems, "problems": problems}
        if repair:
            doc["repaired"] = repaired
        typer.echo(json.dumps(doc, indent=2))
        if problems:
            raise typer.Exit(1)
        return
    if problems:
        for p in problems:
            typer.secho(f"  - {p}", fg=typer.colors.RED, err=True)
        typer.secho(f"{repository}: {len(problems)} problem(s)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{repository}: ok")


@app.command()
def pin(
    repository: Annotated[
        str, typer.Argument(help="Model repository: a folder or s3://[HOST:PORT/]BUCKET/PATH.")
    ],
    version: Annotated[int, typer.Argument(min=1, help="The version to serve.")],
) -> None:
    """Make VERSION the one version of preprocess and classifier that REPOSITORY serves.

    Writes `version_policy specific [VERSION]` into both configs: every server on the
    repository switches to it within its poll interval (`plantdx serve --poll-secs`, the
    container supervisor's `--poll-secs`) without a restart, and every server started on it
    serves it, until the next export or pin. A folder is written through the repository's
    journal (checked, all or nothing); on S3 the two configs are written one after the other
    and a follower waits until both name the same version.
    """
    if repository.startswith("s3://"):
        from plantdx.model_repository.s3 import S3Location

        served = ", ".join(map(str, S3Location.parse(repository).pin(version)))
    else:
        from plantdx.model_repository.served import pin_served_version, served_by_policy

        pin_served_version(Path(repository), version)
        served = ", ".join(map(str, served_by_policy(repository)))
    typer.echo(
        f"{repository}: serves version {served} (running servers follow within their poll "
        "interval; servers started on it serve it)"
    )
