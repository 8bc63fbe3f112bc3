"""Errors about one argument: the library names its parameter, the CLI names its flag.

An EdgeshipError raised with ``option="calib_samples"`` reads ``calib_samples: ...`` from Python
and ``edgeship: error: --calib-samples: ...`` from the command line. The commands run in-process
(click's CliRunner) on inputs that fail before any TensorFlow import; a scan of the library's
source keeps CLI flags out of its error messages for good.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from edgeship.converters.data import MIN_CALIBRATION_SAMPLES, pick_calibration
from edgeship.converters.recipe import Recipe
from edgeship.sdk import errors
from edgeship.sdk.boards import Board
from edgeship.sdk.catalogue import add_board, entry_for
from edgeship.sdk.cli import main
from edgeship.sdk.errors import DatasetError, UsageError
from edgeship.sdk.setup import serial_steps

ROOT = Path(__file__).resolve().parent.parent


def _error_line(args: list[str], code: int, env: dict[str, str] | None = None) -> str:
    """Run `edgeship ARGS` in-process; it must fail with ``code`` and print one error line, no traceback."""
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: "), result.stderr
    return lines[0]


# --- (a) the CLI words an option's error with its flag ----------------------------------------

@pytest.mark.parametrize(("args", "start"), [
    (["-r", "float16", "--io", "int8"], "--io: int8 needs an integer recipe"),
    (["-r", "int8"], "--calib: recipe int8 needs calibration data"),
    (["-r", "qat"], "--train: recipe qat needs training data"),
    (["-r", "float32", "--sparsity", "1.5", "--train", "t.npz"], "--sparsity: must be between 0 and 1"),
    (["-r", "int8", "--calib", "c.npz", "--keep-float", "auto:0"], "--keep-float: auto:0: auto:N needs a whole number"),
    (["-r", "qat", "--train", "t.npz", "--worker-timeout", "5"], "--worker-timeout: goes with strategy multiworker"),
    (["-r", "float32", "--strategy", "mirrored"], "--strategy: mirrored distributes fine-tuning"),
])
def test_a_bad_recipe_option_is_one_line_naming_its_flag(tmp_path: Path, args: list[str], start: str) -> None:
    line = _error_line(["convert", str(tmp_path / "m.keras"), "-o", str(tmp_path / "b"), *args], 2)
    assert line.startswith(f"edgeship: error: {start}"), line
    assert not (tmp_path / "b").exists()


def test_an_existing_board_names_force(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert CliRunner().invoke(main, ["boards", "add", "desk", "local"], env=env).exit_code == 0
    line = _error_line(["boards", "add", "desk", "local"], 2, env)
    assert line.startswith("edgeship: error: --force: board 'desk' exists already in "), line


def test_a_bad_serial_device_names_device() -> None:
    line = _error_line(["boards", "setup", "serial:///dev/ttyUSB0", "--device", "tty;reboot"], 2)
    assert line.startswith("edgeship: error: --device: 'tty;reboot': give the board's tty name"), line


# --- (b) the library names the parameter, never a flag ----------------------------------------

def _library_error(exc: BaseException, option: str) -> str:
    assert isinstance(exc, errors.EdgeshipError) and exc.option == option
    text = str(exc)
    assert text.startswith(f"{option}: ") and "--" not in text, text
    return text


def test_recipe_errors_name_the_parameter() -> None:
    with pytest.raises(UsageError) as io:
        Recipe.from_name("float16", io="int8")
    assert _library_error(io.value, "io") == "io: int8 needs an integer recipe (int8, int16x8 or qat); " \
                                             "float16 models take float32 I/O"
    with pytest.raises(UsageError) as calib:
        Recipe.from_name("int8")
    _library_error(calib.value, "calibration")
    with pytest.raises(UsageError) as keep:
        Recipe.from_name("float16", keep_float="fc1")
    _library_error(keep.value, "keep_float")
    with pytest.raises(UsageError) as strict:
        Recipe.from_name("float32", int8_strict=True)
    _library_error(strict.value, "int8_strict")


def test_too_few_calibration_samples_name_calib_samples(tmp_path: Path) -> None:
    features = {"x": np.zeros((100, 4), np.float32)}
    with pytest.raises(DatasetError) as few:
        pick_calibration(features, MIN_CALIBRATION_SAMPLES - 1, True, tmp_path / "c.npz")
    assert _library_error(few.value, "calib_samples") == (f"calib_samples: {MIN_CALIBRATION_SAMPLES - 1} is too few; "
                                                          f"use at least {MIN_CALIBRATION_SAMPLES}")
    with pytest.raises(DatasetError) as many:
        pick_calibration(features, 500, True, tmp_path / "c.npz")
    assert "500 asked for" in _library_error(many.value, "calib_samples")


def test_catalogue_and_setup_errors_name_the_parameter(tmp_path: Path) -> None:
    path = tmp_path / "boards.yaml"
    add_board("desk", entry_for("local"), path=path)
    with pytest.raises(UsageError) as exists:
        add_board("desk", entry_for("local"), path=path)
    _library_error(exists.value, "force")
    with pytest.raises(UsageError) as device:
        serial_steps(Board.parse("serial:///dev/ttyUSB0"), "tty;reboot")
    _library_error(device.value, "serial_device")


# --- (c) no library error message names a CLI flag -------------------------------------------

def _cli_flags(command: click.Command) -> set[str]:
    flags = {opt for param in command.params if isinstance(param, click.Option)
             for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")}
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            flags |= _cli_flags(sub)
    return flags


FLAGS = _cli_flags(main) - {"--help"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ERRORS = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)}
SCANNED = sorted(p.relative_to(ROOT).as_posix() for top in ("sdk", "converters", "device_agent")
                 for p in (ROOT / top).rglob("*.py")
                 if p.relative_to(ROOT).as_posix() not in ("sdk/cli.py", "sdk/render.py"))


def _strings(node: ast.AST, names: dict[str, list[ast.AST]], seen: set[str]) -> list[str]:
    """The string literals a message is made of: constants, f-string parts, and the values of names it uses."""
    out = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            out.append(sub.value)
        elif isinstance(sub, ast.Name) and sub.id in names and sub.id not in seen:
            seen.add(sub.id)
            for value in names[sub.id]:
                out += _strings(value, names, seen)
    return out


def _assignments(tree: ast.Module) -> dict[str, list[ast.AST]]:
    """Names a message may use: module-level assignments, and local ones that build a string."""
    names: dict[str, list[ast.AST]] = {}
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if id(node) in module_level or isinstance(node.value, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.setdefault(target.id, []).append(node.value)
    return names


def _error_messages(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, literal) of every string that goes into an exception: raised or built (``SomeError(...)``)."""
    names = _assignments(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called in ERRORS or called.endswith(("Error", "Exception")):
            for arg in [*node.args, *(k.value for k in node.keywords if k.arg != "option")]:
                found += [(node.lineno, s) for s in _strings(arg, names, set())]
    return found


def test_the_scan_sees_flags_in_messages() -> None:
    """The scanner itself: a flag in a raised f-string, in a constant it uses, and in a built error."""
    source = ('HINT = "pass --force to replace it"\n'
              'def f(x):\n'
              '    raise UsageError(f"{x}: exists; " + HINT)\n'
              'def g(x):\n'
              '    return ConversionError(f"--int8-strict {x}")\n'
              'def h():\n'
              '    raise UsageError("fine", option="force")\n')
    flagged = [FLAG.findall(s) for _, s in _error_messages(ast.parse(source))]
    assert [f for f in flagged if f] == [["--force"], ["--int8-strict"]]
    assert {"--force", "--int8-strict", "--calib-samples", "--io", "--board"} <= FLAGS


@pytest.mark.parametrize("path", SCANNED)
def test_no_library_error_message_names_a_cli_flag(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    offenders = [f"{path}:{line}: {flag} in {text!r}" for line, text in _error_messages(tree)
                 for flag in FLAG.findall(text) if flag in FLAGS]
    assert not offenders, "library messages name CLI flags; raise with option=<parameter> instead:\n" + "\n".join(offenders)
