"""`plantdx data audit`: one report over several ImageFolders before training on them (byte
and near duplicates, mosaics and collages, label conflicts and label issues, corrupt or tiny
files, and a lab-style / field-style score per photo), and what training takes from it.

`run_audit` (in `run`) writes AUDIT/audit.json, report.md, sheets/*.png, exclude.txt and
domains.tsv; `apply` is the part training uses (`plantdx train --exclude`, `--domains`), and
`files` the two files' formats. Importing this package loads neither the feature model nor
the audit's libraries: `run` does.
"""

from __future__ import annotations

from .apply import LAB_SUFFIX, AuditApplied, apply_audit
from .files import (
    DOMAINS_FILENAME,
    EXCLUDE_FILENAME,
    domains_beside,
    photo_key,
    read_domains,
    read_exclude,
)

__all__ = [
    "DOMAINS_FILENAME",
    "EXCLUDE_FILENAME",
    "LAB_SUFFIX",
    "AuditApplied",
    "apply_audit",
    "domains_beside",
    "photo_key",
    "read_domains",
    "read_exclude",
]
