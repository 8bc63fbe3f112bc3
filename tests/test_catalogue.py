"""boards.yaml: validation errors name file, board and key; user files override; checks run before any upload."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.catalogue import SHIPPED, load_catalogue, load_file, resolve
from edgeship.sdk.errors import CatalogueError
from tests.conftest import invoke_cli, run_cli

GOOD_BOARD = "    description: a board\n    transport: ssh\n    ssh: {host: example.org, user: me}\n"


@pytest.mark.parametrize(("body", "needles"), [
    ("schema_version: 1\nboards:\n  mine:\n" + GOOD_BOARD + "    colour: red\n", ["board 'mine'", "unknown key 'colour'"]),
    ("schema_version: 1\nboards:\n  mine:\n    transport: ssh\n    ssh: {host: a}\n", ["board 'mine'", "missing key 'description'"]),
    ("schema_version: 1\nboards:\n  mine:\n" + GOOD_BOARD + "    cores: many\n", ["board 'mine'", "key 'cores'"]),
    ("schema_version: 1\nboards:\n  mine:\n    description: x\n    transport: ssh\n", ["board 'mine'", "missing key 'ssh'"]),
    ("schema_version: 1\nboards:\n  mine:\n    description: x\n    transport: ssh\n    ssh: {host: a, prot: 22}\n",
     ["board 'mine'", "unknown key 'ssh.prot'"]),
    ("schema_version: 1\nboards:\n  mine:\n    description: x\n    transport: telepathy\n", ["board 'mine'", "key 'transport'"]),
    ("schema_version: 2\nboards: {}\n", ["schema_version 2"]),
    ("boards: [\n", ["not valid YAML", "line"]),
])
def test_malformed_boards_file_is_one_error_naming_file_board_and_key(tmp_path: Path, body: str,
                                                                      needles: list[str]) -> None:
    path = tmp_path / "myboards.yaml"
    path.write_text(body)
    with pytest.raises(CatalogueError) as err:
        load_file(path)
    assert str(err.value).startswith(str(path))
    for needle in needles:
        assert needle in str(err.value)
    proc = invoke_cli("--boards", str(path), "boards", "list")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [f"edgeship: error: {err.value}"]


def test_shipped_catalogue_is_valid_and_examples_are_marked() -> None:
    boards = load_file(SHIPPED)
    assert "local" in boards and not boards["local"].example
    examples = [n for n, s in boards.items() if s.example]
    assert len(examples) >= 5 and all("EXAMPLE" in boards[n].description for n in examples)


def test_user_file_extends_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("schema_version: 1\nboards:\n  mine:\n" + GOOD_BOARD +
                    "  rpi4-litert:\n    description: my own pi\n    transport: ssh\n    ssh: {host: 10.0.0.7}\n")
    monkeypatch.setenv("EDGESHIP_BOARDS", str(path))
    boards = load_catalogue()
    assert boards["rpi4-litert"].ssh.host == "10.0.0.7" and "mine" in boards and "local" in boards
    board = resolve("mine")
    assert (board.transport, board.host, board.user) == ("ssh", "example.org", "me")
    listed = json.loads(run_cli("boards", "list", "--json").stdout)
    assert listed["rpi4-litert"]["description"] == "my own pi"


def _int8_only_local(tmp_path: Path) -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text(f"schema_version: 1\nboards:\n  strict:\n    description: an int8-only board\n"
                    f"    transport: local\n    store: {{dir: {tmp_path / 'store'}}}\n"
                    f"    constraints: {{int8_only: true, max_model_bytes: 200000}}\n")
    return path


def test_float_model_is_refused_on_an_int8_only_board_before_any_upload(tmp_path: Path, convert_digits: Any) -> None:
    boards = _int8_only_local(tmp_path)
    f32 = convert_digits("float32").bundle
    for command in (["push"], ["bench"], ["check"]):
        proc = run_cli("--boards", str(boards), *command, str(f32), "--board", "strict")
        assert proc.returncode == 1, proc.stderr
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1 and "int8-only" in line and "recipe int8" in line
        assert f"{f32_size(f32):,} bytes" in line and "200,000" in line  # the numbers
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store" / "blobs").glob("*"))
    ok = run_cli("--boards", str(boards), "push", str(convert_digits("int8").bundle), "--board", "strict", "--json")
    assert ok.returncode == 0, ok.stderr
    assert len(os.listdir(tmp_path / "store" / "blobs")) == 1


def f32_size(bundle: Path) -> int:
    return (bundle / "model.tflite").stat().st_size


def test_check_json_lists_problems(tmp_path: Path, convert_digits: Any) -> None:
    proc = run_cli("check", str(convert_digits("float32").bundle), "--board", "coral-devboard", "--json")
    assert proc.returncode == 1
    codes = {p["code"] for p in json.loads(proc.stdout)[0]["result"]["problems"]}
    assert codes == {"not_int8", "delegate_input"}


def test_runtime_older_than_the_model_is_refused(tmp_path: Path, convert_digits: Any) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(f"schema_version: 1\nboards:\n  old:\n    description: an old runtime\n    transport: local\n"
                    f"    runtime_version: '1.5.0'\n    store: {{dir: {tmp_path / 'store'}}}\n")
    proc = run_cli("--boards", str(path), "check", str(convert_digits("int8").bundle), "--board", "old")
    assert proc.returncode == 1 and "needs TFLite 1.14.0 or newer" in proc.stderr and "1.5.0" in proc.stderr


@pytest.mark.emulated  # pings emu-pi: qemu
def test_ping_all_reaches_the_non_example_boards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_LOCAL_STORE", str(tmp_path / "store"))
    proc = run_cli("boards", "ping", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    expected = [n for n, s in load_catalogue().items() if not s.example]  # local and the emulated boards
    assert [r["board"] for r in rows] == expected and {"local", "emu-pi", "emu-serial", "emu-mcu"} <= set(expected)
    assert all(r["ok"] and r["result"]["agent_version"] for r in rows), rows
