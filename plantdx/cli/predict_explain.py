"""`plantdx predict --explain OUTDIR`: each photo through `plantdx_explain`, one overlay PNG per
photo (the photo, its top class's heatmap, the answer)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plantdx.client import PlantDxClient, PredictOutcome


def explain_to(
    client: PlantDxClient,
    paths: list[Path],
    outdir: Path,
    *,
    concurrency: int,
    top_k: int,
    resize: str,
    crop: str | None = None,
) -> list[PredictOutcome]:
    """Explain `paths` and write their overlays into `outdir`; the outcomes of every photo."""
    from plantdx.client import PredictOutcome
    from plantdx.overlay import caption, draw_overlay, overlay_name

    if not paths:
        return []
    outcomes = []
    for i, o in enumerate(
        client.explain_many(paths, concurrency=concurrency, top_k=top_k, crop=crop)
    ):
        if o.explanation is None or o.image is None:
            outcomes.append(PredictOutcome(o.source, error=o.error, kind=o.kind))
            continue
        p = o.explanation.prediction
        draw_overlay(
            o.image,
            o.explanation.heatmap,
            caption(p.label, p.confidence, p.decision),
            outdir / overlay_name(o.source, i),
            resize=resize,
        )
        outcomes.append(PredictOutcome(o.source, p))
    return outcomes
