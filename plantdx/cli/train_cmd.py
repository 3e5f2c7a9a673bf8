"""`plantdx train` and `plantdx evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from plantdx.config import resolve

from .options import overrides as _overrides


def train(
    data: list[str] = typer.Option(
        None,
        "--data",
        help="ImageFolder: one sub-folder of images per class. Repeat for several sources "
        "(lab and field photos): each is split and reported on its own.",
    ),
    unknown_data: list[str] = typer.Option(
        None,
        "--unknown-data",
        help="Photos of no class (other crops, any layout): they teach and calibrate the "
        "'uncertain' answer. Repeatable.",
    ),
    out: str = typer.Option(None, "--out", help="Run directory for checkpoints and reports."),
    config: Path = typer.Option(None, "--config", help="YAML file with any training option."),
    model: str = typer.Option(None, "--model", help="Architecture (see `plantdx models list`)."),
    epochs: int = typer.Option(None, "--epochs", help="Maximum number of epochs."),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    image_size: int = typer.Option(None, "--image-size", help="Square input size in pixels."),
    resize: str = typer.Option(
        None, "--resize", help="Non-square photo → square input: squash | crop | pad."
    ),
    sampling: str = typer.Option(
        None,
        "--sampling",
        help="balanced (every source and class its share of each epoch) | concat.",
    ),
    select_on: str = typer.Option(
        None,
        "--select-on",
        help="Best epoch by mean_source_acc | min_source_acc | pooled_acc (validation).",
    ),
    pretrained: bool = typer.Option(
        None, "--pretrained/--no-pretrained", help="Start from ImageNet weights (offline)."
    ),
    weights: str = typer.Option(None, "--weights", help="Pretrained weights file or HF directory."),
    time_budget: float = typer.Option(None, "--time-budget", help="Minutes; plans epochs to fit."),
    optimizer: str = typer.Option(None, "--optimizer", help="adam | adamw | sgd"),
    scheduler: str = typer.Option(None, "--scheduler", help="cosine | step | none"),
    freeze_backbone: bool = typer.Option(None, "--freeze-backbone/--no-freeze-backbone"),
    unfreeze_after: int = typer.Option(None, "--unfreeze-after", help="Unfreeze after N epochs."),
    freeze_blocks: int = typer.Option(
        None,
        "--freeze-blocks",
        help="EfficientNets: keep the stem and first N blocks frozen (default 3); -1: none.",
    ),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda"),
    seed: int = typer.Option(None, "--seed"),
    num_workers: int = typer.Option(None, "--num-workers"),
    weight_decay: float = typer.Option(None, "--weight-decay"),
    label_smoothing: float = typer.Option(None, "--label-smoothing"),
    warmup_epochs: float = typer.Option(None, "--warmup-epochs", help="Linear LR warm-up."),
    early_stopping_patience: int = typer.Option(
        None, "--early-stopping-patience", help="Stop after N epochs without a lower val_loss."
    ),
    cache_images: bool = typer.Option(
        None, "--cache-images/--no-cache-images", help="Decode once into memory, or per access."
    ),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA."),
    channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last"),
    resume: str = typer.Option(
        None, "--resume", help="Continue RUN_DIR from its last.pt (other flags override)."
    ),
    register_as: str = typer.Option(
        None, "--register-as", help="MLflow registered model name (default plantdx)."
    ),
    register: bool = typer.Option(
        None, "--register/--no-register", help="Register the best model in MLflow."
    ),
    alias: str = typer.Option(None, "--alias", help="Point this registry alias at the version."),
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment name."),
    mlflow: bool = typer.Option(None, "--mlflow/--no-mlflow", help="Log to MLflow."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Fine-tune a model on an ImageFolder; writes best.pt, last.pt and metrics.json.

    Under `torchrun --nproc_per_node=N` it trains with DistributedDataParallel unchanged.
    """
    from plantdx.training import TrainConfig, resume_config
    from plantdx.training import train as run_train
    from plantdx.training.progress import Reporter

    overrides = _overrides(
        data=_one_or_many(data),
        unknown_data=_one_or_many(unknown_data),
        resize=resize,
        select_on=select_on,
        out=out,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        image_size=image_size,
        pretrained=pretrained,
        weights=weights,
        time_budget_min=time_budget,
        optimizer=optimizer,
        scheduler=scheduler,
        freeze_backbone=freeze_backbone,
        unfreeze_after=unfreeze_after,
        freeze_blocks=freeze_blocks,
        device=device,
        seed=seed,
        num_workers=num_workers,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        warmup_epochs=warmup_epochs,
        early_stopping_patience=early_stopping_patience,
        cache_images=cache_images,
        amp=amp,
        channels_last=channels_last,
        register_as=register_as,
        register=register,
        register_alias=alias,
        experiment=experiment,
        mlflow=mlflow,
    )
    if sampling is not None:
        overrides["sampling"] = {"mode": sampling}
    if resume:
        if config is not None:
            raise typer.BadParameter("--resume uses the run's config.yaml; drop --config")
        cfg = resume_config(resume, overrides)
    else:
        cfg = resolve(TrainConfig, config, overrides)
    result = run_train(cfg, reporter=Reporter(quiet=quiet))
    if result.rank == 0:
        typer.echo(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, default=str))


def _one_or_many(values: list[str] | None) -> str | list[str] | None:
    """Repeated path options: one stays a plain path (as before), several a list."""
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


def evaluate(
    checkpoint: str = typer.Argument(
        ..., help="A checkpoint file, run directory or MLflow models:/ URI."
    ),
    data: list[str] = typer.Option(
        None, "--data", help="ImageFolder to evaluate on; repeat for several (reported apart)."
    ),
    unknown_data: list[str] = typer.Option(
        None,
        "--unknown-data",
        help="Photos of no class: reports unknown_n and unknown_abstain_rate.",
    ),
    threshold: float = typer.Option(
        None, "--threshold", help="Abstention threshold instead of the checkpoint's."
    ),
    split: str = typer.Option("all", "--split", help="all (every image in --data) | test | val"),
    out: str = typer.Option(
        None, "--out", help="Folder for report.json and confusion_matrix.png (default eval-SPLIT)."
    ),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    explain: int = typer.Option(
        0,
        "--explain",
        min=0,
        help="Write heatmap overlays of up to N misclassified photos (explanations/ beside "
        "the confusion matrix).",
    ),
) -> None:
    """Accuracy, macro-F1, per-class report, confusion matrix and misclassified files."""
    from plantdx.training import EvaluateConfig, evaluate_checkpoint

    cfg = resolve(
        EvaluateConfig,
        None,
        _overrides(
            checkpoint=checkpoint,
            data=_one_or_many(data),
            unknown_data=_one_or_many(unknown_data),
            threshold=threshold,
            split=split,
            out=out,
            device=device,
            explain=explain or None,
        ),
    )
    if cfg.split == "all" and not cfg.data and not cfg.unknown_data:
        raise typer.BadParameter("--data is required with --split all (or give --unknown-data)")
    report = evaluate_checkpoint(cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    if "unknown_n" in report:
        typer.echo(
            f"unknown photos: {report['unknown_abstain_rate']:.1%} of {report['unknown_n']} "
            f"answered 'uncertain' (threshold {report['threshold']:.3f})"
        )
    if "accuracy" not in report:
        typer.echo(f"report: {report['report_json']}")
        return
    for name, row in (report.get("sources") or {}).items():
        typer.echo(
            f"{name}: accuracy {row['accuracy']:.4f}  coverage {row['coverage']:.3f}  "
            f"selective accuracy {row['selective_accuracy']:.4f}  n={row['n']}"
        )
    table = Table(
        title=f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
        f"coverage {report['coverage']:.3f}  selective accuracy "
        f"{report['selective_accuracy']:.4f}  n={report['n']}"
    )
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in report["per_class"].items():
        table.add_row(
            name, *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1")), str(row["support"])
        )
    Console().print(table)
    wrong = report["misclassified"]
    typer.echo(f"{len(wrong)} misclassified file(s), most confident first:")
    for row in wrong[:10]:
        typer.echo(f"  {row['file']}: {row['true']} → {row['predicted']} ({row['confidence']:.2f})")
    if report["skipped"]:
        typer.echo(f"{len(report['skipped'])} unreadable or non-image file(s) skipped")
    typer.echo(
        f"report: {report['report_json']}, confusion matrix: {report['confusion_matrix_png']}"
    )


def register(app: typer.Typer) -> None:
    app.command(help=train.__doc__)(train)
    app.command(help=evaluate.__doc__)(evaluate)
