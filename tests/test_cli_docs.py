"""docs/cli.md stays in step with the `edgeship` command tree and its --help."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgeship.sdk.cli import EXIT_INTERNAL, EXIT_INTERRUPTED, main

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under `group` (nested groups included), with its path of names."""
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*prefix, name))


COMMANDS = list(_walk(main))
IDS = [" ".join(path) for path, _ in COMMANDS]


def _long_options(command: click.Command) -> list[str]:
    return sorted({opt for p in command.params if isinstance(p, click.Option)
                   for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")})


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_tree_has_the_known_commands() -> None:
    assert {"convert", "inspect", "ops", "eval-host"} <= {path[0] for path, _ in COMMANDS}


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_command_has_help_text(path: tuple[str, ...], command: click.Command) -> None:
    assert (command.help or "").strip(), f"edgeship {' '.join(path)} has no help text"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_doc_covers_command_and_options(doc: str, path: tuple[str, ...], command: click.Command) -> None:
    name = "edgeship " + " ".join(path)
    assert name in doc, f"docs/cli.md does not mention {name!r}"
    missing = [opt for opt in _long_options(command) if opt not in doc]
    assert not missing, f"docs/cli.md lacks options of {name}: {', '.join(missing)}"
    arguments = [p.human_readable_name for p in command.params if isinstance(p, click.Argument)]
    assert [a for a in arguments if a not in doc] == [], f"docs/cli.md lacks arguments of {name}"


def test_doc_covers_group_options_and_exit_codes(doc: str) -> None:
    for opt in _long_options(main):
        assert opt in doc, f"docs/cli.md lacks group option {opt}"
    for code in (0, 1, 2, EXIT_INTERNAL, EXIT_INTERRUPTED):
        assert f"`{code}`" in doc, f"docs/cli.md does not list exit code {code}"
    assert "edgeship: error:" in doc


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_command_help_exits_0(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="edgeship")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: edgeship {' '.join(path)} ")
    for opt in _long_options(command):
        assert opt in result.output


def test_group_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"], prog_name="edgeship")
    assert result.exit_code == 0, result.output
    for name in main.commands:
        assert name in result.output
    assert "--debug" in result.output and "--version" in result.output
