"""Following an ensemble's tensors from its input through every step to its outputs: the check
both ensembles (`plantdx`, `plantdx_explain`) pass before a repository is called ready."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.exceptions import RepositoryError

from .config import parse_pbtxt
from .layout import served_versions, versions
from .names import ENSEMBLE

Configs = dict[str, mc.ModelConfig]
TensorSpec = tuple[int, tuple[int, ...]]  # data type, dims without the batch dimension


def served(repo: Path, cfg: mc.ModelConfig) -> list[int]:
    policy = cfg.version_policy if cfg.HasField("version_policy") else None
    return served_versions(policy, versions(repo / cfg.name))


def spec(t: Any) -> TensorSpec:
    return int(t.data_type), tuple(int(d) for d in t.dims)


def type_name(data_type: int) -> str:
    return str(mc.DataType.Name(data_type))


def check_wiring(repo: Path, configs: Configs, ensemble: str = ENSEMBLE) -> list[str]:
    """Follow the ensemble's tensors from its input through every step to its output."""
    problems: list[str] = []
    ens = configs[ensemble]
    if not ens.ensemble_scheduling.step:
        return ["the ensemble has no steps"]
    produced: dict[str, TensorSpec] = {t.name: spec(t) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"ensemble step names unknown model {step.model_name!r}")
            continue
        if step.model_version != -1 and step.model_version not in served(repo, model):
            problems.append(
                f"ensemble pins {step.model_name} version {step.model_version}, which is not served"
            )
        inputs = {t.name: spec(t) for t in model.input}
        outputs = {t.name: spec(t) for t in model.output}
        for name, tensor in step.input_map.items():
            if name not in inputs:
                problems.append(
                    f"ensemble maps {name!r} into {step.model_name}, which has inputs "
                    f"{sorted(inputs)}"
                )
            elif tensor not in produced:
                problems.append(f"ensemble tensor {tensor!r} is used before any step makes it")
            elif produced[tensor] != inputs[name]:
                problems.append(mismatch(tensor, produced[tensor], step.model_name, inputs[name]))
        optional = {t.name for t in model.input if t.optional}
        missing = sorted(set(inputs) - set(step.input_map) - optional)
        if missing:
            problems.append(f"ensemble feeds nothing into {step.model_name} inputs {missing}")
        for name, tensor in step.output_map.items():
            if name not in outputs:
                problems.append(
                    f"ensemble maps {name!r} out of {step.model_name}, which has outputs "
                    f"{sorted(outputs)}"
                )
            else:
                produced[tensor] = outputs[name]
    for out in ens.output:
        if out.name not in produced:
            problems.append(f"no ensemble step produces the output {out.name!r}")
        elif produced[out.name] != spec(out):
            problems.append(mismatch(out.name, produced[out.name], ensemble, spec(out)))
    return problems


def mismatch(tensor: str, have: TensorSpec, model: str, want: TensorSpec) -> str:
    return (
        f"ensemble tensor {tensor!r} is {type_name(have[0])} {list(have[1])} but {model} "
        f"expects {type_name(want[0])} {list(want[1])}"
    )


def load_configs(repo: Path, names: Sequence[str], problems: list[str]) -> Configs:
    """The parsed config.pbtxt of each model; what is missing or wrong goes into `problems`
    (an absent or unparsable config, a config naming another model, no version directory)."""
    configs: Configs = {}
    for name in names:
        path = repo / name / "config.pbtxt"
        if not path.is_file():
            problems.append(f"{name}: config.pbtxt is missing")
            continue
        try:
            cfg = parse_pbtxt(path.read_text())
        except RepositoryError as exc:
            problems.append(f"{name}: {exc}")
            continue
        configs[name] = cfg
        if cfg.name and cfg.name != name:
            problems.append(f"{name}: config names the model {cfg.name!r}")
        if not versions(repo / name):
            problems.append(f"{name}: no numbered version directory")
    return configs
