"""mypy over the package as Python imports it.

The stages live in top-level folders that pyproject's package-dir maps into `plantdx`
(`training/` is `plantdx.training`, ...). mypy knows no such mapping: checking the folders as
they lie, every import written `plantdx.<stage>...` is a missing module to it, and nothing
crossing a floor is type-checked. This script lays the package out as it is installed, as a tree
of links under build/typecheck/ (made anew each run), and runs mypy on it with pyproject's
settings. Errors name `plantdx/<stage>/...` for a file in `<stage>/`.

    python scripts/typecheck.py [mypy options]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def build_tree(dest: Path) -> Path:
    """dest/plantdx: plantdx/'s own entries and every mapped stage folder, as links."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    if dest.exists():
        shutil.rmtree(dest)
    package = dest / "plantdx"
    package.mkdir(parents=True)
    for entry in (ROOT / mapping["plantdx"]).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        parts = name.split(".")
        if parts[0] != "plantdx" or len(parts) != 2:
            continue
        (package / parts[1]).symlink_to(ROOT / folder)
    return package


def main(argv: list[str]) -> int:
    from mypy import api

    tree = ROOT / "build" / "typecheck"
    build_tree(tree)
    os.chdir(tree)  # errors then read plantdx/<stage>/...
    config = str(ROOT / "pyproject.toml")
    cache = str(
        ROOT / ".mypy_cache" / "package"
    )  # apart from a bare mypy's modules of the same names
    out, err, code = api.run(["--config-file", config, "--cache-dir", cache, *argv, "plantdx"])
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
