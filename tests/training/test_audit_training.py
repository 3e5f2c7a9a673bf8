"""What training takes from a data audit: `--exclude FILE` drops the listed photos before the
split (counted, listed in the run, recorded in the config and the checkpoint), and a
domains.tsv beside it splits a source with lab-style and field-style photos into NAME and
NAME:lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from plantdx.data import scan_sources
from plantdx.exceptions import DatasetError
from plantdx.synth import generate_dataset
from plantdx.training.audit import apply_audit, photo_key, read_domains, read_exclude
from plantdx.training.audit.files import write_domains, write_exclude

from helpers.common import train_tiny

CLASSES = ("Leaf___healthy", "Leaf___rust")


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sources")
    lab, mixed = root / "lab", root / "mixed"
    generate_dataset(lab, per_class=12, size=64, seed=1, classes=CLASSES)
    generate_dataset(mixed, per_class=24, size=64, seed=2, classes=CLASSES)
    return lab, mixed


def audit_files(folder: Path, lab: Path, mixed: Path) -> tuple[Path, list[Path], list[Path]]:
    """exclude.txt dropping 3 lab photos (and naming one photo that is nowhere), and a
    domains.tsv beside it calling half of each class of `mixed` lab-style."""
    folder.mkdir(parents=True, exist_ok=True)
    dropped = sorted((lab / CLASSES[0]).glob("*.jpg"))[:3]
    write_exclude(
        folder / "exclude.txt",
        [(photo_key(p), "near_duplicate: copy of another photo") for p in dropped]
        + [(str(folder / "gone.jpg"), "corrupt")],
        header=["made by a test"],
        commented=[(photo_key(sorted(lab.rglob("*.jpg"))[-1]), "label_issue")],
    )
    lab_style = [p for c in CLASSES for p in sorted((mixed / c).glob("*.jpg"))[:12]]
    rows = [(photo_key(p), "lab" if p in lab_style else "field", 0.1) for p in mixed.rglob("*.jpg")]
    rows += [(photo_key(p), "lab", 0.01) for p in lab.rglob("*.jpg")]
    write_domains(folder / "domains.tsv", rows)
    return folder / "exclude.txt", dropped, lab_style


def test_files_round_trip(tmp_path: Path, two_sources: tuple[Path, Path]) -> None:
    lab, mixed = two_sources
    exclude, dropped, _ = audit_files(tmp_path / "audit", lab, mixed)
    listed = read_exclude(exclude)
    # Comments (and the commented label issue) are not exclusions.
    assert set(listed) == {photo_key(p) for p in dropped} | {photo_key(tmp_path / "audit/gone.jpg")}
    domains = read_domains(tmp_path / "audit" / "domains.tsv")
    assert sum(v == "lab" for k, v in domains.items() if k.startswith(str(mixed.resolve()))) == 24
    (tmp_path / "bad.tsv").write_text("path\tdomain\tscore\nx.jpg\tgreenhouse\t0.5\n")
    with pytest.raises(DatasetError, match="lab\\|field"):
        read_domains(tmp_path / "bad.tsv")
    with pytest.raises(DatasetError, match="does not exist"):
        read_exclude(tmp_path / "missing.txt")


def test_apply_drops_listed_photos_and_splits_mixed_sources(
    tmp_path: Path, two_sources: tuple[Path, Path]
) -> None:
    lab, mixed = two_sources
    exclude, dropped, lab_style = audit_files(tmp_path / "audit", lab, mixed)
    folder = scan_sources([lab, mixed])
    out, applied = apply_audit(
        folder, exclude=str(exclude), domains=str(tmp_path / "audit" / "domains.tsv")
    )
    assert len(out.samples) == len(folder.samples) - 3
    assert {p for p, _ in applied.excluded} == set(dropped)
    assert applied.unmatched == 1
    # `lab` is all lab-style: one source; `mixed` has both: two.
    assert [s.name for s in out.sources] == ["lab", "mixed", "mixed:lab"]
    assert applied.split_sources == {"mixed": (24, 24)}
    moved = {s.path for s in out.samples if s.source == 2}
    assert moved == set(lab_style)
    assert out.source_counts() == {"lab": 21, "mixed": 24, "mixed:lab": 24}
    assert any("excluded 3 photo(s)" in line for line in applied.summary())


def test_train_honours_exclude_and_domains(tmp_path: Path, two_sources: tuple[Path, Path]) -> None:
    lab, mixed = two_sources
    exclude, dropped, _ = audit_files(tmp_path / "audit", lab, mixed)
    run = train_tiny(tmp_path / "run", [lab, mixed], epochs=1, exclude=str(exclude))
    split = json.loads((run / "split.json").read_text())
    assert [s["name"] for s in split["sources"]] == ["lab", "mixed", "mixed:lab"]
    kept_lab = {r[0] for k in ("train", "val", "test") for r in split[k] if r[2] == 0}
    assert len(kept_lab) == 24 - 3
    assert not {str(p.relative_to(lab)) for p in dropped} & kept_lab
    assert sum(split["counts"].values()) == 3 * 24 - 3
    rows = (run / "excluded.tsv").read_text().splitlines()
    assert rows[0] == "path\treason" and len(rows) == 4
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["exclude"] == str(exclude)
    assert cfg["domains"] == str(tmp_path / "audit" / "domains.tsv")  # found beside it
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["config"]["exclude"] == str(exclude)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"lab", "mixed", "mixed:lab"} <= set(metrics["sources"])


def test_one_source_without_audit_files_is_split_as_before(
    tmp_path: Path, two_sources: tuple[Path, Path]
) -> None:
    """No --exclude: the run's split is the plain stratified split of the folder."""
    from plantdx.data import stratified_split

    lab, _ = two_sources
    run = train_tiny(tmp_path / "run", lab, epochs=1)
    split = json.loads((run / "split.json").read_text())
    expected = stratified_split(scan_sources([lab]), seed=42)
    assert split["val"] == [[str(s.path.relative_to(lab)), s.label] for s in expected["val"]]
    assert not (run / "excluded.tsv").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["domains"] is None
