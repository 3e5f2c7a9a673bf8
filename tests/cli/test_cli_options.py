"""The CLI as typer users expect it: every choice listed by --help, -v/--quiet, one command per
meaning (architectures apart from server model control)."""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable

import pytest
import typer
from typer.testing import CliRunner

from plantdx import choices
from plantdx.cli import app
from plantdx.cli.console import log_level

WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def _commands(typer_app: typer.Typer, path: list[str]) -> list[tuple[list[str], Callable]]:
    """Every command function of `plantdx`, with its path."""
    found: list[tuple[list[str], Callable]] = []
    for info in typer_app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__.replace("_", "-")
        found.append(([*path, name], info.callback))
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        assert sub is not None and group.name
        found += _commands(sub, [*path, group.name])
    return found


def _literal_of(hint: object) -> tuple[str, ...] | None:
    """The values of a Literal type (or of an optional one)."""
    for arg in (hint, *typing.get_args(hint)):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def _choice_options() -> list[tuple[list[str], str, list[str]]]:
    """(command path, option, values) of every option whose type is a Literal."""
    rows = []
    for path, fn in _commands(app, []):
        for hint in typing.get_type_hints(fn, include_extras=True).values():
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, *meta = typing.get_args(hint)
            values = _literal_of(base)
            if values is None:
                continue
            # In Annotated form typer takes a leading "--name" as the first declaration.
            names = [n for m in meta for n in (m.default, *m.param_decls) if isinstance(n, str)]
            decls = [n for n in names if n.startswith("--")]
            rows.append((path, decls[0], list(values)))
    return rows


CHOICES = _choice_options()


def test_the_expected_options_are_choices() -> None:
    found = {(" ".join(path), opt) for path, opt, _ in CHOICES}
    for expected in [
        ("predict", "--protocol"),
        ("predict", "--explain-resize"),
        ("export", "--to"),
        ("export", "--precision"),
        ("export", "--target"),
        ("export", "--kind"),
        ("export", "--version-policy"),
        ("bench serve", "--protocol"),
        ("bench serve", "--driver"),
        ("bench train", "--device"),
        ("train", "--device"),
        ("train", "--resize"),
        ("evaluate", "--split"),
        ("data audit", "--conflicts"),
        ("data field-proxy", "--split"),
        ("promote", "--metric"),
        ("compare", "--protocol"),
        ("models status", "--protocol"),
        ("models load", "--protocol"),
    ]:
        assert expected in found


@pytest.mark.parametrize(
    ("path", "opt", "values"), CHOICES, ids=[f"{' '.join(p)} {o}" for p, o, _ in CHOICES]
)
def test_help_lists_every_choice(path: list[str], opt: str, values: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    for v in values:
        assert v in result.output, (opt, v)


def test_a_value_outside_the_choices_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["models", "status", "--protocol", "ftp"], env=WIDE)
    assert result.exit_code == 2
    assert "ftp" in result.output


def test_every_choice_is_one_of_the_stage_choices() -> None:
    """The options take the values the stage configs take: plantdx.choices, nothing else."""
    shared = {
        typing.get_args(v) for v in vars(choices).values() if typing.get_origin(v) is typing.Literal
    }
    assert len(shared) >= 15
    for path, opt, values in CHOICES:
        assert tuple(values) in shared, (path, opt, values)


def test_a_choice_reaches_the_stage_as_its_string() -> None:
    from unittest import mock

    with mock.patch("plantdx.serving.control.ModelControl") as control:
        control.return_value.status.side_effect = RuntimeError("stop here")
        CliRunner().invoke(app, ["models", "status", "--protocol", "grpc"], env=WIDE)
    assert control.call_args.kwargs["protocol"] == "grpc"
    assert type(control.call_args.kwargs["protocol"]) is str


def test_architectures_is_its_own_command() -> None:
    result = CliRunner().invoke(app, ["architectures"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("efficientnet_lite0") and "224 px" in line for line in lines)
    assert any(line.startswith("mobilenet_v3_small") for line in lines)
    assert any(line.startswith("vit ") for line in lines)
    models = CliRunner().invoke(app, ["models", "--help"], env=WIDE)
    assert models.exit_code == 0
    assert "status" in models.output and "unload" in models.output
    gone = CliRunner().invoke(app, ["models", "list"], env=WIDE)
    assert gone.exit_code == 2


@pytest.mark.parametrize(
    ("verbose", "quiet", "env", "level"),
    [
        (0, False, None, "WARNING"),
        (0, False, "debug", "DEBUG"),
        (1, False, "debug", logging.INFO),
        (2, False, None, logging.DEBUG),
        (0, True, "debug", logging.ERROR),
        (2, True, None, logging.ERROR),
    ],
)
def test_log_level(verbose: int, quiet: bool, env: str | None, level: int | str) -> None:
    assert log_level(verbose, quiet, env) == level


def test_verbose_and_quiet_set_the_root_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLANTDX_LOG", raising=False)
    root = logging.getLogger()
    before = root.level
    try:
        assert CliRunner().invoke(app, ["-vv", "architectures"]).exit_code == 0
        assert root.level == logging.DEBUG
        assert CliRunner().invoke(app, ["--quiet", "architectures"]).exit_code == 0
        assert root.level == logging.ERROR
        monkeypatch.setenv("PLANTDX_LOG", "info")
        assert CliRunner().invoke(app, ["architectures"]).exit_code == 0
        assert root.level == logging.INFO
        handlers = [h for h in root.handlers if getattr(h, "plantdx", False)]
        assert len(handlers) == 1  # re-running does not stack handlers
    finally:
        root.setLevel(before)
