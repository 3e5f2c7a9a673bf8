"""`plantdx data audit` on photos made here (plantdx.synth lab leaves; the same leaves staged as
field photos): it finds a byte copy across sources, a cropped copy, a resized copy, a photo
under two labels, 2x2 mosaics, a corrupt file and a tiny file; it infers which source is the lab
reference and which the field one and scores a mixed source photo by photo; exclude.txt is
honoured by training. The last test runs it on the shared photos (slow; skipped without them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from plantdx.cli import app
from plantdx.synth import generate_dataset
from plantdx.training.audit import photo_key, read_domains, read_exclude
from plantdx.training.field_proxy import make_field_proxy

from helpers.common import train_tiny

CLASSES = ("Leaf___healthy", "Leaf___rust")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _field(root: Path, name: str, seed: int, per_class: int) -> Path:
    """Synthetic leaves staged as field photos (soil, companions, shadows, camera blur)."""
    lab = root / f"{name}-leaves"
    generate_dataset(lab, per_class=per_class, size=192, seed=seed, classes=CLASSES)
    make_field_proxy(lab, root / name, seed, size=192)
    shutil.rmtree(lab)
    return root / name


def _mosaic(tiles: list[Path], out: Path) -> None:
    canvas = Image.new("RGB", (256, 256))
    for k, p in enumerate(tiles):
        canvas.paste(
            Image.open(p).convert("RGB").resize((128, 128)), ((k % 2) * 128, (k // 2) * 128)
        )
    canvas.save(out, quality=92)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lab (pure), field (pure) and mixed (lab and field photos plus every kind of problem)."""
    root = tmp_path_factory.mktemp("audit-data")
    lab = root / "lab"
    generate_dataset(lab, per_class=24, size=192, seed=1, classes=CLASSES)
    generate_dataset(root / "other", per_class=1, size=192, seed=9, classes=CLASSES[1:])
    misfiled = lab / CLASSES[0] / "misfiled_rust.jpg"
    shutil.move(next((root / "other" / CLASSES[1]).glob("*.jpg")), misfiled)
    field = _field(root, "field", 2, 24)
    mixed = _field(root, "mixed", 3, 10)
    generate_dataset(root / "spare", per_class=18, size=192, seed=4, classes=CLASSES)
    for c in CLASSES:
        for p in sorted((root / "spare" / c).glob("*.jpg"))[:10]:
            shutil.copy(p, mixed / c / f"lab_{p.name}")
    spare = sorted((root / "spare").rglob("*.jpg"))
    made = {"lab": lab, "field": field, "mixed": mixed, "misfiled": misfiled}
    h, r = (mixed / c for c in CLASSES)
    made["byte_copy"] = h / "copy_of_lab.jpg"
    made["byte_original"] = sorted((lab / CLASSES[0]).glob("*.jpg"))[3]
    shutil.copy(made["byte_original"], made["byte_copy"])
    made["crop_original"] = sorted((field / CLASSES[1]).glob("*.jpg"))[5]
    img = Image.open(made["crop_original"])
    w, hh = img.size
    made["crop_copy"] = r / "cropped_copy.jpg"
    img.crop((int(0.12 * w), int(0.2 * hh), int(0.9 * w), int(0.95 * hh))).resize((240, 240)).save(
        made["crop_copy"], quality=80
    )
    made["resized_original"] = sorted(h.glob("[0-9]*.jpg"))[2]
    made["resized_copy"] = h / "resized_copy.jpg"
    Image.open(made["resized_original"]).resize((150, 150)).save(made["resized_copy"], quality=70)
    made["conflict_original"] = sorted((field / CLASSES[0]).glob("*.jpg"))[7]
    made["conflict_copy"] = r / "relabelled.jpg"
    shutil.copy(made["conflict_original"], made["conflict_copy"])
    made["inner_original"] = sorted(r.glob("[0-9]*.jpg"))[4]
    made["inner_copy"] = h / "relabelled_inside.jpg"
    shutil.copy(made["inner_original"], made["inner_copy"])
    made["mosaic_a"], made["mosaic_b"] = h / "mosaic_a.jpg", r / "mosaic_b.jpg"
    _mosaic(spare[10:14], made["mosaic_a"])
    _mosaic([spare[-1], spare[-2], spare[14], spare[15]], made["mosaic_b"])
    made["corrupt"] = r / "corrupt.jpg"
    made["corrupt"].write_bytes(made["byte_original"].read_bytes()[:400])
    made["tiny"] = h / "tiny.jpg"
    Image.open(spare[16]).resize((40, 40)).save(made["tiny"])
    made["speck"] = r / "speck.png"  # under training's decoder's 32 px: tiny, not corrupt
    Image.open(spare[17]).resize((20, 16)).save(made["speck"])
    shutil.rmtree(root / "spare")
    out = root / "AUDIT"
    result = CliRunner().invoke(
        app,
        ["data", "audit", str(lab), str(field), str(mixed), "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    made["out"] = out
    return made


def _doc(made: dict[str, Path]) -> dict:
    return json.loads((made["out"] / "audit.json").read_text())


def _paths(rows: list[dict]) -> set[str]:
    return {r["path"] for r in rows}


def _pairs(made: dict[str, Path]) -> dict[frozenset[str], dict]:
    return {
        frozenset((p["a"]["path"], p["b"]["path"])): p for p in _doc(made)["duplicates"]["pairs"]
    }


def test_corrupt_and_tiny_files(made: dict[str, Path]) -> None:
    doc = _doc(made)
    assert _paths(doc["corrupt"]) == {photo_key(made["corrupt"])}
    assert doc["corrupt"][0]["reason"].startswith("truncated")
    assert _paths(doc["tiny"]) == {photo_key(made["tiny"]), photo_key(made["speck"])}
    assert {(r["width"], r["height"]) for r in doc["tiny"]} == {(40, 40), (20, 16)}


def test_duplicates_byte_cropped_and_resized(made: dict[str, Path]) -> None:
    pairs = _pairs(made)
    key = lambda a, b: frozenset((photo_key(made[a]), photo_key(made[b])))  # noqa: E731
    byte = pairs[key("byte_copy", "byte_original")]
    assert (byte["kind"], byte["leak"]) == ("byte", "sources")
    crop = pairs[key("crop_copy", "crop_original")]
    assert (crop["kind"], crop["leak"]) == ("near", "sources")
    assert crop["phash_bits"] > 10  # the whole-image hash misses it; the features find it
    resized = pairs[key("resized_copy", "resized_original")]
    assert resized["kind"] == "near" and resized["leak"] in ("splits", None)
    # Nothing else: every other pair of photos made here is two different photos.
    made_pairs = {
        key(a, b)
        for a, b in (
            ("byte_copy", "byte_original"),
            ("crop_copy", "crop_original"),
            ("resized_copy", "resized_original"),
            ("conflict_copy", "conflict_original"),
            ("inner_copy", "inner_original"),
        )
    }
    assert set(pairs) - made_pairs == set()


def test_label_conflicts(made: dict[str, Path]) -> None:
    """Across sources the copy in the source named first stays; inside one source every copy
    goes."""
    pairs = _pairs(made)
    excluded = read_exclude(made["out"] / "exclude.txt")
    for copy, original in (
        ("conflict_copy", "conflict_original"),
        ("inner_copy", "inner_original"),
    ):
        pair = pairs[frozenset((photo_key(made[copy]), photo_key(made[original])))]
        assert pair["label_conflict"] and pair["a"]["label"] != pair["b"]["label"]
        assert excluded[photo_key(made[copy])].startswith("label_conflict")
    assert photo_key(made["conflict_original"]) not in excluded
    assert excluded[photo_key(made["inner_original"])].startswith("label_conflict")


def test_conflicts_drop_all(made: dict[str, Path]) -> None:
    """--conflicts drop-all: copies in two sources all go too."""
    from plantdx.data import Source
    from plantdx.training.audit.config import AuditConfig
    from plantdx.training.audit.decide import Flags, decide
    from plantdx.training.audit.duplicates import Pair
    from plantdx.training.audit.photos import THUMB, Described, Photo

    photos = [Photo(Path("a.jpg"), 0, "x", width=99, height=99), Photo(Path("b.jpg"), 1, "y")]
    d = Described(
        photos,
        [Source("s0", Path("s0")), Source("s1", Path("s1"))],
        [],
        np.zeros((2, 64), bool),
        np.zeros((2, 4), np.float32),
        np.zeros((2, THUMB, THUMB, 3), np.uint8),
        np.zeros((2, 8), np.float32),
    )
    pair = Pair(0, 1, "byte", 1.0, 0, None, leak="sources", conflict=True)
    for policy, dropped in (("keep_first", {1}), ("drop_all", {0, 1})):
        flags = Flags(pairs=[pair], groups=[[0, 1]])
        decide(d, flags, AuditConfig(conflicts=policy))  # type: ignore[arg-type]
        assert set(flags.excluded) == dropped
        assert all(why.startswith("label_conflict") for why in flags.excluded.values())


def test_label_issue_flagged_not_excluded(made: dict[str, Path]) -> None:
    """A rust leaf filed under healthy: cleanlab flags it, exclude.txt lists it as a comment."""
    issues = {x["path"]: x for x in _doc(made)["label_issues"]["issues"]}
    flagged = issues[photo_key(made["misfiled"])]
    assert (flagged["label"], flagged["suggested"]) == CLASSES
    assert flagged["confidence"] > 0.5
    assert photo_key(made["misfiled"]) not in read_exclude(made["out"] / "exclude.txt")
    text = (made["out"] / "exclude.txt").read_text()
    assert f"# {photo_key(made['misfiled'])}\tlabel_issue" in text


def test_mosaics_found_and_nothing_else(made: dict[str, Path]) -> None:
    found = {(r["path"], r["kind"]) for r in _doc(made)["mosaics"]}
    assert found == {
        (photo_key(made["mosaic_a"]), "mosaic"),
        (photo_key(made["mosaic_b"]), "mosaic"),
    }


def test_exclude_file(made: dict[str, Path]) -> None:
    excluded = read_exclude(made["out"] / "exclude.txt")
    reasons = {Path(p).name: why.split(":")[0] for p, why in excluded.items()}
    assert reasons["corrupt.jpg"] == "corrupt"
    assert reasons["tiny.jpg"] == reasons["speck.png"] == "tiny"
    assert reasons["mosaic_a.jpg"] == reasons["mosaic_b.jpg"] == "mosaic"
    # Of each pair of copies the one in the source named first (then the larger) stays.
    assert reasons["copy_of_lab.jpg"] == "duplicate"
    assert photo_key(made["byte_original"]) not in excluded
    assert reasons["cropped_copy.jpg"] == "duplicate"
    assert photo_key(made["crop_original"]) not in excluded
    assert reasons["resized_copy.jpg"] == "duplicate"
    assert photo_key(made["resized_original"]) not in excluded
    assert reasons["relabelled.jpg"] == reasons["relabelled_inside.jpg"] == "label_conflict"
    assert len(excluded) == 11


def test_domains_references_inferred_and_mixed_source_scored(made: dict[str, Path]) -> None:
    doc = _doc(made)["domains"]
    assert doc["lab_references"] == ["lab"] and doc["field_references"] == ["field"]
    assert doc["how"].startswith("inferred")
    domains = read_domains(made["out"] / "domains.tsv")
    mixed = made["mixed"]
    lab_style = [p for p in mixed.rglob("lab_*.jpg")]
    field_style = [p for c in CLASSES for p in (mixed / c).glob("[0-9]*.jpg")]
    assert len(lab_style) == 20 and len(field_style) == 20
    right = sum(domains[photo_key(p)] == "lab" for p in lab_style)
    right += sum(domains[photo_key(p)] == "field" for p in field_style)
    assert right >= 36, f"{right} of 40 domain calls right"
    assert doc["by_source"]["mixed"]["mixed"] is True
    assert doc["by_source"]["lab"]["mixed"] is False and doc["by_source"]["field"]["mixed"] is False


def test_report_and_sheets(made: dict[str, Path]) -> None:
    """report.md has the table; the contact sheets are written."""
    out = made["out"]
    report = (out / "report.md").read_text()
    assert "| mosaics | 2 |" in report
    sheets = {p.name for p in (out / "sheets").glob("*.png")}
    assert {"duplicates.png", "mosaics.png", "label_conflicts.png", "tiny.png"} <= sheets
    assert Image.open(out / "sheets" / "mosaics.png").size[0] > 200


def _fake(sources: list[np.ndarray]) -> tuple[object, np.ndarray]:
    """A Described whose features are the given rows, one array of rows per source."""
    from plantdx.data import Source
    from plantdx.training.audit.photos import THUMB, Described, Photo

    feats = np.concatenate(sources).astype(np.float32)
    photos = [
        Photo(Path(f"s{k}/{i}.jpg"), k, "x")
        for k, rows in enumerate(sources)
        for i in range(len(rows))
    ]
    n = len(photos)
    d = Described(
        photos,
        [Source(f"s{k}", Path(f"s{k}")) for k in range(len(sources))],
        [],
        np.zeros((n, 64), bool),
        np.zeros((n, 4), np.float32),
        np.zeros((n, THUMB, THUMB, 3), np.uint8),
        feats / np.linalg.norm(feats, axis=1, keepdims=True),
    )
    return d, d.features


def test_references_named_and_inferred() -> None:
    """Two tight, opposite sources and a mixed one: with no names the pure pair is found and
    the tighter is lab; named --lab alone finds the field source; naming both takes them."""
    from plantdx.training.audit.config import AuditConfig
    from plantdx.training.audit.domain import choose_references

    rng = np.random.default_rng(0)
    dim = 16
    lab_centre, field_centre = np.eye(dim)[0] * 3, np.eye(dim)[1] * 3
    lab = lab_centre + rng.normal(0, 0.3, (60, dim))
    field = field_centre + rng.normal(0, 0.8, (60, dim))
    mixed = np.concatenate([lab_centre + rng.normal(0, 0.3, (30, dim)), field[:30] + 0.01])
    d, z = _fake([field, mixed, lab])  # the lab source is named last on purpose
    rows = np.arange(len(z))
    found = choose_references(d, z, rows, AuditConfig())  # type: ignore[arg-type]
    assert (found.lab, found.field) == ([2], [0]), found.how
    assert found.how.startswith("inferred")
    found = choose_references(d, z, rows, AuditConfig(lab=["s2"]))  # type: ignore[arg-type]
    assert (found.lab, found.field) == ([2], [0])
    found = choose_references(d, z, rows, AuditConfig(lab=["s1"], field=["s0"]))  # type: ignore[arg-type]
    assert (found.lab, found.field, found.how) == ([1], [0], "named (--lab, --field)")
    # Only mixed sources: no pair qualifies, and the report says to name them.
    d2, z2 = _fake([mixed, np.concatenate([field[30:], lab[:30]])])
    none = choose_references(d2, z2, np.arange(len(z2)), AuditConfig())  # type: ignore[arg-type]
    assert none.lab == [] and "--lab DIR and --field DIR" in none.how


def test_audit_errors_are_clear(tmp_path: Path, made: dict[str, Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "audit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]
    )
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception) + result.output
    result = runner.invoke(
        app,
        [
            "data",
            "audit",
            str(made["lab"]),
            str(made["field"]),
            "--lab",
            str(tmp_path),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code != 0
    assert "not one of the audited sources" in str(result.exception) + result.output


def test_training_honours_the_audit(made: dict[str, Path], tmp_path: Path) -> None:
    run = train_tiny(
        tmp_path / "run",
        [made["lab"], made["field"], made["mixed"]],
        epochs=1,
        exclude=str(made["out"] / "exclude.txt"),
    )
    split = json.loads((run / "split.json").read_text())
    names = [s["name"] for s in split["sources"]]
    assert names == ["lab", "field", "mixed", "mixed:lab"]
    roots = [Path(s["root"]) for s in split["sources"]]
    used = {photo_key(roots[r[2]] / r[0]) for k in ("train", "val", "test") for r in split[k]}
    excluded = read_exclude(made["out"] / "exclude.txt")
    assert not used & set(excluded)
    lab_group = {
        photo_key(roots[3] / r[0]) for k in ("train", "val", "test") for r in split[k] if r[2] == 3
    }
    domains = read_domains(made["out"] / "domains.tsv")
    assert lab_group and all(domains[p] == "lab" for p in lab_group)
    assert len((run / "excluded.tsv").read_text().splitlines()) == 1 + len(excluded)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared photos are not at {SHARED}")
def test_audit_of_the_shared_sources(tmp_path: Path) -> None:
    """The default command on the shared photos: references inferred, the mixed source found
    mixed, its mosaics and its copies of PlantDoc photos found."""
    from plantdx.training.audit.config import AuditConfig
    from plantdx.training.audit.run import run_audit

    names = ["plantvillage-train", "plantdoc-field-train", "tomato-mixed-extra"]
    result = run_audit(AuditConfig(sources=[str(SHARED / n) for n in names], out=str(tmp_path)))
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert doc["domains"]["lab_references"] == [names[0]]
    assert doc["domains"]["field_references"] == [names[1]]
    by = doc["domains"]["by_source"]
    assert by[names[2]]["mixed"] and not by[names[0]]["mixed"] and not by[names[1]]["mixed"]
    rows = {r["category"]: r for r in result.rows}
    assert rows["mosaics"]["by_source"][names[2]] >= 800
    assert rows["mosaics"]["by_source"][names[0]] <= 3
    cross = [
        p
        for p in doc["duplicates"]["pairs"]
        if {p["a"]["source"], p["b"]["source"]} == {names[1], names[2]}
    ]
    assert len(cross) >= 150
    assert np.isfinite(result.seconds["total"])
