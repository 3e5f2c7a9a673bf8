"""The training pipeline: config, optimisation, freezing, resume, crashes, bad files, DDP, MLflow.

Everything runs the real `train()` on the synthetic leaves with the tiny CNN at 32 px, so each
run takes seconds on a CPU.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from plantdx.checkpoint import load_checkpoint
from plantdx.exceptions import ConfigError, DatasetError
from plantdx.training import TrainConfig, resume_config, train
from plantdx.training.build import build_optimizer, build_scheduler
from plantdx.training.freezing import backbone_frozen, set_backbone_frozen
from plantdx.training.progress import Reporter

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def tiny(tmp_path: Path, data: Path, name: str = "run", **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "data": str(data),
        "out": str(tmp_path / name),
        "model": "test_tiny",
        "pretrained": False,
        "image_size": 32,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.01,
        "mlflow": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """`plantdx ARGS` in-process through the real entry point: (exit code, stdout, stderr)."""
    from plantdx.cli import main

    monkeypatch.setattr(sys, "argv", ["plantdx", *args])
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code or 0, captured.out, captured.err


class Snapshots(Reporter):
    """A quiet reporter that copies last.pt's weights at the end of every epoch."""

    def __init__(self, run_dir: Path, stop_after: int | None = None) -> None:
        super().__init__(quiet=True)
        self.run_dir = run_dir
        self.stop_after = stop_after
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def epoch(self, row: dict[str, Any]) -> None:
        self.states[int(row["epoch"])] = load_checkpoint(self.run_dir / "last.pt").state_dict
        if self.stop_after == row["epoch"]:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after this epoch


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in r.items() if k != "train_img_per_s"} for r in rows]


# ---------------------------------------------------------------------------------------------
# Optimisation


def test_optimizers_and_weight_decay_groups() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        opt = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.05))  # type: ignore[arg-type]
        assert type(opt) is cls
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        assert [p.ndim for p in decay["params"]] == [2]  # only the weight matrix decays
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8


def _lrs(cfg: TrainConfig, steps: int, epochs: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps, epochs)
    out = []
    for _ in range(steps * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedulers_warm_up_then_cosine_or_step() -> None:
    cosine = _lrs(TrainConfig(lr=1.0, scheduler="cosine", warmup_epochs=1.0), 4, 3)
    assert cosine[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cosine[4] == 1.0  # the cosine starts where the warm-up ends
    assert cosine[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 1 / 8)))
    assert all(a >= b for a, b in itertools.pairwise(cosine[3:]))
    assert cosine[-1] < 0.05
    step = _lrs(
        TrainConfig(lr=1.0, scheduler="step", warmup_epochs=0, step_size=1, gamma=0.5), 2, 3
    )
    assert step == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    flat = _lrs(TrainConfig(lr=0.3, scheduler="none", warmup_epochs=0), 3, 2)
    assert flat == pytest.approx([0.3] * 6)


# ---------------------------------------------------------------------------------------------
# Config: YAML, flags, and what the run keeps


def test_yaml_config_then_flags_saved_in_run_and_checkpoint(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "data": str(synth_dir),
                "model": "test_tiny",
                "pretrained": False,
                "image_size": 32,
                "epochs": 1,
                "lr": 0.5,
                "optimizer": "sgd",
                "scheduler": "step",
                "label_smoothing": 0.2,
                "early_stopping_patience": 4,
                "model_kwargs": {"width": 4},
                "augment": {"hflip": 0.0},
                "mlflow": False,
            }
        )
    )
    out = tmp_path / "run"
    code, stdout, err = cli(
        monkeypatch, capsys, "train", "--config", str(cfg_file), "--lr", "0.02", "--out", str(out)
    )
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.02  # the flag beats the file
    assert saved["optimizer"] == "sgd" and saved["label_smoothing"] == 0.2
    assert saved["early_stopping_patience"] == 4 and saved["augment"]["hflip"] == 0.0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.config == saved
    assert ckpt.model_kwargs == {"width": 4}
    assert ckpt.state_dict["classifier.weight"].shape == (6, 8)  # width 4 → 8 features
    assert json.loads(stdout)["run_dir"] == str(out)
    bad = tmp_path / "bad.yaml"
    bad.write_text("early_stoping_patience: 3\n")
    code, _, err = cli(monkeypatch, capsys, "train", "--config", str(bad), "--data", "x")
    assert code == 2 and "early_stoping_patience" in err and "known options" in err


# ---------------------------------------------------------------------------------------------
# Freezing


def test_freeze_backbone_then_unfreeze(tmp_path: Path, synth_dir: Path) -> None:
    cfg = tiny(tmp_path, synth_dir, epochs=3, freeze_backbone=True, unfreeze_after=2)
    snaps = Snapshots(Path(cfg.out))
    train(cfg, reporter=snaps)
    e1, e2, e3 = snaps.states[1], snaps.states[2], snaps.states[3]
    backbone = [k for k in e1 if k.startswith("features.")]
    head = [k for k in e1 if k.startswith("classifier.")]
    running = [k for k in backbone if "running_" in k]
    assert running, "the tiny CNN has BatchNorm"
    # Epochs 1-2: only the head trains, and frozen BatchNorm keeps its statistics.
    assert all(torch.equal(e1[k], e2[k]) for k in backbone)
    assert any(not torch.equal(e1[k], e2[k]) for k in head)
    # Epoch 3: everything trains, BatchNorm statistics move again.
    assert any(not torch.equal(e2[k], e3[k]) for k in backbone if "weight" in k)
    assert any(not torch.equal(e2[k], e3[k]) for k in running)


def test_backbone_frozen_schedule_and_trainable_set() -> None:
    from plantdx.models import create_model

    assert not backbone_frozen(TrainConfig(), 1)
    assert backbone_frozen(TrainConfig(freeze_backbone=True), 99)
    assert [backbone_frozen(TrainConfig(unfreeze_after=2), e) for e in (1, 2, 3)] == [
        True,
        True,
        False,
    ]
    model = create_model("test_tiny", num_classes=3)
    norms = set_backbone_frozen(model, "test_tiny", True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "classifier.weight",
        "classifier.bias",
    ]
    assert len(norms) == 2
    assert set_backbone_frozen(model, "test_tiny", False) == []
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Early stopping


def test_early_stopping_on_val_loss(tmp_path: Path, synth_dir: Path) -> None:
    # A frozen backbone and lr 0: val_loss cannot improve after the first epoch.
    cfg = tiny(
        tmp_path, synth_dir, epochs=10, lr=0.0, freeze_backbone=True, early_stopping_patience=2
    )
    metrics = train(cfg, reporter=Reporter(quiet=True)).metrics
    assert metrics["stopped_early"] is True
    assert metrics["epochs"] == 3 and metrics["planned_epochs"] == 10
    assert len(history(Path(cfg.out))) == 3
    more = train(tiny(tmp_path, synth_dir, "more", epochs=4), reporter=Reporter(quiet=True))
    assert more.metrics["stopped_early"] is False and more.metrics["epochs"] == 4


# ---------------------------------------------------------------------------------------------
# Resume


def test_two_epochs_plus_resume_equals_three(tmp_path: Path, synth_dir: Path) -> None:
    kw: dict[str, Any] = {"scheduler": "step", "step_size": 1, "gamma": 0.7}
    full = train(tiny(tmp_path, synth_dir, "full", epochs=3, **kw), reporter=Reporter(quiet=True))
    part = tiny(tmp_path, synth_dir, "part", epochs=2, **kw)
    train(part, reporter=Reporter(quiet=True))
    resumed = train(resume_config(part.out, {"epochs": 3}), reporter=Reporter(quiet=True))
    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(resumed.run_dir / "last.pt")
    assert same_weights(a.state_dict, b.state_dict)
    assert history(full.run_dir) == history(resumed.run_dir)
    assert a.train_state["optimizer"]["state"].keys() == b.train_state["optimizer"]["state"].keys()
    for k, s in a.train_state["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg"], b.train_state["optimizer"]["state"][k]["exp_avg"])
    assert full.metrics["test_acc"] == resumed.metrics["test_acc"]


def test_interrupted_cosine_run_resumes_exactly_with_mlflow(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    full = train(tiny(tmp_path, synth_dir, "full", epochs=3), reporter=Reporter(quiet=True))
    cfg = tiny(tmp_path, synth_dir, "cut", epochs=3, mlflow=True, register=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=Snapshots(Path(cfg.out), stop_after=2))
    interrupted = load_checkpoint(Path(cfg.out) / "last.pt")
    assert interrupted.train_state["loop"]["epoch"] == 2
    client = mlflow.MlflowClient(tracking_uri=store)
    assert client.get_run(str(interrupted.mlflow_run_id)).info.status == "FAILED"

    resumed = train(resume_config(cfg.out), reporter=Reporter(quiet=True))
    a = load_checkpoint(full.run_dir / "last.pt").state_dict
    b = load_checkpoint(resumed.run_dir / "last.pt").state_dict
    assert same_weights(a, b)
    assert history(full.run_dir) == history(resumed.run_dir)
    run = client.get_run(resumed.metrics["mlflow_run_id"])
    assert run.info.run_id == interrupted.mlflow_run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]


def test_resume_after_the_time_budget_replans_continues_the_same_plan(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget re-plans 5 epochs down to 3 after epoch 1. last.pt must hold that plan, so a
    run stopped after epoch 1 and resumed ends exactly like the unbroken one."""
    train_module = importlib.import_module("plantdx.training.train")
    budget_module = importlib.import_module("plantdx.training.budget")

    replanned: list[int] = []

    def replan(cfg: TrainConfig, done: int, epoch_s: list[float], spent_s: float) -> int:
        replanned.append(done)  # as if the measured epochs were slower than estimated
        return 3

    lrs: list[float] = []
    real_epoch = train_module.train_one_epoch

    def recording_epoch(*args: Any, **kwargs: Any) -> Any:
        optimizer, on_batch = args[3], kwargs["on_batch"]

        def step(n: int, loss: float) -> None:
            lrs.append(optimizer.param_groups[0]["lr"])  # after this step's scheduler.step()
            on_batch(n, loss)

        return real_epoch(*args, **{**kwargs, "on_batch": step})

    monkeypatch.setattr(budget_module, "replan_epochs", replan)
    monkeypatch.setattr(train_module, "train_one_epoch", recording_epoch)
    kw: dict[str, Any] = {"epochs": 5, "time_budget_min": 30.0, "device": "cpu"}
    full = train(tiny(tmp_path, synth_dir, "full", **kw), reporter=Reporter(quiet=True))
    full_lrs, lrs[:] = list(lrs), []
    assert replanned and full.metrics["epochs"] == full.metrics["planned_epochs"] == 3

    cut = tiny(tmp_path, synth_dir, "cut", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cut, reporter=Snapshots(Path(cut.out), stop_after=1))
    saved = load_checkpoint(Path(cut.out) / "last.pt").train_state
    assert (
        saved["loop"]["epoch"] == 1 and saved["loop"]["epochs"] == 3
    )  # the plan after re-planning
    resumed = train(resume_config(cut.out), reporter=Reporter(quiet=True))
    assert resumed.metrics["epochs"] == resumed.metrics["planned_epochs"] == 3
    assert lrs == full_lrs  # the same squeezed cosine, step for step
    assert history(full.run_dir) == history(resumed.run_dir)
    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(resumed.run_dir / "last.pt")
    assert same_weights(a.state_dict, b.state_dict)
    assert a.train_state["scheduler"]["last_epoch"] == b.train_state["scheduler"]["last_epoch"]


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, synth_dir: Path) -> None:
    cfg = tiny(tmp_path, synth_dir, epochs=1)
    train(cfg, reporter=Reporter(quiet=True))
    with pytest.raises(ConfigError, match="already finished 1 epoch"):
        train(resume_config(cfg.out), reporter=Reporter(quiet=True))
    with pytest.raises(ConfigError, match="image_size"):
        train(resume_config(cfg.out, {"image_size": 48, "epochs": 2}))
    with pytest.raises(ConfigError, match=r"no last\.pt"):
        resume_config(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------------
# Time budget: the step-time measurement before training


def test_measuring_the_step_time_leaves_model_and_optimizer_as_they_were() -> None:
    from plantdx.models import create_model
    from plantdx.training.budget import measure_step_time
    from plantdx.training.build import place_model
    from plantdx.training.freezing import freeze_stem

    torch.manual_seed(0)
    cfg = TrainConfig(model="efficientnet_lite0", pretrained=False, image_size=32)
    model = place_model(
        create_model(cfg.model, num_classes=3, image_size=32), torch.device("cpu"), True
    )
    frozen = freeze_stem(model, cfg.model, cfg.freeze_blocks)
    assert frozen  # the stem and first blocks: their BatchNorm statistics must not move
    optimizer = build_optimizer(model, cfg)
    criterion = torch.nn.CrossEntropyLoss()
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    loader = torch.utils.data.DataLoader(
        data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    images, targets = next(iter(loader))
    criterion(model(images), targets).backward()
    optimizer.step()  # the optimizer has state, the parameters have gradients
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng, loader_rng = torch.get_rng_state(), loader.generator.get_state()  # type: ignore[union-attr]

    seconds = measure_step_time(
        model, loader, criterion, torch.device("cpu"), True, optimizer=optimizer, frozen=frozen
    )
    assert seconds > 0
    after = model.state_dict()
    assert after.keys() == state.keys()
    moved = [k for k in state if not torch.equal(state[k], after[k])]
    assert moved == []  # weights, running statistics, num_batches_tracked
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    now = optimizer.state_dict()
    assert now["param_groups"] == opt_state["param_groups"]
    for k, s in opt_state["state"].items():
        assert all(torch.equal(v, now["state"][k][name]) for name, v in s.items())
    assert not model.training  # modes as they were
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(loader.generator.get_state(), loader_rng)  # type: ignore[union-attr]


def test_time_budget_measurement_does_not_change_training(tmp_path: Path, synth_dir: Path) -> None:
    """On a CPU the budget measures a few steps first; the run must train exactly as without."""
    budget = train(
        tiny(tmp_path, synth_dir, "budget", device="cpu", time_budget_min=30.0),
        reporter=Reporter(quiet=True),
    )
    none = train(
        tiny(tmp_path, synth_dir, "none", device="cpu", time_budget_min=None),
        reporter=Reporter(quiet=True),
    )
    assert budget.metrics["planned_epochs"] == none.metrics["planned_epochs"] == 2
    a = load_checkpoint(budget.run_dir / "last.pt").state_dict
    b = load_checkpoint(none.run_dir / "last.pt").state_dict
    assert same_weights(a, b)
    assert history(budget.run_dir) == history(none.run_dir)


# ---------------------------------------------------------------------------------------------
# Crashes: checkpoints are written atomically


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PLANTDX_LOG": "WARNING"}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [PYTHON, "-m", "plantdx", "train", *args], stdout=fh, stderr=fh, env=env, cwd=ROOT
        )


def _kill_when(proc: subprocess.Popen[bytes], ready: Any, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        why = ready()
        if why:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return str(why)
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before the kill")
        time.sleep(0.001)
    proc.kill()
    raise AssertionError("the kill moment never came")


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_loadable_checkpoints(tmp_path: Path, synth_dir: Path) -> None:
    """kill -9 while a checkpoint is being written, and between writes; then resume."""
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    # MobileNetV3-small: last.pt is ~18 MB, so a write takes long enough to be hit.
    args = [
        "--data",
        str(synth_dir),
        "--model",
        "mobilenet_v3_small",
        "--no-pretrained",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "40",
        "--no-mlflow",
        "--quiet",
    ]

    def temp_file(kind: str) -> Any:
        """While a new temporary checkpoint exists (one left by an earlier kill does not count)."""
        stale = {p.name for p in run.glob(".*.tmp")}

        def seen() -> str | None:
            if not (run / "last.pt").exists():
                return None
            hits = [p.name for p in run.glob(f".{kind}.*.tmp") if p.name not in stale]
            return f"during the write of {hits[0]}" if hits else None

        return seen

    def after_new_last(delay: float) -> Any:
        before = (run / "last.pt").stat().st_mtime_ns
        armed: list[float] = []

        def seen() -> str | None:
            if not armed and (run / "last.pt").stat().st_mtime_ns != before:
                armed.append(time.monotonic())
            if armed and time.monotonic() - armed[0] >= delay:
                return f"{delay} s after a new last.pt"
            return None

        return seen

    epochs_seen = []
    moments = [
        ("fresh", lambda: temp_file("last.pt")),
        ("resume", lambda: temp_file("*")),
        ("resume", lambda: after_new_last(0.45)),
    ]
    for how, trigger in moments:
        ready = trigger()
        proc = _start([*args, "--out", str(run)] if how == "fresh" else ["--resume", str(run)], log)
        why = _kill_when(proc, ready)
        print(f"killed {how} run {why}; left behind: {[p.name for p in run.glob('.*.tmp')]}")
        for name in ("best.pt", "last.pt"):
            ckpt = load_checkpoint(run / name)  # never torn, whatever the moment
            assert ckpt.model_name == "mobilenet_v3_small", (name, why)
        epochs_seen.append(load_checkpoint(run / "last.pt").train_state["loop"]["epoch"])
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] >= 2
    last = epochs_seen[-1]
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "plantdx",
            "train",
            "--resume",
            str(run),
            "--epochs",
            str(last + 1),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["epochs"] == last + 1
    assert not list(run.glob(".*.tmp"))  # stale temp files of the killed runs are gone


# ---------------------------------------------------------------------------------------------
# Bad data


def _copy_with_bad_files(src: Path, dst: Path) -> list[str]:
    shutil.copytree(src, dst)
    good = next((dst / "Leaf___rust").glob("*.jpg")).read_bytes()
    bad = {
        "Leaf___rust/truncated.jpg": good[: len(good) // 2],
        "Leaf___blight/garbage.jpg": os.urandom(3000),
        "Leaf___mosaic/notes.png": b"these are field notes, not a picture\n",
        "Leaf___healthy/empty.jpg": b"",
        # Not images by name: skipped and listed like the others.
        "Leaf___rust/notes.txt": b"field notes\n",
        "Leaf___blight/Thumbs.db": b"\0" * 64,
    }
    for rel, data in bad.items():
        (dst / rel).write_bytes(data)
    (dst / "Leaf___rust" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, not listed
    return sorted(bad)


def test_unreadable_files_are_skipped_listed_and_logged(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import mlflow

    data = tmp_path / "leaves"
    bad = _copy_with_bad_files(synth_dir, data)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("COLUMNS", "400")  # one warning line, names unbroken
    out = tmp_path / "run"
    args = ["--model", "test_tiny", "--no-pretrained", "--image-size", "32", "--epochs", "1"]
    code, stdout, err = cli(
        monkeypatch, capsys, "train", "--data", str(data), "--out", str(out), *args, "--no-register"
    )
    assert code == 0, err
    assert "skipped 6 unreadable or non-image file(s)" in err
    for rel in bad:
        assert Path(rel).name in err
    assert ".DS_Store" not in err
    listed = json.loads((out / "skipped.json").read_text())
    assert sorted(str(Path(p).relative_to(data)) for p, _ in listed) == bad
    assert {why.split(":")[0] for _, why in listed} >= {"truncated", "empty", "not_an_image"}
    reasons = {Path(p).name: why for p, why in listed}
    assert reasons["notes.txt"].startswith("not_an_image: extension '.txt'")
    assert reasons["Thumbs.db"].startswith("not_an_image: extension '.db'")
    metrics = json.loads(stdout)
    assert metrics["skipped_files"] == 6
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 72
    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.params["skipped_files"] == "6" and run.data.metrics["skipped_files"] == 6
    assert "skipped.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The lazy loader checks the files up front and skips the same ones.
    lazy = train(
        tiny(tmp_path, data, "lazy", epochs=1, cache_images=False), reporter=Reporter(quiet=True)
    )
    assert lazy.metrics["skipped_files"] == 6
    # `plantdx evaluate --data` reports them too.
    from plantdx.training import EvaluateConfig, evaluate_checkpoint

    report = evaluate_checkpoint(EvaluateConfig(checkpoint=str(out), data=str(data)))
    assert sorted(str(Path(p).relative_to(data)) for p, _ in report["skipped"]) == bad


def test_bad_dataset_layouts_are_clear_errors(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    one = tmp_path / "one"
    shutil.copytree(synth_dir / "Leaf___rust", one / "Leaf___rust")
    code, _, err = cli(monkeypatch, capsys, "train", "--data", str(one), "--no-mlflow")
    assert code == 1 and "1 class folder(s); at least 2 are needed" in err
    empty = tmp_path / "empty"
    shutil.copytree(synth_dir, empty)
    shutil.rmtree(empty / "Leaf___mosaic")
    (empty / "Leaf___mosaic").mkdir()
    code, _, err = cli(monkeypatch, capsys, "train", "--data", str(empty), "--no-mlflow")
    assert code == 1 and "class folder(s) with no images" in err and "Leaf___mosaic" in err
    code, _, err = cli(monkeypatch, capsys, "train", "--data", str(tmp_path / "nope"))
    assert code == 1 and "does not exist" in err
    broken = tmp_path / "broken"
    shutil.copytree(synth_dir, broken)
    for f in (broken / "Leaf___rust").iterdir():
        f.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"no readable image: Leaf___rust"):
        train(tiny(tmp_path, broken), reporter=Reporter(quiet=True))


def test_lazy_loading_trains_exactly_like_the_cache(tmp_path: Path, synth_dir: Path) -> None:
    cached = train(tiny(tmp_path, synth_dir, "cached"), reporter=Reporter(quiet=True))
    lazy = train(
        tiny(tmp_path, synth_dir, "lazy", cache_images=False), reporter=Reporter(quiet=True)
    )
    a = load_checkpoint(cached.run_dir / "last.pt").state_dict
    b = load_checkpoint(lazy.run_dir / "last.pt").state_dict
    assert same_weights(a, b)  # same pixels, same augmentation seeds


def test_dataloader_workers_are_reproducible(tmp_path: Path, synth_dir: Path) -> None:
    runs = [
        train(tiny(tmp_path, synth_dir, f"w{i}", num_workers=2), reporter=Reporter(quiet=True))
        for i in range(2)
    ]
    a, b = (load_checkpoint(r.run_dir / "last.pt").state_dict for r in runs)
    assert same_weights(a, b)


# ---------------------------------------------------------------------------------------------
# MLflow: run, artifacts, registry


def test_mlflow_artifacts_and_default_registration(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from plantdx.tracking import download_checkpoint

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    first = train(
        tiny(tmp_path, synth_dir, "a", mlflow=True, register_alias="champion"),
        reporter=Reporter(quiet=True),
    )
    assert first.metrics["registered_model"] == "models:/plantdx/1"
    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(first.metrics["mlflow_run_id"])
    assert run.data.params["model"] == "test_tiny" and run.data.params["epochs"] == "2"
    for name in ("train_loss", "val_loss", "train_acc", "val_acc", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2]
    for name in ("test_acc", "test_loss", "test_macro_f1", "best_val_acc"):
        assert name in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "config.yaml",
        "labels.txt",
        "split.json",
        "confusion_matrix.png",
        "training_curves.png",
        "test_report.json",
        "checkpoint",
    } <= artifacts
    report = json.loads((first.run_dir / "test_report.json").read_text())
    assert set(report["per_class"]["Leaf___rust"]) == {"precision", "recall", "f1", "support"}
    version = client.get_model_version("plantdx", "1")
    assert version.run_id == run.info.run_id and len(version.tags["data_sha256"]) == 64
    assert float(version.tags["test_acc"]) == pytest.approx(first.metrics["test_acc"])
    assert str(client.get_model_version_by_alias("plantdx", "champion").version) == "1"
    by_alias = load_checkpoint(download_checkpoint("models:/plantdx@champion"))
    assert by_alias.mlflow_run_id == run.info.run_id

    second = train(
        tiny(tmp_path, synth_dir, "b", mlflow=True, register_as="leafnet"),
        reporter=Reporter(quiet=True),
    )
    assert second.metrics["registered_model"] == "models:/leafnet/1"
    third = train(tiny(tmp_path, synth_dir, "c", mlflow=True, register=False))
    assert "registered_model" not in third.metrics
    assert len(client.search_model_versions("name='plantdx'")) == 1


# ---------------------------------------------------------------------------------------------
# Evaluation


def test_evaluate_cli_reports_and_plots(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    run = train(tiny(tmp_path, synth_dir, epochs=1), reporter=Reporter(quiet=True)).run_dir
    code, out, err = cli(monkeypatch, capsys, "evaluate", str(run), "--split", "test", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == 6 and report["split"] == "test"
    assert Path(report["confusion_matrix_png"]).stat().st_size > 1000
    assert Path(report["confusion_matrix_png"]).parent == run / "eval-test"
    conf = [m["confidence"] for m in report["misclassified"]]
    assert conf == sorted(conf, reverse=True)
    assert len(conf) == report["n"] - round(report["accuracy"] * report["n"])
    code, out, err = cli(
        monkeypatch, capsys, "evaluate", str(run / "best.pt"), "--data", str(synth_dir)
    )
    assert code == 0, err
    assert "macro-F1" in out and "n=72" in out and "misclassified" in out
    code, _, err = cli(monkeypatch, capsys, "evaluate", str(run))
    assert code != 0 and "--data is required" in err


# ---------------------------------------------------------------------------------------------
# Devices: DDP on CPU (gloo), CUDA


def test_device_cuda_without_gpu_is_a_clear_error(tmp_path: Path, synth_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        train(tiny(tmp_path, synth_dir, device="cuda"))


def test_torchrun_two_processes_gloo(tmp_path: Path, synth_dir: Path) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "ddp"
    cmd = [
        str(Path(PYTHON).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "plantdx",
        "train",
        "--data",
        str(synth_dir),
        "--model",
        "test_tiny",
        "--no-pretrained",
        "--image-size",
        "32",
        "--batch-size",
        "10",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(run),
        "--quiet",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    metrics = json.loads(lines[0])
    assert metrics["world_size"] == 2
    # Each rank trains on its half: 27 of the 54 images → 2 full batches of 10 per rank, summed
    # over the ranks (one process would see 5 batches: 50 images).
    rows = json.loads((run / "history.json").read_text())
    assert [r["train_images"] for r in rows] == [40, 40]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.train_state["world_size"] == 2
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("plantdx").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"
    assert len(client.search_model_versions("name='plantdx'")) == 1
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


@pytest.mark.gpu
def test_cuda_amp_channels_last(tmp_path: Path, synth_dir: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    result = train(
        tiny(tmp_path, synth_dir, device="cuda", amp=True, channels_last=True, epochs=2),
        reporter=Reporter(quiet=True),
    )
    assert result.metrics["device"].startswith("cuda") and result.metrics["amp"] is True
    ckpt = load_checkpoint(result.run_dir / "last.pt")
    assert ckpt.train_state["scaler"]  # GradScaler state saved for resume
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    resumed = train(resume_config(result.run_dir, {"epochs": 3}), reporter=Reporter(quiet=True))
    assert resumed.metrics["epochs"] == 3
