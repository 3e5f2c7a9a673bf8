"""`plantdx compare`: two versions on the same labelled photos, per source, paired; without the
crop, and under `with_crop` with each photo's crop known from its label folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.exceptions import ConfigError

from .photos import LabelledPhotos, labelled_photos
from .predictions import Predictions, from_checkpoints, from_server, load_source, source_crops
from .stats import latency_summary, paired, per_class_delta, selective_metrics

METRICS = ("accuracy", "coverage", "selective_accuracy")


@dataclass
class CompareConfig:
    # Checkpoints, run directories or MLflow URIs (models:/plantdx@champion, models:/plantdx/7)...
    sources: list[str] = field(default_factory=list)
    # ...or a server and two of its repository's versions.
    url: str | None = None
    versions: list[int] = field(default_factory=list)
    protocol: str = "http"
    admin_key_env: str = "PLANTDX_ADMIN_KEY"
    data: list[str] = field(default_factory=list)
    # At most this many photos per source (0: all), evenly spread.
    limit: int = 0
    concurrency: int = 4
    plot: str | None = None

    def check(self) -> None:
        if bool(self.sources) == bool(self.url):
            raise ConfigError(
                "compare either two sources (checkpoints or models:/ URIs) or, with --url, "
                "two versions of the server's repository (--versions A,B)"
            )
        if self.sources and len(self.sources) != 2:
            raise ConfigError(f"compare takes exactly two sources, got {len(self.sources)}")
        if self.url and (len(self.versions) != 2 or self.versions[0] == self.versions[1]):
            raise ConfigError("--versions takes two different version numbers, e.g. --versions 3,4")
        if not self.data:
            raise ConfigError("no labelled photos: pass --data DIR (repeatable, one per source)")


@dataclass
class Comparison:
    a: Predictions
    b: Predictions
    photos: LabelledPhotos

    def judged(self) -> np.ndarray:
        """Photos both versions answered (a photo that fails to decode fails for both)."""
        return self.a.ok & self.b.ok

    def _probs(self, p: Predictions, crop: bool) -> np.ndarray:
        if not crop:
            return p.probs
        assert p.crop_probs is not None
        return p.crop_probs

    def _side(self, p: Predictions, mask: np.ndarray, crop: bool = False) -> dict[str, Any]:
        probs = self._probs(p, crop)[mask]
        return selective_metrics(probs, self.photos.labels[mask], p.thresholds[mask])

    def _block(self, mask: np.ndarray, crop: bool = False) -> dict[str, Any]:
        a, b = self._side(self.a, mask, crop), self._side(self.b, mask, crop)
        labels = self.photos.labels[mask]
        right_a = self._probs(self.a, crop)[mask].argmax(1) == labels
        right_b = self._probs(self.b, crop)[mask].argmax(1) == labels
        return {
            "a": a,
            "b": b,
            "delta": {k: b[k] - a[k] for k in METRICS},
            **paired(right_a, right_b),
        }

    def _blocks(self, ok: np.ndarray, crop: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        sources = {
            name: self._block(ok & (self.photos.sources == i), crop)
            for i, name in enumerate(self.photos.source_names)
        }
        return sources, self._block(ok, crop)

    def with_crop(self, ok: np.ndarray) -> dict[str, Any] | None:
        """The same comparison with each photo's crop known (from its label folder)."""
        if self.a.crop_probs is None or self.b.crop_probs is None:
            return None
        sources, overall = self._blocks(ok, crop=True)
        return {
            "sources": sources,
            "overall": overall,
            "mean_source_accuracy": _mean_accuracy(sources),
            "mcnemar_p": overall["mcnemar_p"],
        }

    def to_dict(self) -> dict[str, Any]:
        ok = self.judged()
        sources, overall = self._blocks(ok, crop=False)
        labels = self.photos.labels[ok]
        return {
            "a": {"name": self.a.name, "where": self.a.where, **self.a.info},
            "b": {"name": self.b.name, "where": self.b.where, **self.b.info},
            "n": int(ok.sum()),
            "failed": {"a": self.a.errors, "b": self.b.errors},
            "sources": sources,
            "overall": overall,
            "mean_source_accuracy": _mean_accuracy(sources),
            "mcnemar_p": overall["mcnemar_p"],
            "with_crop": self.with_crop(ok),
            "per_class_delta": per_class_delta(
                self.a.probs[ok].argmax(1),
                self.b.probs[ok].argmax(1),
                labels,
                self.photos.class_names,
            ),
            "latency": {
                "a": latency_summary(self.a.latency_ms[ok]),
                "b": latency_summary(self.b.latency_ms[ok]),
            },
            "unknown_class_folders": self.photos.unknown_folders,
        }


def _mean_accuracy(sources: dict[str, Any]) -> dict[str, float]:
    return {
        side: float(np.mean([s[side]["accuracy"] for s in sources.values()])) for side in ("a", "b")
    }


def compare(cfg: CompareConfig) -> Comparison:
    cfg.check()
    if cfg.sources:
        ckpt_a, ckpt_b = (load_source(s) for s in cfg.sources)
        if ckpt_a.class_names != ckpt_b.class_names:
            raise ConfigError(
                f"{cfg.sources[0]} and {cfg.sources[1]} have different classes; only models of "
                "the same classes can be compared"
            )
        photos = labelled_photos(cfg.data, ckpt_a.class_names, limit=cfg.limit)
        crops = [source_crops(s, c) for s, c in zip(cfg.sources, (ckpt_a, ckpt_b), strict=True)]
        a, b = from_checkpoints([ckpt_a, ckpt_b], photos, names=list(cfg.sources), crops=crops)
        result = Comparison(a, b, photos)
    else:
        result = compare_on_server(cfg)
    if cfg.plot:
        plot_comparison(result.to_dict(), cfg.plot)
    return result


def compare_on_server(cfg: CompareConfig, *, keep_loaded: bool = False) -> Comparison:
    """Both versions through the server; versions not loaded are loaded beside the served one
    for the comparison (the ensemble stays on the served version) and unloaded afterwards."""
    from plantdx.client.options import ClientOptions

    from .side_by_side import SideBySide, control_for

    assert cfg.url is not None
    options = ClientOptions.create(cfg.url, cfg.protocol)
    with control_for(cfg.url, cfg.protocol, cfg.admin_key_env) as control:
        side = SideBySide(control, cfg.versions)
        with side:
            classes = side.class_names(options)
            photos = labelled_photos(cfg.data, classes, limit=cfg.limit)
            a, b = from_server(options, list(cfg.versions), photos, concurrency=cfg.concurrency)
            if keep_loaded:
                side.keep()
    return Comparison(a, b, photos)


def format_table(d: dict[str, Any]) -> str:
    """The comparison as a plain-text table: per source, then overall, then latency."""
    a, b = d["a"]["name"], d["b"]["name"]
    lines = [f"A = {a}", f"B = {b}", f"{d['n']} photos judged by both"]
    head = f"{'source':28s} {'n':>5s} " + " ".join(
        f"{m[:12]:>12s} A/B (Δ)" for m in ("accuracy", "coverage", "selective_acc")
    )
    lines.append(head + "   McNemar p")
    lines += _rows(d)
    if d.get("with_crop"):
        lines.append("with each photo's crop known (from its label folder):")
        lines += _rows(d["with_crop"])
    worst = sorted(d["per_class_delta"].items(), key=lambda kv: kv[1]["delta"])
    changed = [(k, v) for k, v in worst if v["delta"] != 0]
    if changed:
        lines.append("per-class recall, B − A (most changed):")
        for k, v in [*changed[:3], *changed[-3:]][: min(6, len(changed))]:
            lines.append(
                f"  {k[:40]:40s} n={v['n']:4d} {v['recall_a']:6.1%} → {v['recall_b']:6.1%}"
            )
    la, lb = d["latency"]["a"], d["latency"]["b"]
    lines.append(
        f"latency per photo: A p50 {la['p50_ms']:.1f} ms p99 {la['p99_ms']:.1f} ms; "
        f"B p50 {lb['p50_ms']:.1f} ms p99 {lb['p99_ms']:.1f} ms"
    )
    failed = {k: len(v) for k, v in d["failed"].items() if v}
    if failed:
        lines.append(f"photos that failed (left out): {failed}")
    return "\n".join(lines)


def _rows(d: dict[str, Any]) -> list[str]:
    lines = []
    for name, s in [*d["sources"].items(), ("all", d["overall"])]:
        cells = " ".join(
            f"{s['a'][m]:6.1%}/{s['b'][m]:6.1%} ({s['delta'][m]:+.1%})" for m in METRICS
        )
        lines.append(f"{name[:28]:28s} {s['a']['n']:5d} {cells}   {s['mcnemar_p']:.3g}")
    return lines


def plot_comparison(d: dict[str, Any], path: str | Path) -> None:
    """Per source: accuracy, coverage and selective accuracy of A and B; per-class deltas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*d["sources"], "all"]
    blocks = [*d["sources"].values(), d["overall"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(names))
    width = 0.13
    for j, metric in enumerate(METRICS):
        for k, side in enumerate(("a", "b")):
            offset = (2 * j + k - 2.5) * width
            axes[0].bar(
                x + offset,
                [blk[side][metric] for blk in blocks],
                width,
                label=f"{side.upper()} {metric}",
                color=plt.cm.tab20(2 * j + k),  # type: ignore[attr-defined]
            )
    axes[0].set_xticks(x, names, rotation=15, fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"A = {d['a']['name']}  vs  B = {d['b']['name']}", fontsize=9)
    axes[0].legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    deltas = sorted(d["per_class_delta"].items(), key=lambda kv: kv[1]["delta"])
    axes[1].barh(
        [k[:30] for k, _ in deltas],
        [v["delta"] for _, v in deltas],
        color=["tab:red" if v["delta"] < 0 else "tab:green" for _, v in deltas],
    )
    axes[1].set_title(f"per-class recall, B − A (McNemar p = {d['mcnemar_p']:.3g})", fontsize=9)
    axes[1].tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(d: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(d, indent=2) + "\n")
