"""The two files a data audit hands to training: `exclude.txt` and `domains.tsv`.

exclude.txt: one photo a line, `PATH<TAB>REASON`; blank lines and lines starting with `#` are
comments (the audit lists what it flags but does not exclude by default as `# ` lines, so
removing the `# ` excludes them). A PATH is absolute as the audit writes it; a relative PATH,
as a person may write it, is taken from the current directory, as `--data` is.

domains.tsv: a header line `path<TAB>domain<TAB>score`, then one photo a line: its absolute
path, `lab` or `field`, and the score (the probability that the photo is field-style, 0..1).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from plantdx.exceptions import DatasetError

EXCLUDE_FILENAME = "exclude.txt"
DOMAINS_FILENAME = "domains.tsv"
DOMAINS = ("lab", "field")
DOMAINS_HEADER = "path\tdomain\tscore"


def photo_key(path: str | Path) -> str:
    """The one spelling of a photo's path that audit files and training compare."""
    return str(Path(path).expanduser().resolve())


def write_exclude(
    path: Path,
    excluded: Iterable[tuple[str, str]],
    *,
    header: Iterable[str] = (),
    commented: Iterable[tuple[str, str]] = (),
) -> None:
    """`excluded` and `commented` are (path, reason) pairs; `header` comment lines go first."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines += [f"{_clean(p)}\t{_clean(why)}" for p, why in excluded]
    commented = list(commented)
    if commented:
        lines.append("# flagged, not excluded (remove the '# ' to exclude):")
        lines += [f"# {_clean(p)}\t{_clean(why)}" for p, why in commented]
    path.write_text("\n".join(lines) + "\n")


def read_exclude(path: str | Path) -> dict[str, str]:
    """{photo_key: reason} of every photo the file excludes."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"exclude file {p} does not exist")
    out: dict[str, str] = {}
    for line in p.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, why = line.partition("\t")
        out[photo_key(name.strip())] = why.strip() or "listed"
    return out


def write_domains(path: Path, rows: Iterable[tuple[str, str, float]]) -> None:
    lines = [DOMAINS_HEADER]
    for name, domain, score in rows:
        if domain not in DOMAINS:
            raise ValueError(f"domain {domain!r} is not one of {DOMAINS}")
        lines.append(f"{_clean(name)}\t{domain}\t{score:.4f}")
    path.write_text("\n".join(lines) + "\n")


def read_domains(path: str | Path) -> dict[str, str]:
    """{photo_key: 'lab' | 'field'} of every photo the file names."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"domains file {p} does not exist")
    out: dict[str, str] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip() or line == DOMAINS_HEADER or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in DOMAINS:
            raise DatasetError(
                f"{p}:{n}: expected PATH<TAB>lab|field<TAB>SCORE, got {line[:120]!r}"
            )
        out[photo_key(parts[0])] = parts[1]
    return out


def domains_beside(exclude: str | Path | None) -> Path | None:
    """The domains.tsv in the exclude file's folder, when there is one."""
    if not exclude:
        return None
    candidate = Path(exclude).parent / DOMAINS_FILENAME
    return candidate if candidate.is_file() else None


def _clean(text: str) -> str:
    """No tab or newline inside a field of a one-line-per-photo file."""
    return " ".join(str(text).replace("\t", " ").splitlines())
