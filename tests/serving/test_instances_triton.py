"""A repository exported here, served by the real Triton on a view sized for another machine's
cores (PLANTDX_CORES=4 where this one has 2): it loads, each composing model runs the rule's
number of stubs (preprocess 4, classifier 4, postprocess 1), and a photo is classified."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from plantdx.model_repository.instances import counts, plan_for


@pytest.mark.triton
def test_a_generated_repository_loads_sized_for_the_serving_cores(
    tiny_repo: Path, mini_photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantdx.client import PlantDxClient
    from plantdx.serving import view as views
    from plantdx.serving.server import TritonServer, free_port

    names = ("preprocess", "classifier", "postprocess")
    written = {m: counts((tiny_repo / m / "config.pbtxt").read_text()) for m in names}
    monkeypatch.setenv("PLANTDX_CORES", "4")  # read by the view and by the stubs
    plan = plan_for(4)
    view = views.build(tiny_repo, 1)
    server = TritonServer(
        repository=view,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=tmp_path / "triton.log",
        response_cache_bytes=0,
    )
    try:
        server.start(timeout_s=180)
        stubs = Counter(model for model, _version in server.stubs().values())
        assert {m: stubs[m] for m in names} == {"preprocess": 4, "classifier": 4, "postprocess": 1}
        assert stubs["heatmap"] in (0, 1)  # plantdx_explain's, sized as the postprocess
        assert (plan.preprocess, plan.classifier, plan.postprocess) == (4, 4, 1)
        with PlantDxClient(server.http_url) as client:
            prediction = client.predict(mini_photos[0])
        assert prediction.label and 0.0 <= prediction.confidence <= 1.0
    finally:
        server.stop()
        shutil.rmtree(view, ignore_errors=True)
    # The repository itself still holds what the export wrote for this machine.
    assert written == {"preprocess": [2], "classifier": [2], "postprocess": [1]}  # 2 cores here
    assert {m: counts((tiny_repo / m / "config.pbtxt").read_text()) for m in names} == written
