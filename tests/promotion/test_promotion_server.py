"""compare and promote on a real Triton server, with two small models trained here: a worse
challenger is refused and changes nothing; a better one is promoted under load with no failed
request, durably (a restarted server serves it) and with its evidence recorded."""

from __future__ import annotations

import json
import secrets
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.export import two_versions
from helpers.serving import start_server

pytestmark = [pytest.mark.triton, pytest.mark.slow]

KEY = "pdx-" + secrets.token_hex(12)
LIMIT = 120  # photos per source


def _ready(url: str, model: str) -> list[int]:
    from plantdx.serving.control import ModelControl

    with ModelControl(url, key=KEY) as control:
        return control.ready_versions(model)


@pytest.fixture()
def admin_env(monkeypatch: pytest.MonkeyPatch, mlflow_store: str) -> None:
    monkeypatch.setenv("PLANTDX_ADMIN_KEY", KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)


def _configs(repo: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(repo.glob("*/config.pbtxt"))}


def test_a_worse_challenger_is_refused_and_nothing_changes(
    tiny_run: Path, weak_run: Path, mini_dir: Path, tmp_path: Path, admin_env: None
) -> None:
    from plantdx.promotion.promote import PromoteConfig, PromotionRefusedError, promote

    repo = two_versions(tmp_path, tiny_run, weak_run)
    before = _configs(repo)
    server = start_server(repo, tmp_path / "triton.log", admin_key=KEY)
    try:
        assert _ready(server.http_url, "classifier") == [1]
        cfg = PromoteConfig(
            url=server.http_url,
            repository=str(repo),
            candidate=2,
            data=[str(mini_dir)],
            limit=LIMIT,
            registered_model="plantdx-test",
        )
        with pytest.raises(PromotionRefusedError, match="gate failed") as refused:
            promote(cfg)
        result = refused.value.result  # type: ignore[attr-defined]
        src = result["comparison"]["sources"][mini_dir.name]
        assert src["b"]["accuracy"] < src["a"]["accuracy"]  # the challenger really is worse
        assert not result["gate"]["passed"] and result["gate"]["reasons"]
        # Nothing changed: the server holds version 1 only, the repository is as it was.
        assert _ready(server.http_url, "classifier") == [1]
        assert _ready(server.http_url, "preprocess") == [1]
        assert server.is_ready()
        assert _configs(repo) == before
        assert not list(repo.glob("classifier/*/promotion.json"))
    finally:
        server.stop()


def test_compare_through_the_server_then_promote_under_load(
    tiny_run: Path,
    weak_run: Path,
    mini_dir: Path,
    mini_photos: list[Path],
    tmp_path: Path,
    admin_env: None,
) -> None:
    from plantdx.checkpoint import load_checkpoint
    from plantdx.cli import app
    from plantdx.client import PlantDxClient
    from plantdx.promotion.compare import CompareConfig, compare
    from plantdx.promotion.promote import PromoteConfig, promote
    from plantdx.tracking import configure

    repo = two_versions(tmp_path, weak_run, tiny_run)
    server = start_server(repo, tmp_path / "triton.log", admin_key=KEY)
    try:
        # compare --url: both versions judged through the server, then version 2 unloaded.
        runner = CliRunner()
        done = runner.invoke(
            app,
            [
                "compare",
                "--url",
                server.http_url,
                "--versions",
                "1,2",
                "--data",
                str(mini_dir),
                "--limit",
                str(LIMIT),
                "--json",
            ],
        )
        assert done.exit_code == 0, done.output
        served = json.loads(done.output)
        block = served["sources"][mini_dir.name]
        assert block["a"]["n"] == block["b"]["n"] == LIMIT
        assert {"mcnemar_p", "per_class_delta", "latency"} <= set(served)
        assert _ready(server.http_url, "classifier") == [1]
        # The same comparison from the checkpoints (PyTorch) agrees with the served one.
        local = compare(
            CompareConfig(sources=[str(weak_run), str(tiny_run)], data=[str(mini_dir)], limit=LIMIT)
        ).to_dict()
        for side in ("a", "b"):
            for k in ("accuracy", "coverage"):
                mine = local["sources"][mini_dir.name][side][k]
                assert abs(block[side][k] - mine) <= 1.5 / LIMIT, (side, k)

        # --dry-run: the same comparison and verdict, nothing changed.
        dry = runner.invoke(
            app,
            [
                "promote",
                "--url",
                server.http_url,
                "--repository",
                str(repo),
                "--candidate",
                "2",
                "--data",
                str(mini_dir),
                "--limit",
                str(LIMIT),
                "--registered-model",
                "plantdx-test",
                "--dry-run",
                "--json",
            ],
        )
        assert dry.exit_code == 0, dry.output
        plan = json.loads(dry.output)
        assert plan["gate"]["passed"] and not plan["promoted"]
        assert plan["steps"] and all(step.startswith("would ") for step in plan["steps"])
        assert _ready(server.http_url, "classifier") == [1]
        assert not (repo / "classifier" / "2" / "promotion.json").exists()

        # promote under load: no request fails while traffic moves from version 1 to 2.
        stop = threading.Event()
        outcomes: list[str | None] = []

        def pump(offset: int) -> None:
            with PlantDxClient(server.grpc_url, "grpc", retries=0) as client:
                i = offset
                while not stop.is_set():
                    try:
                        client.predict(mini_photos[i % len(mini_photos)])
                        outcomes.append(None)
                    except Exception as exc:
                        outcomes.append(str(exc))
                    i += 7

        threads = [threading.Thread(target=pump, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        try:
            result = promote(
                PromoteConfig(
                    url=server.http_url,
                    repository=str(repo),
                    candidate=2,
                    data=[str(mini_dir)],
                    limit=LIMIT,
                    registered_model="plantdx-test",
                )
            )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert result["promoted"] and result["gate"]["passed"], result["gate"]
        failed = [o for o in outcomes if o]
        assert not failed, failed[:3]
        assert len(outcomes) > 20  # the switch really happened under traffic
        assert _ready(server.http_url, "classifier") == [2]
        assert _ready(server.http_url, "preprocess") == [2]
        # Recorded: the version's promotion.json and the MLflow alias on the good model.
        history = json.loads((repo / "classifier" / "2" / "promotion.json").read_text())
        assert history[-1]["gate"]["passed"] and history[-1]["champion"] == 1
        mlflow = configure()
        client = mlflow.MlflowClient()
        champion = client.get_model_version_by_alias("plantdx-test", "champion")
        good_run = load_checkpoint(tiny_run / "best.pt").mlflow_run_id
        assert good_run and champion.run_id == good_run
        assert result["recorded"]["mlflow"]["version"] == str(champion.version)
    finally:
        server.stop()
    # Durable: a server started afresh on the repository serves version 2 alone.
    again = start_server(repo, tmp_path / "triton2.log", admin_key=KEY)
    try:
        assert _ready(again.http_url, "classifier") == [2]
    finally:
        again.stop()
