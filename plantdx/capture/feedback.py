"""From a capture to photos to label, and purging old captures.

`export_feedback` writes an ImageFolder: one folder per predicted class, and `uncertain/` for
abstained answers, each photo once (duplicates removed by the sha256 of the photo as sent),
named `<16 hex of its sha256>.<suffix>`, with `manifest.jsonl` and `manifest.csv` beside (one
row per photo: the sidecar's facts, the folder it was put in and how often it was captured).
A re-run adds only photos it has not exported before: those in the manifest, or found anywhere
in the folder (a labeller may have moved or renamed them), are left where they are, and a
photo the labeller deleted stays deleted.

A capture is data from the network, so every sidecar is checked before it is used
(`Sidecar.validate`: a sha256 of 64 hex digits, a photo file named like its sidecar and beside
it, labels without path separators, ...): a sidecar that fails is refused and counted, and a
photo that is a link out of the capture is refused too. Nothing is written outside the output
folder: a folder in it that leads elsewhere (a link) stops the export.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from plantdx.decision import UNCERTAIN
from plantdx.exceptions import CaptureError

from .record import SIDECAR_SUFFIX, Sidecar, sha256_hex
from .store import LocalStore, Store, open_store

log = logging.getLogger("plantdx.capture")

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
DATE_DIR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class ManifestRow:
    sha256: str
    path: str  # where export put the photo, relative to the output folder
    folder: str  # the predicted class, or "uncertain"
    prediction: str
    decision: str
    confidence: float
    reason: str
    version: str
    time: str  # the first capture
    captures: int  # how many times the photo was captured
    source: str  # the first capture's key in the capture


@dataclass(frozen=True)
class ExportResult:
    added: int
    duplicates: int  # captures of a photo seen before in this run or an earlier one
    skipped: int  # unreadable sidecars or missing photos
    by_folder: dict[str, int]
    refused: int = 0  # sidecars that fail validation, photos outside the capture


def _sidecars(store: Store) -> Iterator[str]:
    for key, _ in store.entries():
        parts = key.split("/")
        if len(parts) == 2 and DATE_DIR.match(parts[0]) and key.endswith(SIDECAR_SUFFIX):
            yield key


def _folder(sidecar: Sidecar) -> str:
    if sidecar.decision == UNCERTAIN:
        return UNCERTAIN
    name = re.sub(r"[/\\\0]", "_", sidecar.prediction).strip(". ") or "unnamed"
    return name


def _read_manifest(out: Path) -> dict[str, ManifestRow]:
    path = out / MANIFEST_JSONL
    rows: dict[str, ManifestRow] = {}
    if not path.is_file():
        return rows
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = ManifestRow(**json.loads(line))
        except (ValueError, TypeError) as exc:
            raise CaptureError(f"{path}:{n} is not a manifest row: {exc}") from exc
        rows[row.sha256] = row
    return rows


def _replace(out: Path, name: str, write: Callable[[TextIO], None]) -> None:
    """Write a file of `out` through a fresh temporary file (never one that already exists, so
    never through a link) renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, out / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_manifest(out: Path, rows: dict[str, ManifestRow]) -> None:
    ordered = sorted(rows.values(), key=lambda r: (r.time, r.sha256))

    def jsonl(f: TextIO) -> None:
        f.write("".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in ordered))

    def table(f: TextIO) -> None:
        writer = csv.DictWriter(f, fieldnames=list(ManifestRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in ordered)

    _replace(out, MANIFEST_JSONL, jsonl)
    _replace(out, MANIFEST_CSV, table)


def _inside(out: Path, rel: str) -> Path:
    """out/rel, refused (CaptureError) when it, or a folder on the way, leads outside `out`."""
    path = out / rel
    root = out.resolve()
    if path.is_symlink() or not path.resolve().is_relative_to(root):
        raise CaptureError(f"{path} leads outside {out}: remove the link and export again")
    return path


def _present(out: Path) -> set[str]:
    """sha256 of every photo already somewhere under the output folder."""
    found = set()
    for path in out.rglob("*"):
        if path.is_file() and path.parent != out and not path.name.startswith("."):
            found.add(sha256_hex(path.read_bytes()))
    return found


def export_feedback(capture: str | Store, out: str | Path) -> ExportResult:
    """Turn a capture (a folder, `s3://BUCKET/PREFIX`, or a Store) into photos to label."""
    store = open_store(capture) if isinstance(capture, str) else capture
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise CaptureError(f"capture folder {store.root} does not exist")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _read_manifest(out)
    present = _present(out)
    added = duplicates = skipped = refused = 0
    by_folder: dict[str, int] = {}
    sidecars = []
    for key in _sidecars(store):
        try:
            sidecar = Sidecar.from_json(store.get(key))
        except (OSError, CaptureError) as exc:
            log.warning("skipping %s: %s", key, exc)
            skipped += 1
            continue
        try:
            sidecars.append((key, sidecar.validate(key)))
        except CaptureError as exc:
            log.warning("refusing %s", exc)
            refused += 1
    groups: dict[str, list[tuple[str, Sidecar]]] = {}
    for key, sidecar in sorted(sidecars, key=lambda ks: (ks[1].time, ks[0])):
        groups.setdefault(sidecar.sha256, []).append((key, sidecar))
    for sha, group in groups.items():
        old = rows.get(sha)
        if old is not None:
            duplicates += len(group)
            rows[sha] = ManifestRow(**{**asdict(old), "captures": max(old.captures, len(group))})
            continue
        duplicates += len(group) - 1
        key, sidecar = group[0]
        photo_key = f"{key.rsplit('/', 1)[0]}/{sidecar.file}"
        folder = _folder(sidecar)
        suffix = Path(sidecar.file).suffix
        rel = f"{folder}/{sidecar.sha256[:16]}{suffix}"
        if sidecar.sha256 not in present:
            try:
                data = store.get(photo_key)
            except CaptureError as exc:  # a link out of the capture
                log.warning("refusing %s: %s", key, exc)
                refused += 1
                continue
            except Exception as exc:
                log.warning("skipping %s: photo %s unreadable (%s)", key, photo_key, exc)
                skipped += 1
                continue
            _inside(out, folder).mkdir(exist_ok=True)
            _write_new(_inside(out, rel), data)
            present.add(sidecar.sha256)
            added += 1
            by_folder[folder] = by_folder.get(folder, 0) + 1
        rows[sidecar.sha256] = ManifestRow(
            sha256=sidecar.sha256,
            path=rel,
            folder=folder,
            prediction=sidecar.prediction,
            decision=sidecar.decision,
            confidence=sidecar.confidence,
            reason=sidecar.reason,
            version=sidecar.version,
            time=sidecar.time,
            captures=len(group),
            source=key,
        )
    _write_manifest(out, rows)
    return ExportResult(
        added=added, duplicates=duplicates, skipped=skipped, by_folder=by_folder, refused=refused
    )


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never following a link planted there) and write `data`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags, 0o644), "wb") as f:
        f.write(data)


def purge(capture: str | Store, older_than_days: float, *, dry_run: bool = False) -> list[str]:
    """Delete the captures of UTC days wholly older than `older_than_days`; the keys removed."""
    if older_than_days < 0:
        raise CaptureError(f"--older-than must be 0 or more days, got {older_than_days}")
    store = open_store(capture) if isinstance(capture, str) else capture
    cutoff = datetime.now(timezone.utc) - timedelta(days=older_than_days)
    doomed = []
    for key, _ in store.entries():
        day, sep, _ = key.partition("/")
        m = DATE_DIR.match(day)
        if not (sep and m):
            continue
        end = datetime.combine(date(*map(int, m.groups())), datetime.min.time(), timezone.utc)
        if end + timedelta(days=1) <= cutoff:
            doomed.append(key)
    if doomed and not dry_run:
        store.delete(doomed)
    return doomed
