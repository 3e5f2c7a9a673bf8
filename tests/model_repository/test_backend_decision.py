"""The preprocess and postprocess Python backends' decision logic, run outside Triton with a
stand-in `triton_python_backend_utils` (the real server runs them in test_serving_decision)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from plantdx.decision import UNCERTAIN, DecisionRule, softmax

from helpers.backend_stub import (
    BACKENDS,
    LABELS,
    LEGACY_PREPROCESS,
    StubFamily,
    StubMetric,
    StubTensor,
    load_backend,
)


def _postprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str | None = "") -> Any:
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config: dict[str, Any] = {
        "input": [{"name": "LOGITS"}, {"name": "CALIBRATION"}],
        "output": [{"name": "PROBABILITIES", "dims": ["3"]}, {"name": "DECISION"}],
    }
    if override is not None:
        config["parameters"] = {"abstain_threshold": {"string_value": override}}
    model = load_backend("postprocess", monkeypatch).TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path)})
    return model


def _request(logits: np.ndarray, calibration: list[tuple[float, float]]) -> dict[str, StubTensor]:
    return {
        "LOGITS": StubTensor("LOGITS", logits.astype(np.float32)),
        "CALIBRATION": StubTensor("CALIBRATION", np.array(calibration, dtype=np.float32)),
    }


LOGITS = np.array([[4.0, 1.0, 0.0], [1.0, 1.2, 0.9], [0.0, 0.5, 3.0]], dtype=np.float32)


def test_each_item_gets_its_own_rule_and_metrics_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _postprocess(tmp_path, monkeypatch)
    # Items of one request from two versions (a hot update): T=2/threshold 0.6, then T=1/0.
    cal = [(2.0, 0.6), (2.0, 0.6), (1.0, 0.0)]
    (resp,) = model.execute([_request(LOGITS, cal)])
    assert resp.error is None
    expected = np.concatenate([softmax(LOGITS[:2], 2.0), softmax(LOGITS[2:], 1.0)])
    assert np.array_equal(resp.outputs["PROBABILITIES"], expected)
    rule = DecisionRule(2.0, 0.6)
    assert rule.decisions(expected[:2], LABELS) == ["a", UNCERTAIN]
    assert resp.outputs["DECISION"].tolist() == [[b"a"], [UNCERTAIN.encode()], [b"c"]]
    # Items without a version (CALIBRATION [2]) from a repository that cannot name it.
    assert model.abstentions["unknown"].value == 1
    assert [model.per_class["unknown", i].value for i in range(3)] == [1, 1, 1]  # every image
    assert model.confidence["unknown"].observed == pytest.approx(expected.max(axis=1).tolist())
    assert model.per_class["unknown", 0].labels == {
        "model": "plantdx",
        "version": "unknown",
        "class": "a",
    }


def test_the_override_replaces_every_versions_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _postprocess(tmp_path, monkeypatch, override="0.99")
    (resp,) = model.execute([_request(LOGITS, [(1.0, 0.0)] * 3)])
    assert resp.outputs["DECISION"].reshape(-1).tolist() == [UNCERTAIN.encode()] * 3
    assert model.abstentions["unknown"].value == 3
    with pytest.raises(ValueError, match="abstain_threshold"):
        _postprocess(tmp_path, monkeypatch, override="1.5")
    assert _postprocess(tmp_path, monkeypatch, override=None).override is None


def test_a_bad_rule_fails_its_own_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _postprocess(tmp_path, monkeypatch)
    bad, good = model.execute(
        [_request(LOGITS[:1], [(0.0, 0.5)]), _request(LOGITS[1:], [(1.0, 0.0)] * 2)]
    )
    assert bad.error and "temperature" in bad.error and not bad.outputs
    assert good.error is None and good.outputs["DECISION"].shape == (2, 1)


def test_an_old_config_without_calibration_is_the_identity_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = {"input": [{"name": "LOGITS"}], "output": [{"name": "PROBABILITIES", "dims": ["3"]}]}
    model = load_backend("postprocess", monkeypatch).TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path)})
    (resp,) = model.execute([{"LOGITS": StubTensor("LOGITS", LOGITS)}])
    assert np.array_equal(resp.outputs["PROBABILITIES"], softmax(LOGITS))
    assert set(resp.outputs) == {"PROBABILITIES"}


def test_preprocess_sends_its_versions_rule_and_bad_images_still_fail_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantdx.models import get_spec
    from plantdx.synth import draw_leaf

    from helpers.serving import jpeg

    version = tmp_path / "1"
    version.mkdir()
    get_spec("test_tiny").preprocessing(64).save(version / "preprocessing.json")
    DecisionRule(1.5, 0.7).save(version / "decision.json")
    config: dict[str, Any] = {"output": [{"name": "PIXELS"}, {"name": "CALIBRATION"}]}
    model = load_backend("preprocess", monkeypatch).TritonPythonModel()
    model.initialize(
        {
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_name": "preprocess",
            "model_config": json.dumps(config),
        }
    )
    photo = jpeg(draw_leaf("healthy", np.random.default_rng(0)))

    def request(*images: bytes) -> dict[str, StubTensor]:
        return {"IMAGE": StubTensor("IMAGE", np.array([[b] for b in images], dtype=np.object_))}

    ok, bad, two = model.execute([request(photo), request(b"not an image"), request(photo, photo)])
    assert ok.error is None and ok.outputs["CALIBRATION"].dtype == np.float32
    assert ok.outputs["CALIBRATION"].tolist() == [[1.5, np.float32(0.7), 1.0]]  # and version
    assert bad.error and "invalid image (not_an_image)" in bad.error and not bad.outputs
    assert two.outputs["CALIBRATION"].shape == (2, 3) and two.outputs["PIXELS"].shape[0] == 2
    rejected = model.rejections["not_an_image"]
    assert rejected.value == 1 and rejected.labels["version"] == "1"
    (version / "decision.json").unlink()  # exported before decision rules: the identity rule
    model.initialize(
        {
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_name": "preprocess",
            "model_config": json.dumps(config),
        }
    )
    (again,) = model.execute([request(photo)])
    assert again.outputs["CALIBRATION"].tolist() == [[1.0, 0.0, 1.0]]
    # A config declaring [2] values (written before versions were sent) gets [2].
    config["output"][1]["dims"] = ["2"]  # type: ignore[index]
    model.initialize(
        {
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_name": "preprocess",
            "model_config": json.dumps(config),
        }
    )
    (old,) = model.execute([request(photo)])
    assert old.outputs["CALIBRATION"].tolist() == [[1.0, 0.0]]


class _CountingFamily(StubFamily):
    """Counts the metric calls, as each one is a round trip to the server."""

    calls: ClassVar[list[tuple[str, str]]] = []

    def Metric(self, labels: dict[str, str], buckets: Any = None) -> StubMetric:
        family, calls = self.name, self.calls
        metric = StubMetric(labels, buckets)
        increment, observe = metric.increment, metric.observe

        def counted_increment(n: float) -> None:
            calls.append((family, "increment"))
            increment(n)

        def counted_observe(x: float) -> None:
            calls.append((family, "observe"))
            observe(x)

        metric.increment = counted_increment  # type: ignore[method-assign]
        metric.observe = counted_observe  # type: ignore[method-assign]
        return metric


def test_metrics_carry_the_version_and_are_aggregated_per_execute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _postprocess(tmp_path, monkeypatch)
    _CountingFamily.calls = []
    model.prediction_family = _CountingFamily("plantdx_predictions_total", "", "counter")
    model.abstention_family = _CountingFamily("plantdx_abstentions_total", "", "counter")
    model.confidence_family = _CountingFamily("plantdx_prediction_confidence", "", "histogram")
    # A hot update: one execute() holds two requests of version 3 and one of version 4.
    v3, v4 = (2.0, 0.6, 3.0), (1.0, 0.0, 4.0)
    big = np.tile(LOGITS[:1], (6, 1))  # six images of class a, all answered by version 4
    responses = model.execute(
        [_request(LOGITS, [v3] * 3), _request(LOGITS[1:], [v3] * 2), _request(big, [v4] * 6)]
    )
    assert [r.error for r in responses] == [None, None, None]
    counts = {k: m.value for k, m in model.per_class.items()}
    assert counts == {("3", 0): 1, ("3", 1): 2, ("3", 2): 2, ("4", 0): 6}
    assert {v: m.value for v, m in model.abstentions.items()} == {"3": 2, "4": 0}
    assert len(model.confidence["3"].observed) == 5 and len(model.confidence["4"].observed) == 6
    assert model.confidence["4"].labels == {"model": "plantdx", "version": "4"}
    assert model.per_class["4", 0].labels == {"model": "plantdx", "version": "4", "class": "a"}
    increments = [c for c in _CountingFamily.calls if c[1] == "increment"]
    assert len(increments) == 4 + 1  # one per (version, class) and per version, not per image
    assert _CountingFamily.calls.count(("plantdx_prediction_confidence", "observe")) == 11
    model.execute([_request(LOGITS[:1], [v3])])  # the same metrics again, not new ones
    assert model.per_class["3", 0].value == 2 and len(model.per_class) == 4


def _version_dir(root: Path, version: str, rule: DecisionRule | None, source: str) -> None:
    vdir = root / "preprocess" / version
    vdir.mkdir(parents=True)
    (vdir / "model.py").write_text(source)
    if rule is not None:
        rule.save(vdir / "decision.json")


def test_versions_that_send_no_version_are_told_by_their_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository whose older versions' model.py emit [temperature, threshold] only: each is
    named by its rule when no other such version has the same; the rest are "unknown"."""
    legacy = LEGACY_PREPROCESS.read_text()
    current = (BACKENDS / "preprocess.py").read_text()
    assert "CALIBRATION_FIELDS" not in legacy and "CALIBRATION_FIELDS" in current
    root = tmp_path / "repo"
    _version_dir(root, "1", DecisionRule(1.3, 0.55), legacy)
    _version_dir(root, "2", None, legacy)  # before decision rules: the identity rule
    _version_dir(root, "3", DecisionRule(), legacy)  # the identity rule too: ambiguous
    _version_dir(root, "4", DecisionRule(1.3, 0.55), current)  # sends its version
    post = root / "postprocess"
    post.mkdir()
    model = _postprocess(post, monkeypatch)
    assert model.legacy == {(np.float32(1.3).item(), np.float32(0.55).item()): "1"}
    old, new = model.execute(
        [
            _request(LOGITS[:2], [(1.3, 0.55), (1.0, 0.0)]),
            _request(LOGITS[2:], [(1.3, 0.55, 4.0)]),  # type: ignore[list-item]
        ]
    )
    assert old.error is None and new.error is None
    assert {v: len(m.observed) for v, m in model.confidence.items()} == {
        "1": 1,
        "unknown": 1,
        "4": 1,
    }
    bad = model.execute([_request(LOGITS[:1], [(1.0, 0.0, 4.0, 9.0)])])  # type: ignore[list-item]
    assert bad[0].error and "CALIBRATION has 4 values" in bad[0].error
