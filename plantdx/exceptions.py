"""Every error plantdx raises on purpose. The CLI turns them into a message and an exit code."""

from __future__ import annotations


class PlantDxError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 1


class ConfigError(PlantDxError):
    """A config file or option is invalid."""

    exit_code = 2


class DatasetError(PlantDxError):
    """A dataset folder is missing, empty or malformed."""


class CheckpointError(PlantDxError):
    """A checkpoint cannot be read or lacks what plantdx needs."""


class ModelNotFoundError(PlantDxError):
    """An unknown model name, or pretrained weights that cannot be found offline."""


class ExportError(PlantDxError):
    """Export failed: the model repository was left untouched."""


class ExplainUnavailableError(ModelNotFoundError):
    """Class-activation maps do not apply to this architecture (its head is not global
    pooling + one linear layer)."""


class ParityError(ExportError):
    """The exported model disagrees with PyTorch beyond the allowed tolerance."""


class TensorRTUnavailableError(ExportError):
    """TensorRT or an NVIDIA GPU is missing on this machine."""


class PrecisionGateError(ParityError):
    """A reduced-precision engine disagrees with FP32 more than the gate allows."""


class RepositoryError(PlantDxError):
    """A Triton model repository is missing files or is inconsistent."""


class PreprocessError(PlantDxError):
    """An input image was rejected (empty, not an image, too large, too small, truncated)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ServerError(PlantDxError):
    """The Triton server could not start, or died."""


class ClientError(PlantDxError):
    """A request to the server failed."""


class ServerUnavailableError(ClientError):
    """The server could not be reached (after retries)."""


class ServerOverloadedError(ClientError):
    """The server refused the request because its queue was full (after retries)."""


class InferenceTimeoutError(ClientError):
    """A request took longer than its timeout."""


class InvalidImageError(ClientError):
    """The server rejected an image (`reason` is one of the preprocessing rejection reasons)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CaptureError(PlantDxError):
    """A capture destination or a captured file cannot be used."""
