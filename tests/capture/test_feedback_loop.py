"""The loop closed, end to end: serve with capture, export the abstained photos, label them,
retrain with them as an extra source, export the new version into the served repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from plantdx.capture.feedback import MANIFEST_JSONL, export_feedback
from plantdx.capture.settings import CaptureSettings
from plantdx.exceptions import DatasetError

from helpers.capture import with_threshold
from helpers.common import onnx_probabilities, train_tiny, wait_for
from helpers.serving import copy_repo, start_server, try_infer

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_serve_capture_label_retrain_export(
    tiny_repo: Path, mini_dir: Path, mini_photos: list[Path], tmp_path: Path
) -> None:
    from plantdx.export import ExportConfig, export
    from plantdx.model_repository.validate import validate

    photos = [p.read_bytes() for p in mini_photos]
    conf = onnx_probabilities(tiny_repo, photos).max(axis=1)
    threshold = float(sorted(conf)[len(conf) // 2 - 1] + sorted(conf)[len(conf) // 2]) / 2
    abstained = int((conf < threshold).sum())
    repo = copy_repo(tiny_repo, tmp_path / "repo", with_threshold(threshold))
    cap = tmp_path / "capture"
    env = CaptureSettings(str(cap), rate=0.0, low_confidence=0.0, max_per_s=0).to_env()
    server = start_server(repo, tmp_path / "triton.log", env=env)
    try:
        for photo in photos:
            assert try_infer(server.grpc_url, photo)[1] is None
        assert wait_for(lambda: len(list(cap.rglob("*.json"))) >= abstained, timeout=30)
    finally:
        server.stop()

    labelled = tmp_path / "feedback"
    result = export_feedback(str(cap), labelled)
    assert result.added == abstained and result.by_folder == {"uncertain": abstained}
    # "Labelling": each photo goes to its true class (here known from where it came from).
    true_class = {p.read_bytes(): p.parent.name for p in mini_photos}
    with pytest.raises(DatasetError, match="uncertain still holds"):
        from plantdx.data import scan_image_folder

        scan_image_folder(labelled)
    for row in map(json.loads, (labelled / MANIFEST_JSONL).read_text().splitlines()):
        src = labelled / row["path"]
        dest = labelled / true_class[src.read_bytes()] / src.name
        dest.parent.mkdir(exist_ok=True)
        shutil.move(src, dest)
    assert not any((labelled / "uncertain").iterdir())  # emptied, left in place

    run = tmp_path / "run"
    train_tiny(run, [mini_dir, labelled], epochs=1)
    split = json.loads((run / "split.json").read_text())
    assert str(labelled) in json.dumps(split)
    export(ExportConfig(source=str(run / "best.pt"), repository=str(repo)))
    assert (repo / "classifier" / "2" / "model.onnx").is_file()
    assert validate(repo) == []
