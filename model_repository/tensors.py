"""The tensors of names.TENSORS as Triton's `ModelInput` and `ModelOutput`, with the sizes a
version is exported with: every config's inputs and outputs are made here, from the one
contract."""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.exceptions import RepositoryError

from .names import CLASSES, MAP, MAPS, PIXEL_TYPE, SIZE, TENSORS, Tensor

# The classifier's pixels (RepositoryInfo.pixels) as a Triton data type.
PIXEL_TYPES = {"uint8": mc.TYPE_UINT8, "float32": mc.TYPE_FP32}


def pixel_type(pixels: str) -> int:
    try:
        return PIXEL_TYPES[pixels]
    except KeyError:
        raise RepositoryError(f"pixels {pixels!r} is not one of {sorted(PIXEL_TYPES)}") from None


@dataclass(frozen=True)
class Sizes:
    """What a version's tensors are sized by: names.CLASSES, SIZE, MAPS and MAP, and the data
    type of its pixels (names.PIXEL_TYPE)."""

    classes: int = 0
    image_size: int = 0
    maps: tuple[int, ...] = ()
    pixels: str = "uint8"

    def dims(self, tensor: Tensor) -> list[int]:
        sizes: dict[str, list[int]] = {
            CLASSES: [self.classes],
            SIZE: [self.image_size],
            MAPS: list(self.maps),
            MAP: list(self.maps[-2:]),
        }
        out: list[int] = []
        for d in tensor.dims:
            out.extend([d] if isinstance(d, int) else sizes[d])
        if any(d == 0 for d in out) or (tensor.dims and not out):
            raise RepositoryError(f"no size given for a dimension of {tensor}")
        return out

    def data_type(self, tensor: Tensor) -> int:
        if tensor.data_type == PIXEL_TYPE:
            return pixel_type(self.pixels)
        return int(mc.DataType.Value(tensor.data_type))


def model_input(name: str, sizes: Sizes, *, optional: bool | None = None) -> mc.ModelInput:
    """The input `name` as the contract has it (`optional` overrides the contract's)."""
    t = TENSORS[name]
    opt = t.optional if optional is None else optional
    inp = mc.ModelInput(name=name, data_type=sizes.data_type(t), dims=sizes.dims(t))
    if opt:
        inp.optional = True
    return inp


def model_output(name: str, sizes: Sizes, *, label_filename: str = "") -> mc.ModelOutput:
    t = TENSORS[name]
    out = mc.ModelOutput(name=name, data_type=sizes.data_type(t), dims=sizes.dims(t))
    if label_filename:
        out.label_filename = label_filename
    return out


def warmup_input(warmup: mc.ModelWarmup, name: str, sizes: Sizes) -> mc.ModelWarmup.Input:
    """A warm-up sample's input `name`, typed and shaped as the contract has it (its data is
    the caller's: a file, zeros)."""
    t = TENSORS[name]
    inp = warmup.inputs[name]
    inp.data_type = sizes.data_type(t)  # type: ignore[assignment]
    inp.dims.extend(sizes.dims(t))
    return inp
