"""One PNG per version and distribution: the reference's bucket shares beside the captured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .report import Comparison, DriftReport


def plot_comparisons(report: DriftReport, out: Path) -> None:
    """Write OUT/v<version>-<statistic>.png for every compared distribution; sets `plot`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for v in report.versions:
        for c in v.comparisons:
            if not c.reference:
                continue
            path = out / f"v{v.version}-{c.statistic}.png"
            fig = _figure(plt, v.version, c)
            fig.savefig(path, dpi=90)
            plt.close(fig)
            c.plot = str(path)


def _figure(plt: Any, version: str, c: Comparison) -> Any:
    x = np.arange(len(c.buckets))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 2), 3.6))
    ax.bar(x - 0.2, c.reference, width=0.4, label="reference", color="#4c72b0")
    ax.bar(x + 0.2, c.captured, width=0.4, label=f"captured (n={c.n})", color="#dd8452")
    labels = [f"≤{b}" if c.statistic != "class" and b != "+Inf" else b for b in c.buckets]
    ax.set_xticks(x, labels, rotation=60 if c.statistic == "class" else 45, ha="right", fontsize=7)
    ax.set_ylabel("share of photos")
    value = f"PSI {c.psi:.3f}" if c.psi is not None else "no PSI"
    ax.set_title(f"version {version} · {c.statistic} · {value} · {c.verdict}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
