"""emu-mcu: the microcontroller-class board (TFLite Micro with the board's arena) by name, as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """emu-mcu with its store in a temp dir (a user boards file overriding the shipped entry)."""
    boards = tmp_path / "boards.yaml"
    boards.write_text(
        "schema_version: 1\nboards:\n"
        f"  emu-mcu:\n    description: test copy of emu-mcu\n    transport: local\n    runtime: tflite_micro\n"
        f"    store: {{dir: {tmp_path / 'mcu'}, quota_mb: 16}}\n"
        f"    constraints: {{int8_only: true, max_model_bytes: 1000000, arena_bytes: 65536}}\n"
        f"  tiny-mcu:\n    description: an MCU with a 4 KiB arena\n    transport: local\n    runtime: tflite_micro\n"
        f"    store: {{dir: {tmp_path / 'tiny'}}}\n    constraints: {{arena_bytes: 4096}}\n")
    monkeypatch.setenv("EDGESHIP_BOARDS", str(boards))
    return tmp_path


def test_digits_int8_runs_on_emu_mcu_and_reports_its_arena(isolated: Path, convert_digits: Any, digits: Path) -> None:
    bundle = convert_digits("int8").bundle
    proc = run_cli("eval", str(bundle), "--board", "emu-mcu", "--data", str(digits / "test.npz"), "--json",
                   "--min-agreement", "99")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]["result"]
    r = doc["result"]
    assert r["runtime"]["name"] == "tflite_micro"
    assert r["accuracy"] == doc["host"]["accuracy"]
    assert r["arena"]["size"] == 65536 and 0 < r["arena"]["used"] <= 65536
    bench = run_cli("bench", str(bundle), "--board", "emu-mcu", "--runs", "20", "--json")
    assert bench.returncode == 0 and json.loads(bench.stdout)[0]["result"]["result"]["status"] == "ok"


def test_models_that_do_not_fit_are_refused_before_upload_with_the_numbers(isolated: Path, convert_digits: Any) -> None:
    f32 = run_cli("push", str(convert_digits("float32").bundle), "--board", "emu-mcu")
    assert f32.returncode == 1 and "int8-only" in f32.stderr
    over = run_cli("push", str(convert_digits("int8").bundle), "--board", "tiny-mcu")
    assert over.returncode == 1 and len(over.stderr.strip().splitlines()) == 1
    assert "tensor arena" in over.stderr and "the board has 4,096" in over.stderr
    assert not (isolated / "tiny").exists() and not (isolated / "mcu").exists()  # nothing was pushed
