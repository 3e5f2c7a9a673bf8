"""PyTorch → ONNX, and the parity check that decides whether an export may be published."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plantdx.exceptions import ExportError, ParityError
from plantdx.model_repository.names import ONNX_INPUT, ONNX_OUTPUT
from plantdx.preprocessing import Normalizer, PreprocessMeta

DEFAULT_OPSET = 17

# torch.onnx keeps its export state in module globals: two exports in one process at once
# fail with "GLOBALS.in_onnx_export must be False".
_EXPORT_LOCK = threading.Lock()


class NormalizedInput(nn.Module):
    """The classifier as served: uint8 [N, 3, H, W] pixels in, normalised inside the graph
    (Cast, then Mul and Add with `Normalizer`'s float32 scale and offset: the same two
    operations, so the same floats), then the model."""

    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(self, model: nn.Module, meta: PreprocessMeta) -> None:
        super().__init__()
        self.model = model
        norm = Normalizer(meta)
        self.register_buffer("scale", torch.from_numpy(norm.scale.reshape(1, 3, 1, 1).copy()))
        self.register_buffer("offset", torch.from_numpy(norm.offset.reshape(1, 3, 1, 1).copy()))

    def forward(self, pixels: torch.Tensor) -> Any:
        return self.model(pixels.to(torch.float32) * self.scale + self.offset)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int,
    opset: int = DEFAULT_OPSET,
    output_names: tuple[str, ...] = (ONNX_OUTPUT,),
    normalize: PreprocessMeta | None = None,
) -> Path:
    """Write one self-contained ONNX file with a dynamic batch axis and named tensors.

    A model with several outputs (logits, then class-activation maps) names them
    `output_names`, in order. With `normalize`, the graph takes uint8 pixels and normalises
    them itself (`NormalizedInput`); without, normalised float32 pixels (repositories made
    before that)."""
    import onnx

    path = Path(path)
    model = model.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(2, 3, image_size, image_size)
    if normalize is not None:
        model = NormalizedInput(model, normalize).eval()
        dummy = dummy.to(torch.uint8)
    with _EXPORT_LOCK, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which takes 15 s here and
        # writes external weights; the classic exporter is exact for these CNNs and ViTs.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                input_names=[ONNX_INPUT],
                output_names=list(output_names),
                dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *output_names)},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {exc}") from exc
    proto = onnx.load(str(path))
    if _fix_output_dims(proto, model, dummy):
        onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"exported ONNX fails onnx.checker: {exc}") from exc
    return path


def _fix_output_dims(proto: Any, model: nn.Module, dummy: torch.Tensor) -> bool:
    """Write the outputs' non-batch sizes into the graph where the exporter left them symbolic
    (class-activation maps behind "same" padding come out [batch, C, ?, ?]): the input size is
    fixed per export, so they are too, and Triton's config states them."""
    with torch.no_grad():
        outs = model(dummy)
    outs = outs if isinstance(outs, tuple | list) else (outs,)
    changed = False
    for out, tensor in zip(proto.graph.output, outs, strict=False):
        dims = out.type.tensor_type.shape.dim
        for d, size in zip(list(dims)[1:], tensor.shape[1:], strict=False):
            if d.dim_value != int(size):
                d.ClearField("dim_param")
                d.dim_value = int(size)
                changed = True
    return changed


@dataclass
class Simplification:
    """What --simplify did; saved in provenance."""

    tool: str | None
    nodes_before: int
    nodes_after: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _graph_io(proto: Any) -> tuple[list[str], list[str], Any]:
    inp = proto.graph.input[0].type.tensor_type.shape.dim[0]
    batch = inp.dim_param or inp.dim_value
    return [i.name for i in proto.graph.input], [o.name for o in proto.graph.output], batch


def simplify_onnx(path: str | Path) -> Simplification:
    """Fold constants and shape arithmetic in place with onnxslim (or onnxsim) when installed.

    Without either package the model is kept as exported and the note says so: simplification
    is an optimisation, and the parity check still runs on whatever file is published.
    """
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    before = len(proto.graph.node)
    try:
        import onnxslim

        simplified, tool = onnxslim.slim(proto), f"onnxslim {onnxslim.__version__}"
    except ImportError:
        try:
            import onnxsim
        except ImportError:
            return Simplification(
                None,
                before,
                before,
                "--simplify was asked for, but neither onnxslim nor onnxsim is installed "
                "(pip install onnxslim); the model was exported without simplification",
            )
        simplified, ok = onnxsim.simplify(proto)
        if not ok:
            raise ExportError("onnxsim could not validate the simplified model") from None
        tool = f"onnxsim {getattr(onnxsim, '__version__', '?')}"
    if _graph_io(simplified) != _graph_io(proto):
        raise ExportError(
            f"{tool} changed the model's inputs, outputs or batch axis: "
            f"{_graph_io(proto)} → {_graph_io(simplified)}"
        )
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as exc:
        raise ExportError(f"the simplified ONNX fails onnx.checker: {exc}") from exc
    onnx.save(simplified, str(path))
    return Simplification(tool, before, len(simplified.graph.node))


def takes_uint8(path: str | Path) -> bool:
    """Whether an exported classifier takes uint8 pixels (and normalises them in its graph)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    first = next(v for v in graph.input if v.name not in initializers)
    return bool(first.type.tensor_type.elem_type == onnx.TensorProto.UINT8)


def torch_pixels(batch: np.ndarray, meta: PreprocessMeta) -> np.ndarray:
    """What the PyTorch model takes for a batch of the classifier's pixels: uint8 ones
    normalised as the graph does it (`Normalizer.chw`), float ones as they are."""
    return Normalizer(meta).chw(batch) if batch.dtype == np.uint8 else batch


def onnx_session(path: str | Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_logits(path: str | Path, batch: np.ndarray, chunk: int = 16) -> np.ndarray:
    """The ONNX model's FP32 logits on onnxruntime's CPU provider: the precision gate's reference."""
    session = onnx_session(path)
    out = [
        session.run([ONNX_OUTPUT], {ONNX_INPUT: batch[i : i + chunk]})[0]
        for i in range(0, len(batch), chunk)
    ]
    return np.concatenate(out)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class ParityReport:
    n_images: int
    max_abs_diff_logits: float
    max_abs_diff_probs: float
    top1_agreement: float
    max_abs_tolerance: float
    min_top1_agreement: float
    source: str

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_diff_probs <= self.max_abs_tolerance
            and self.top1_agreement >= self.min_top1_agreement
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    batch: np.ndarray,
    *,
    source: str,
    max_abs: float = 1e-4,
    min_agreement: float = 1.0,
    chunk: int = 16,
    meta: PreprocessMeta | None = None,
) -> ParityReport:
    """Compare PyTorch and onnxruntime on the same preprocessed images: `batch` as the ONNX
    model takes it; uint8 pixels reach PyTorch normalised by `meta` (`torch_pixels`), so the
    in-graph normalisation is checked too."""
    if batch.dtype == np.uint8 and meta is None:
        raise ExportError("uint8 parity images need the preprocessing metadata to normalise them")
    session = onnx_session(onnx_path)
    torch_logits, onnx_logits = [], []
    model = model.eval()
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            x = batch[i : i + chunk]
            t_in = torch_pixels(x, meta) if meta is not None else x
            torch_logits.append(model(torch.from_numpy(t_in)).numpy())
            onnx_logits.append(session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0])
    t = np.concatenate(torch_logits).astype(np.float64)
    o = np.concatenate(onnx_logits).astype(np.float64)
    return ParityReport(
        n_images=len(batch),
        max_abs_diff_logits=float(np.abs(t - o).max()),
        max_abs_diff_probs=float(np.abs(softmax(t) - softmax(o)).max()),
        top1_agreement=float((t.argmax(1) == o.argmax(1)).mean()),
        max_abs_tolerance=max_abs,
        min_top1_agreement=min_agreement,
        source=source,
    )


def require_parity(report: ParityReport) -> None:
    if not report.passed:
        raise ParityError(
            f"ONNX disagrees with PyTorch on {report.n_images} images from {report.source}: "
            f"max |Δp| = {report.max_abs_diff_probs:.2e} (limit {report.max_abs_tolerance:.0e}), "
            f"top-1 agreement {report.top1_agreement:.2%} (need {report.min_top1_agreement:.0%}); "
            "nothing was published"
        )
