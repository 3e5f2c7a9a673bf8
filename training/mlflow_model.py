"""Registered versions as MLflow models: a pyfunc flavour around the plantdx checkpoint, with a
signature and an input example, so `mlflow models serve -m models:/plantdx/N` answers and the
MLflow UI shows the schema. `plantdx export models:/...` still finds the checkpoint (it is the
model's `checkpoint` artifact).

Input: a DataFrame with one column `image` holding each photo's encoded bytes, base64 (JSON
requests) or raw bytes. Output: one row per photo with `label` (top-1 class), `confidence`
(its calibrated probability), `decision` (the label, or "uncertain" under the checkpoint's
threshold) and `probabilities` (every class, in class order).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"  # the run's artifact folder of the MLflow model
CHECKPOINT_ARTIFACT = "checkpoint"  # the key of best.pt among the model's artifacts
INPUT_COLUMN = "image"


def _bytes_of(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"column {INPUT_COLUMN!r} holds text that is not base64") from exc
    raise ValueError(f"column {INPUT_COLUMN!r} holds {type(value).__name__}, not image bytes")


class PlantDxModel(PythonModel):  # type: ignore[misc]
    """The checkpoint run with PyTorch on the CPU, with plantdx's preprocessing and decision."""

    def load_context(self, context: Any) -> None:
        from plantdx.checkpoint import load_checkpoint
        from plantdx.decision import DecisionRule
        from plantdx.preprocessing import Preprocessor

        ckpt = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])
        self.class_names = list(ckpt.class_names)
        self.model = ckpt.build_model().eval()
        self.pre = Preprocessor(ckpt.preprocessing)
        self.rule = DecisionRule.from_dict(ckpt.decision)

    # No type hints here: MLflow would read them as the model's schema instead of the signature.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import numpy as np
        import pandas as pd
        import torch

        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"the input needs a column {INPUT_COLUMN!r} (encoded photos)")
            values = list(model_input[INPUT_COLUMN])
        elif isinstance(model_input, dict):
            values = list(model_input[INPUT_COLUMN])
        else:
            values = list(model_input)
        batch = np.stack([self.pre(_bytes_of(v)) for v in values])
        with torch.no_grad():
            logits = self.model(torch.from_numpy(batch)).float().numpy()
        probs = self.rule.probabilities(logits)
        top = probs.argmax(1)
        decisions = self.rule.decisions(probs, self.class_names)
        return pd.DataFrame(
            {
                "label": [self.class_names[int(i)] for i in top],
                "confidence": probs.max(1).astype(float),
                "decision": decisions,
                "probabilities": [row.astype(float).tolist() for row in probs],
            }
        )


def input_example() -> Any:
    """One generated leaf photo, base64 JPEG: what a request to the served model looks like."""
    import numpy as np
    import pandas as pd

    from plantdx.synth import CLASSES, draw_leaf

    img = draw_leaf(CLASSES[0], np.random.default_rng(0), size=128)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return pd.DataFrame({INPUT_COLUMN: [base64.b64encode(buf.getvalue()).decode()]})


def log_model(mlflow: Any, checkpoint: Path) -> Any:
    """Log the MLflow model of `checkpoint` in the active run; returns its ModelInfo."""
    from mlflow.models import infer_signature

    example = input_example()
    model = PlantDxModel()
    context = type("Context", (), {"artifacts": {CHECKPOINT_ARTIFACT: str(checkpoint)}})()
    model.load_context(context)
    signature = infer_signature(example, model.predict(context, example))
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=model,
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        signature=signature,
        input_example=example,
    )
