"""`plantdx feedback export|purge` and training on the exported folder."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plantdx.capture.feedback import MANIFEST_CSV, MANIFEST_JSONL, export_feedback, purge
from plantdx.capture.store import LocalStore, S3Store
from plantdx.exceptions import DatasetError

from helpers.capture import capture, fill, photo


def day(n: int, second: int = 0) -> datetime:
    return datetime(2025, 6, n, 9, 0, second, tzinfo=timezone.utc)


def sample_captures() -> list[object]:
    a, b, c = photo(1), photo(2), photo(3)
    return [
        capture(a, when=day(1), decision="uncertain", prediction="rust", reason="abstained"),
        capture(a, when=day(2), decision="uncertain", prediction="blight", reason="abstained"),
        capture(
            b,
            when=day(1, 1),
            decision="rust",
            prediction="rust",
            confidence=0.45,
            reason="low_confidence",
        ),
        capture(
            c,
            when=day(2, 5),
            decision="healthy",
            prediction="healthy",
            confidence=0.97,
            reason="sampled",
        ),
        capture(
            c,
            when=day(3),
            decision="healthy",
            prediction="healthy",
            confidence=0.97,
            reason="sampled",
        ),
    ]


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_export_dedupes_sorts_and_keeps_the_facts(tmp_path: Path) -> None:
    cap = tmp_path / "cap"
    fill(LocalStore(cap), sample_captures())
    out = tmp_path / "label"
    result = export_feedback(str(cap), out)
    assert (result.added, result.duplicates, result.skipped) == (3, 2, 0)
    assert result.by_folder == {"uncertain": 1, "rust": 1, "healthy": 1}
    files = tree(out)
    assert [f.split("/")[0] for f in files] == [
        "healthy",
        MANIFEST_CSV,
        MANIFEST_JSONL,
        "rust",
        "uncertain",
    ]
    rows = [json.loads(line) for line in (out / MANIFEST_JSONL).read_text().splitlines()]
    by_folder = {r["folder"]: r for r in rows}
    assert by_folder["uncertain"]["captures"] == 2
    assert by_folder["uncertain"]["prediction"] == "rust"  # the first capture's facts
    assert by_folder["rust"]["reason"] == "low_confidence"
    assert by_folder["healthy"]["captures"] == 2
    for r in rows:
        assert (out / r["path"]).is_file() and r["path"].startswith(r["folder"] + "/")
    assert len((out / MANIFEST_CSV).read_text().splitlines()) == 4


def test_export_is_idempotent_and_respects_the_labeller(tmp_path: Path) -> None:
    cap = tmp_path / "cap"
    fill(LocalStore(cap), sample_captures())
    out = tmp_path / "label"
    export_feedback(str(cap), out)
    before = (tree(out), (out / MANIFEST_JSONL).read_text())
    again = export_feedback(str(cap), out)
    assert again.added == 0 and (tree(out), (out / MANIFEST_JSONL).read_text()) == before
    # The labeller moves the uncertain photo to its class (renamed) and deletes the rust one.
    moved = next((out / "uncertain").iterdir())
    (out / "blight").mkdir()
    moved.rename(out / "blight" / "leaf-17.jpg")
    next((out / "rust").iterdir()).unlink()
    fill(
        LocalStore(cap),
        [
            capture(
                photo(4),
                when=day(4),
                decision="rust",
                prediction="rust",
                confidence=0.4,
                reason="low_confidence",
            )
        ],
    )
    third = export_feedback(str(cap), out)
    assert third.added == 1 and third.by_folder == {"rust": 1}
    assert sorted(p.name for p in (out / "uncertain").iterdir()) == []
    assert (out / "blight" / "leaf-17.jpg").is_file()
    assert len((out / MANIFEST_JSONL).read_text().splitlines()) == 4


def test_export_skips_a_sidecar_without_its_photo(tmp_path: Path) -> None:
    cap = tmp_path / "cap"
    fill(LocalStore(cap), sample_captures()[2:4])
    next(cap.rglob("*.jpg")).unlink()
    (cap / "2025-06-02" / "junk.json").write_text("{not json")
    result = export_feedback(str(cap), tmp_path / "out")
    assert result.added == 1 and result.skipped == 2


def test_purge_removes_whole_old_days(tmp_path: Path) -> None:
    cap = tmp_path / "cap"
    today = datetime.now(timezone.utc)
    fill(LocalStore(cap), [capture(photo(i), when=today - timedelta(days=i)) for i in range(4)])
    assert len(purge(str(cap), 2, dry_run=True)) == 2  # only the day 3 days ago ended > 2 ago
    keys = purge(str(cap), 1)
    assert {k.split("/")[0] for k in keys} == {
        f"{today - timedelta(days=i):%Y-%m-%d}" for i in (2, 3)
    }
    assert sorted(p.name for p in cap.iterdir()) == sorted(
        f"{today - timedelta(days=i):%Y-%m-%d}" for i in (0, 1)
    )


def test_export_and_purge_from_s3(tmp_path: Path) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="leaves")
        store = S3Store("s3://leaves/prod/capture", client=client)
        fill(store, sample_captures())
        keys = [k["Key"] for k in client.list_objects_v2(Bucket="leaves")["Contents"]]
        assert all(k.startswith("prod/capture/2025-06-0") for k in keys) and len(keys) == 10
        result = export_feedback(store, tmp_path / "out")
        assert result.added == 3 and result.duplicates == 2
        assert len(purge(store, 0)) == 10
        assert "Contents" not in client.list_objects_v2(Bucket="leaves")


def test_cli_export_and_purge(tmp_path: Path) -> None:
    from plantdx.cli import app

    cap = tmp_path / "cap"
    fill(LocalStore(cap), sample_captures())
    runner = CliRunner()
    res = runner.invoke(app, ["feedback", "export", str(cap), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "3 new photo(s) (healthy 1, rust 1, uncertain 1); 2 duplicate" in res.output
    res = runner.invoke(app, ["feedback", "purge", str(cap), "--older-than", "0", "--dry-run"])
    assert res.exit_code == 0 and "would delete 10 file(s) from 3 day(s)" in res.output
    assert len(list(cap.rglob("*.json"))) == 5


def test_training_data_refuses_a_full_uncertain_folder(tmp_path: Path) -> None:
    from plantdx.data import scan_image_folder

    for name in ("rust", "healthy", "uncertain"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.jpg").write_bytes(photo(len(name)))
    with pytest.raises(DatasetError, match="uncertain still holds 1 photo"):
        scan_image_folder(tmp_path)
    shutil.move(tmp_path / "uncertain" / "a.jpg", tmp_path / "rust" / "b.jpg")
    folder = scan_image_folder(tmp_path)  # an emptied uncertain/ is left out
    assert folder.class_names == ["healthy", "rust"] and len(folder.samples) == 3
