"""The wire contract (model_repository/names.py): every served tensor's name, data type and shape
written once. The configs follow it, both ensembles come from one step list, and the Python
backends and the client spell no served name of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from plantdx.model_repository import names
from plantdx.model_repository.config import (
    ServingOptions,
    classifier_config,
    postprocess_config,
    preprocess_config,
)
from plantdx.model_repository.ensembles import ensemble_config, ensemble_steps
from plantdx.model_repository.explain import explain_configs
from plantdx.model_repository.tensors import Sizes

ROOT = Path(__file__).resolve().parents[2]
CAMS = (3, 4, 4)


def _configs(target: str, pixels: str) -> list[mc.ModelConfig]:
    opts = ServingOptions(cores=2)
    clf = classifier_config(64, 3, opts, target=target, cams_dims=CAMS, pixels=pixels)  # type: ignore[arg-type]
    return [
        preprocess_config(64, opts, pixels),
        clf,
        postprocess_config(3, opts),
        ensemble_config(3, opts, target=target),  # type: ignore[arg-type]
        *explain_configs(3, CAMS, opts, target=target, classifier=clf).values(),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize("target", ["local", "triton"])
@pytest.mark.parametrize("pixels", ["uint8", "float32"])
def test_every_config_tensor_is_typed_and_shaped_as_the_contract_says(
    target: str, pixels: str
) -> None:
    sizes = Sizes(classes=3, image_size=64, maps=CAMS, pixels=pixels)
    seen = set()
    for cfg in _configs(target, pixels):
        for t in [*cfg.input, *cfg.output]:
            want = names.TENSORS[t.name]
            assert (t.data_type, list(t.dims)) == (sizes.data_type(want), sizes.dims(want)), (
                cfg.name,
                t.name,
            )
            seen.add(t.name)
    assert {names.ENSEMBLE_INPUT, names.PIXELS, names.HEATMAP, names.DECISION} <= seen


def test_protocol_data_types() -> None:
    assert names.TENSORS[names.ENSEMBLE_INPUT].datatype == "BYTES"
    assert names.TENSORS[names.CROP].datatype == "BYTES"
    assert names.TENSORS[names.LOGITS].datatype == "FP32"
    assert names.TENSORS[names.CLASS_INDEX].datatype == "INT32"
    with pytest.raises(ValueError, match="repository"):
        _ = names.TENSORS[names.PIXELS].datatype


@pytest.mark.parametrize("target", ["local", "triton"])
def test_both_ensembles_come_from_one_step_list(target: str) -> None:
    plain = ensemble_steps(target, explain=False)  # type: ignore[arg-type]
    explain = ensemble_steps(target, explain=True)  # type: ignore[arg-type]
    assert [s.model for s in plain] == [names.PREPROCESS, names.CLASSIFIER, names.POSTPROCESS]
    assert explain[0] == plain[0]
    assert explain[-1].model == names.HEATMAP_MODEL
    # The answer is the same step; only plantdx sends the photo on, for capture.
    assert plain[2].outputs == explain[2].outputs
    assert {**explain[2].inputs, names.ENSEMBLE_INPUT: names.ENSEMBLE_INPUT} == plain[2].inputs


SERVED = {
    *(n for n in names.TENSORS if n.isupper()),
    names.ENSEMBLE,
    names.EXPLAIN_ENSEMBLE,
    names.CAMS_CLASSIFIER,
    names.ABSTAIN_THRESHOLD,
    names.DRIFT_SAMPLE_RATE,
}


def _literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    }


@pytest.mark.parametrize(
    "path",
    sorted(
        [*(ROOT / "model_repository" / "backends").glob("*.py"), *(ROOT / "client").glob("*.py")]
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_backends_and_client_spell_no_served_name(path: Path) -> None:
    assert not _literals(path) & SERVED, "import the name from plantdx.model_repository.names"
