"""Progress of evaluate, export and bench serve: the stages report through callbacks, the CLI
draws them on the shared stderr console (a terminal only)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from plantdx.cli import console

from helpers.export import tiny_checkpoint


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    fake = Console(file=out, force_terminal=True, color_system=None, width=100)
    monkeypatch.setattr(console, "err", fake)
    monkeypatch.setattr(console.state, "quiet", False)
    return out


def test_steps_print_each_finished_step(terminal: io.StringIO) -> None:
    assert console.show_progress()
    assert not console.show_progress(as_json=True)
    with console.steps(True) as step:
        step("exporting ONNX")
        step("publishing the version")
    text = terminal.getvalue()
    assert "✓ exporting ONNX" in text and "✓ publishing the version" in text


def test_a_failed_step_is_not_ticked(terminal: io.StringIO) -> None:
    with pytest.raises(RuntimeError), console.steps(True) as step:
        step("parity")
        raise RuntimeError("parity failed")
    assert "✓ parity" not in terminal.getvalue()


def test_quiet_and_non_terminals_draw_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "err", Console(file=io.StringIO(), force_terminal=True))
    monkeypatch.setattr(console.state, "quiet", True)
    assert not console.show_progress()
    monkeypatch.setattr(console.state, "quiet", False)
    monkeypatch.setattr(console, "err", Console(file=io.StringIO(), force_terminal=False))
    assert not console.show_progress()


def test_export_reports_its_steps_in_order(tmp_path: Path) -> None:
    from plantdx.export import ExportConfig, export

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    names: list[str] = []
    export(ExportConfig(source=str(ckpt), repository=str(tmp_path / "repo")), on_step=names.append)
    assert names[0].startswith("loading the checkpoint")
    assert names[1] == "exporting ONNX" and names[2].startswith("parity with PyTorch")
    assert names[-1] == "publishing the version"
    assert not any("TensorRT" in n for n in names)


def test_evaluate_reports_every_photo(tmp_path: Path, synth_dir: Path) -> None:
    from plantdx.training import EvaluateConfig, evaluate_checkpoint

    classes = tuple(sorted(p.name for p in synth_dir.iterdir() if p.is_dir()))
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", classes=classes)
    calls: list[tuple[int, int]] = []
    report = evaluate_checkpoint(
        EvaluateConfig(checkpoint=str(ckpt), data=str(synth_dir), out=str(tmp_path / "eval")),
        progress=lambda done, total: calls.append((done, total)),
    )
    n = report["n"]
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_bench_serve_level_clock(terminal: io.StringIO) -> None:
    from plantdx.bench.loadgen import LevelResult, ServeBenchConfig
    from plantdx.cli.bench_serve import _level_clock

    cfg = ServeBenchConfig(duration_s=20.0, warmup_s=5.0)
    with _level_clock(cfg, enabled=True) as clock:
        clock.start(8)
        assert clock.progress is not None
        assert clock.progress.tasks[0].total == 25.0
        clock.progress.refresh()
        assert "0/25 s" in terminal.getvalue()
        clock.done(LevelResult(8, "http", "async", 1.0, 10, 0, 10.0, 5.0, 6.0, 7.0, 5.5, 3, 0.2))
        assert not clock.progress.tasks
