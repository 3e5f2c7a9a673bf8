"""`plantdx train` and `plantdx evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from plantdx.choices import Device, EvalSplit, Optimizer, Resize, Sampling, Scheduler, SelectOn
from plantdx.config import resolve

from .console import err, progress_bar, show_progress, state
from .options import overrides as _overrides


def train(
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="ImageFolder: one sub-folder of images per class. Repeat for several sources "
            "(lab and field photos): each is split and reported on its own.",
        ),
    ] = None,
    unknown_data: Annotated[
        list[str] | None,
        typer.Option(
            "--unknown-data",
            help="Photos of no class (other crops, any layout): they teach and calibrate the "
            "'uncertain' answer. Repeatable.",
        ),
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option(
            "--exclude",
            help="A data audit's exclude.txt (plantdx data audit): its photos are dropped before "
            "the split; a domains.tsv beside it splits mixed sources into NAME and NAME:lab.",
        ),
    ] = None,
    domains: Annotated[
        str | None,
        typer.Option(
            "--domains",
            help="A data audit's domains.tsv (default: the one beside --exclude's file).",
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Run directory for checkpoints and reports.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with any training option.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Architecture (see `plantdx architectures`).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Maximum number of epochs.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Square input size in pixels.")
    ] = None,
    eval_image_size: Annotated[
        int | None,
        typer.Option(
            "--eval-image-size",
            help="Size every evaluation runs at, and the model is served at (default: "
            "eval_scale, 1.2, times the training size).",
        ),
    ] = None,
    resize: Annotated[
        Resize | None,
        typer.Option("--resize", help="Non-square photo → square input."),
    ] = None,
    sampling: Annotated[
        Sampling | None,
        typer.Option(
            "--sampling",
            help="balanced: every source and class its share of each epoch; concat: as found.",
        ),
    ] = None,
    select_on: Annotated[
        SelectOn | None,
        typer.Option(
            "--select-on",
            help="Best epoch by this validation accuracy.",
        ),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights (offline)."),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Pretrained weights file or HF directory.")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="Minutes; plans epochs to fit.")
    ] = None,
    optimizer: Annotated[Optimizer | None, typer.Option("--optimizer")] = None,
    scheduler: Annotated[
        Scheduler | None, typer.Option("--scheduler", help="Learning-rate schedule.")
    ] = None,
    freeze_backbone: Annotated[
        bool | None, typer.Option("--freeze-backbone/--no-freeze-backbone")
    ] = None,
    unfreeze_after: Annotated[
        int | None, typer.Option("--unfreeze-after", help="Unfreeze after N epochs.")
    ] = None,
    freeze_blocks: Annotated[
        int | None,
        typer.Option(
            "--freeze-blocks",
            help="EfficientNets: keep the stem and first N blocks frozen (default 3); -1: none.",
        ),
    ] = None,
    device: Annotated[Device | None, typer.Option("--device", help="Where to run.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing")] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option("--warmup-epochs", help="Linear LR warm-up.")
    ] = None,
    early_stopping_patience: Annotated[
        int | None,
        typer.Option(
            "--early-stopping-patience", help="Stop after N epochs without a lower val_loss."
        ),
    ] = None,
    cache_images: Annotated[
        bool | None,
        typer.Option(
            "--cache-images/--no-cache-images", help="Decode once into memory, or per access."
        ),
    ] = None,
    amp: Annotated[
        bool | None, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last/--no-channels-last")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue RUN_DIR from its last.pt (other flags override)."),
    ] = None,
    register_as: Annotated[
        str | None,
        typer.Option("--register-as", help="MLflow registered model name (default plantdx)."),
    ] = None,
    register: Annotated[
        bool | None,
        typer.Option("--register/--no-register", help="Register the best model in MLflow."),
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Point this registry alias at the version.")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="MLflow experiment name.")
    ] = None,
    mlflow: Annotated[
        bool | None, typer.Option("--mlflow/--no-mlflow", help="Log to MLflow.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
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
        exclude=exclude,
        domains=domains,
        resize=resize,
        select_on=select_on,
        out=out,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        image_size=image_size,
        eval_image_size=eval_image_size,
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
    result = run_train(cfg, reporter=Reporter(console=err, quiet=quiet or state.quiet))
    if result.rank == 0:
        typer.echo(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, default=str))


def _one_or_many(values: list[str] | None) -> str | list[str] | None:
    """Repeated path options: one stays a plain path (as before), several a list."""
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


def evaluate(
    checkpoint: Annotated[
        str, typer.Argument(help="A checkpoint file, run directory or MLflow models:/ URI.")
    ],
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", help="ImageFolder to evaluate on; repeat for several (reported apart)."
        ),
    ] = None,
    unknown_data: Annotated[
        list[str] | None,
        typer.Option(
            "--unknown-data", help="Photos of no class: reports unknown_n and unknown_abstain_rate."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Abstention threshold instead of the checkpoint's."),
    ] = None,
    split: Annotated[
        EvalSplit,
        typer.Option("--split", help="all: every image in --data; test, val: the run's split."),
    ] = "all",
    out: Annotated[
        str | None,
        typer.Option(
            "--out", help="Folder for report.json and confusion_matrix.png (default eval-SPLIT)."
        ),
    ] = None,
    device: Annotated[Device | None, typer.Option("--device", help="Where to run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    crop_from_labels: Annotated[
        bool,
        typer.Option(
            "--crop-from-labels",
            help="Each photo's crop is known, from its label folder: its answer is chosen among "
            "that crop's classes, as the server does with a CROP (figures with the crop known).",
        ),
    ] = False,
    explain: Annotated[
        int,
        typer.Option(
            "--explain",
            min=0,
            help="Write heatmap overlays of up to N misclassified photos (explanations/ beside "
            "the confusion matrix).",
        ),
    ] = 0,
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
            crop_from_labels=crop_from_labels or None,
        ),
    )
    if cfg.split == "all" and not cfg.data and not cfg.unknown_data:
        raise typer.BadParameter("--data is required with --split all (or give --unknown-data)")
    if show_progress(as_json):
        with progress_bar() as bar:
            task = bar.add_task("evaluating photos", total=None)
            report = evaluate_checkpoint(
                cfg, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
    else:
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
    if report.get("crop_from_labels"):
        plain = report["without_crop"]
        typer.echo(
            f"with each photo's crop known (from its label); without it: accuracy "
            f"{plain['accuracy']:.4f}  coverage {plain['coverage']:.3f}  selective accuracy "
            f"{plain['selective_accuracy']:.4f}"
        )
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
