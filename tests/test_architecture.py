"""The floors run one way: CLI → orchestrators (promotion, bench) → stages (training, export,
serving, client, drift) → model_repository (the format under export and serving) → core →
exceptions, and inside the core: checkpoint → models, data, capture, ... → the basics. An AST
walk of every module (imports inside functions and under `if TYPE_CHECKING:` included) checks
that no module imports a floor above its own, that stages do not import each other, that no two
modules import each other, directly or round a longer loop, and that no module outgrows one
job (MAX_LINES). The packages and their folders are pyproject.toml's."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
_SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# Import name → folder, and every package the wheel ships, as pyproject.toml declares them.
PACKAGE_DIRS: dict[str, str] = _SETUPTOOLS["package-dir"]
PACKAGES: list[str] = _SETUPTOOLS["packages"]
STAGES = {"training", "export", "serving", "client", "drift"}
FLOORS = {"exceptions": 0, "core": 1, "model_repository": 2, **dict.fromkeys(STAGES, 3)}
FLOORS.update({"promotion": 4, "bench": 4, "cli": 5})
# The floors inside the core (README, "Architecture"), by top-level module or sub-package.
CORE_FLOORS = {
    # The fixed choices of configs and options: imports nothing.
    "choices": 1,
    # The basics: they import nothing of the core but the choices.
    **dict.fromkeys(("plantdx", "addresses", "config", "crops", "decision", "files"), 2),
    **dict.fromkeys(("cores", "heatmap", "imagestats", "labels", "preprocessing"), 2),
    **dict.fromkeys(("synth_paint", "tracking"), 2),
    # Built on the basics.
    **dict.fromkeys(("capture", "data", "models", "overlay", "reference", "synth"), 3),
    # A trained model: its network (models), preprocessing, crops and files; a reference as
    # the served series.
    **dict.fromkeys(("checkpoint", "reference_series"), 4),
}
# The package's entry point (`python -m plantdx`) runs the CLI.
ENTRY_POINTS = {"plantdx.__main__"}
MAX_LINES = 400


def package_dir(package: str) -> Path:
    """The folder of an import package, by pyproject.toml's package-dir (longest prefix)."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in PACKAGE_DIRS:
            return ROOT / PACKAGE_DIRS[prefix] / Path(*parts[i:])
    return ROOT / Path(*parts)


def room(module: str) -> str:
    """The floor a module lives on, by its package."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FLOORS and parts[1] != "core":
        return parts[1]
    return "core"


def core_unit(module: str) -> str:
    """A core module's place in CORE_FLOORS: its top-level module or sub-package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def level(module: str) -> tuple[int, int]:
    """The floor, and inside the core its floor there."""
    floor = FLOORS[room(module)]
    return (floor, CORE_FLOORS.get(core_unit(module), 0) if room(module) == "core" else 0)


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of every package pyproject.toml lists."""
    for package in PACKAGES:
        for path in sorted(package_dir(package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, path


def imports(module: str, path: Path) -> set[str]:
    """Every plantdx module `module` imports: at the top, inside a function, or for the type
    checker only (`if TYPE_CHECKING:`), since a circle closed by an annotation is a circle."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from package import module` imports that module.
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("plantdx")}


def graph() -> dict[str, set[str]]:
    known = dict(modules())
    edges = {}
    for module, path in known.items():
        edges[module] = {m for m in imports(module, path) if m in known and m != module}
    return edges


def test_no_module_imports_a_floor_above_its_own() -> None:
    upward = [
        f"{m} ({room(m)} {level(m)}) imports {t} ({room(t)} {level(t)})"
        for m, targets in graph().items()
        for t in targets
        if m not in ENTRY_POINTS and level(t) > level(m)
    ]
    assert not upward, "\n".join(upward)


def test_every_core_module_has_a_core_floor() -> None:
    """A new core module is given its floor here (and in README's table) before it lands."""
    core = {core_unit(m) for m in graph() if room(m) == "core" and m not in ENTRY_POINTS}
    assert core <= set(CORE_FLOORS), sorted(core - set(CORE_FLOORS))


def test_every_package_folder_is_a_listed_package() -> None:
    """Every folder with an __init__.py under a package root is in pyproject.toml's packages,
    so the walk (and the wheel) sees all of it."""
    listed = {package_dir(p) for p in PACKAGES}
    roots = {ROOT / d for d in PACKAGE_DIRS.values()}
    found = {i.parent for r in roots for i in r.rglob("__init__.py")}
    assert found <= listed, sorted(str(p.relative_to(ROOT)) for p in found - listed)


def test_no_module_is_over_max_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for _, path in modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "\n".join(long)


def test_stages_do_not_import_each_other() -> None:
    across = [
        f"{m} imports {t}"
        for m, targets in graph().items()
        for t in targets
        if room(m) in STAGES and room(t) in STAGES and room(m) != room(t)
    ]
    assert not across, "\n".join(across)


def test_no_import_circle() -> None:
    edges = graph()
    # A package's __init__ re-exporting its own modules is not a circle.
    edges = {
        m: {t for t in ts if not (m.startswith(f"{t}.") and t in edges)} for m, ts in edges.items()
    }
    circles = []
    for start in sorted(edges):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    circles.append(" → ".join([*path, start]))
                elif nxt not in seen and nxt > start:  # each circle once, from its smallest name
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "\n".join(circles)


def _string_choices(tree: ast.AST) -> Iterator[tuple[int, frozenset[str]]]:
    """(line, values) of every Literal of strings, Enum of strings and literal tuple, list or
    set of two or more strings."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("Literal"):
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        elif isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) > 1:
            elts = node.elts
        elif isinstance(node, ast.ClassDef) and "Enum" in ast.unparse(node):
            elts = [s.value for s in node.body if isinstance(s, ast.Assign)]
        else:
            continue
        if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts):
            yield node.lineno, frozenset(e.value for e in elts if isinstance(e, ast.Constant))


def test_each_choice_is_written_once() -> None:
    """The fixed choices of the configs and the CLI (plantdx/choices.py) are imported, never
    written again as another Literal, an Enum or a tuple of the same values."""
    own = ROOT / "plantdx" / "choices.py"
    choices = {values for _, values in _string_choices(ast.parse(own.read_text()))}
    assert len(choices) >= 15
    again = [
        f"{path.relative_to(ROOT)}:{line} {sorted(values)}"
        for _, path in modules()
        if path != own
        for line, values in _string_choices(ast.parse(path.read_text()))
        if values in choices
    ]
    assert not again, "\n".join(again)


def test_the_walk_sees_the_floors() -> None:
    """The checker itself: it finds modules on every floor and the edges it must judge."""
    edges = graph()
    assert {room(m) for m in edges} >= {"cli", "core", "model_repository", *STAGES, "promotion"}
    assert "plantdx.exceptions" in edges["plantdx.model_repository.journal"]
    assert room("plantdx.cli.predict") == "cli" and room("plantdx.decision") == "core"
    # Sub-packages are walked, and imports for the type checker only are edges too.
    assert "plantdx.training.audit.features" in edges
    assert "plantdx.serving.server" in edges["plantdx.serving.served_version"]
    assert level("plantdx.checkpoint") > level("plantdx.models.registry") > level("plantdx.files")


def test_repository_commands_do_not_load_torch(tiny_repo: Path) -> None:
    """`plantdx repo list/validate` hash files and read configs: no PyTorch needed or loaded."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from plantdx.cli import app; "
        f"r = [CliRunner().invoke(app, ['repo', c, {str(tiny_repo)!r}]) for c in ('list', 'validate')]; "
        "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
