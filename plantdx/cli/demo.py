"""`plantdx demo`: the whole product on one machine, offline, in a few minutes.

Synthetic leaves (or --data) → fine-tune EfficientNet-Lite0 → evaluate → ONNX export into a
fresh model repository → the real Triton server → predictions through tritonclient → metrics.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

SHOWN_METRICS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "plantdx_predictions_total",
    "plantdx_prediction_confidence_count",
    "plantdx_abstentions_total",
)


def _step(n: int, text: str) -> None:
    console.rule(f"[bold green]{n}/6 {text}")


def scrape(url: str, names: tuple[str, ...] = SHOWN_METRICS) -> list[str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return [
        line
        for line in text.splitlines()
        if line
        and not line.startswith("#")
        and line.split("{")[0].split(" ")[0] in names
        and not line.rstrip().endswith(" 0")
    ]


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where everything is written.")] = Path(
        "demo-output"
    ),
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Use this ImageFolder instead of synthetic leaves."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="Architecture to fine-tune.")
    ] = "efficientnet_lite0",
    image_size: Annotated[
        int,
        typer.Option(
            "--image-size", help="Training size (px); evaluated and served at 1.2x (eval_scale)."
        ),
    ] = 128,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs.")] = 6,
    time_budget: Annotated[
        float, typer.Option("--time-budget", help="Training minutes at most.")
    ] = 3.0,
    per_class: Annotated[int, typer.Option("--per-class", help="Synthetic images per class.")] = 60,
    http_port: Annotated[int, typer.Option("--http-port")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port")] = 8002,
    show: Annotated[int, typer.Option("--show", help="Images to classify through Triton.")] = 8,
) -> None:
    """Run the end-to-end job: data → fine-tune → evaluate → export → Triton → predictions."""
    from plantdx.client import PlantDxClient
    from plantdx.data import SPLIT_FILENAME, load_split
    from plantdx.export import ExportConfig, export
    from plantdx.serving import TritonServer
    from plantdx.synth import generate_dataset
    from plantdx.training import EvaluateConfig, TrainConfig, evaluate_checkpoint, train

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    if data is None:
        _step(1, "generating a synthetic leaf dataset (plantdx data synth)")
        data = workdir / "leaves"
        if data.exists():
            shutil.rmtree(data)
        counts = generate_dataset(data, per_class=per_class, size=256, seed=0)
        console.print(f"{sum(counts.values())} images, {len(counts)} classes in {data}")
    else:
        _step(1, f"using the ImageFolder {data}")

    _step(2, f"fine-tuning {model} (at most {time_budget:g} min)")
    run_dir = workdir / "run"
    cfg = TrainConfig(
        data=str(data),
        out=str(run_dir),
        model=model,
        image_size=image_size,
        epochs=epochs,
        time_budget_min=time_budget,
        lr=2e-3,
        warmup_epochs=0.2,
    )
    result = train(cfg)

    _step(3, "evaluating the best checkpoint on the held-out test split")
    report = evaluate_checkpoint(
        EvaluateConfig(
            checkpoint=str(result.best_checkpoint),
            data=str(data),
            split="test",
            out=str(run_dir / "eval"),
        )
    )
    console.print(
        f"test accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f} on "
        f"{report['n']} images; confusion matrix: {report.get('confusion_matrix_png')}"
    )

    _step(4, "exporting ONNX into a fresh Triton model repository")
    repo = workdir / "model_repository"
    if repo.exists():
        shutil.rmtree(repo)
    exported = export(ExportConfig(source=str(result.best_checkpoint), repository=str(repo)))
    p = exported.parity
    console.print(
        f"{repo}/classifier/{exported.version}: parity with PyTorch on {p['n_images']} images "
        f"top-1 {p['top1_agreement']:.0%}, max |Δp| {p['max_abs_diff_probs']:.1e}"
    )

    _step(5, "starting the Triton server and classifying through tritonclient")
    _, split = load_split(run_dir / SPLIT_FILENAME)
    test_images = [s.path for s in split["test"]]
    step = max(1, len(test_images) // max(show, 1))
    chosen = test_images[::step][:show]
    server = TritonServer(
        repository=repo,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_file=workdir / "triton.log",
    )
    with server:
        console.print(f"Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}")
        table = Table(title="predictions served by Triton (ensemble plantdx)")
        for col in ("image", "true class", "predicted", "confidence", "via"):
            table.add_column(col)
        correct = 0
        for i, path in enumerate(chosen):
            protocol = "grpc" if i % 2 else "http"
            url = server.grpc_url if protocol == "grpc" else server.http_url
            with PlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
                pred = client.predict(path, top_k=3)
            truth = path.parent.name
            correct += pred.label == truth
            mark = "[green]" if pred.label == truth else "[red]"
            shown = f"{pred.label} (uncertain)" if pred.uncertain else pred.label
            table.add_row(path.name, truth, f"{mark}{shown}", f"{pred.confidence:.3f}", protocol)
        console.print(table)
        console.print(f"{correct}/{len(chosen)} correct")

        _step(6, "Triton metrics (scraped from the metrics port)")
        time.sleep(1.2)  # Triton refreshes summaries once a second.
        for line in scrape(server.metrics_url):
            console.print(f"  {line}")
    console.print(
        f"[bold]done in {time.perf_counter() - started:.0f} s.[/bold] Serve it again with:\n"
        f"  plantdx serve --repository {repo}\n  plantdx predict --url localhost:{http_port} IMAGE"
    )
    summary = {
        "test_accuracy": report["accuracy"],
        "served_correct": correct,
        "served_total": len(chosen),
        "repository": str(repo),
        "seconds": time.perf_counter() - started,
    }
    (workdir / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command(help=demo.__doc__)(demo)
