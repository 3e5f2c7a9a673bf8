"""What a data audit changes in a training run, before the split: the photos its exclude file
lists are dropped, and a source whose photos are of both domains (lab-style and field-style,
from domains.tsv) becomes two sources, `NAME` (its field-style photos) and `NAME:lab` (its
lab-style ones), so that each is sampled and reported on its own and lab photos of a mixed
source do not count as field photos."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from plantdx.data import ImageFolder, Sample, Source

from .files import photo_key, read_domains, read_exclude

LAB_SUFFIX = ":lab"
# A source is mixed when each domain holds at least this share of its photos and MIN_PHOTOS.
MIN_SHARE = 0.05
MIN_PHOTOS = 10


@dataclass
class AuditApplied:
    """What was changed, for the run's files and messages."""

    exclude_file: str | None = None
    excluded: list[tuple[Path, str]] = field(default_factory=list)
    # Lines of the exclude file that name no photo of this run's sources.
    unmatched: int = 0
    domains_file: str | None = None
    # A mixed source's name → (field-style photos, lab-style photos) after the exclusions.
    split_sources: dict[str, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> list[str]:
        lines = []
        if self.exclude_file:
            more = f"; {self.unmatched} listed path(s) are in no --data folder" * bool(
                self.unmatched
            )
            lines.append(
                f"excluded {len(self.excluded)} photo(s) listed in {self.exclude_file} "
                f"(listed in excluded.tsv){more}"
            )
        for name, (n_field, n_lab) in self.split_sources.items():
            lines.append(
                f"{name}: {n_field} field-style photo(s) stay '{name}', {n_lab} lab-style "
                f"photo(s) become '{name}{LAB_SUFFIX}' ({self.domains_file})"
            )
        return lines


def apply_audit(
    folder: ImageFolder,
    *,
    exclude: str | None = None,
    domains: str | None = None,
) -> tuple[ImageFolder, AuditApplied]:
    """`folder` without the excluded photos and with its mixed sources split by domain."""
    applied = AuditApplied(exclude_file=exclude, domains_file=domains)
    samples = list(folder.samples)
    if exclude:
        listed = read_exclude(exclude)
        keep: list[Sample] = []
        found: set[str] = set()
        for s in samples:
            key = photo_key(s.path)
            if key in listed:
                applied.excluded.append((s.path, listed[key]))
                found.add(key)
            else:
                keep.append(s)
        applied.unmatched = len(set(listed) - found)
        samples = keep
    sources = list(folder.sources)
    if domains:
        domain_of = read_domains(domains)
        for k, src in enumerate(folder.sources):
            lab = {
                id(s)
                for s in samples
                if s.source == k and domain_of.get(photo_key(s.path)) == "lab"
            }
            n = sum(1 for s in samples if s.source == k)
            if not is_mixed(len(lab), n - len(lab)):
                continue
            new = len(sources)
            sources.append(Source(f"{src.name}{LAB_SUFFIX}", src.root))
            samples = [dataclasses.replace(s, source=new) if id(s) in lab else s for s in samples]
            applied.split_sources[src.name] = (n - len(lab), len(lab))
    return dataclasses.replace(folder, samples=samples, sources=sources), applied


def is_mixed(n_lab: int, n_field: int) -> bool:
    """Whether a source with these many lab-style and field-style photos is split in two."""
    n = n_lab + n_field
    return n > 0 and min(n_lab, n_field) >= max(MIN_PHOTOS, MIN_SHARE * n)
