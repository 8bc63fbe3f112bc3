"""Memory where users look: the TFLM arena against the board's in check, bench, eval and the report, not only JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import helpers_third_party
from tests.conftest import run_cli

pytestmark = pytest.mark.convert  # setup converts two Keras models (helpers_third_party)


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """emu-mcu (64 KiB arena, int8 only), tiny-mcu (1 KiB arena, any type) and local, stores in a temp dir."""
    boards = tmp_path / "boards.yaml"
    boards.write_text(
        "schema_version: 1\nboards:\n"
        f"  local:\n    description: test local\n    transport: local\n    store: {{dir: {tmp_path / 'local'}}}\n"
        f"  emu-mcu:\n    description: test copy of emu-mcu\n    transport: local\n    runtime: tflite_micro\n"
        f"    store: {{dir: {tmp_path / 'mcu'}, quota_mb: 16}}\n"
        f"    constraints: {{int8_only: true, max_model_bytes: 1000000, arena_bytes: 65536}}\n"
        f"  tiny-mcu:\n    description: an MCU with a 1 KiB arena\n    transport: local\n    runtime: tflite_micro\n"
        f"    store: {{dir: {tmp_path / 'tiny'}}}\n    constraints: {{arena_bytes: 1024}}\n")
    monkeypatch.setenv("EDGESHIP_BOARDS", str(boards))
    for name, model in (("int8", helpers_third_party.keras_int8()), ("float", helpers_third_party.keras_float())):
        (tmp_path / f"{name}.tflite").write_bytes(model)
        assert run_cli("bundle", str(tmp_path / f"{name}.tflite"), "--out", str(tmp_path / name)).returncode == 0
    helpers_third_party.write_test_npz(tmp_path / "test.npz")
    return tmp_path


def test_check_bench_eval_and_report_show_the_arena_against_the_board(setup: Path) -> None:
    bundle, results = setup / "int8", setup / "results"
    as_json = run_cli("check", str(bundle), "--board", "emu-mcu", "--json")
    assert as_json.returncode == 0, as_json.stderr
    arena = json.loads(as_json.stdout)[0]["result"]["arena"]
    assert arena["size"] == 65536 and 1024 < arena["needed"] < 65536
    text = run_cli("check", str(bundle), "--board", "emu-mcu")
    assert (f"TFLM tensor arena: the model allocates in {arena['needed']:,} bytes, "
            f"{arena['needed'] / 65536:.1%} of the board's 65,536") in text.stdout
    assert json.loads(run_cli("check", str(bundle), "--board", "local", "--json").stdout)[0]["result"]["arena"] is None

    for kind, extra in (("bench", ["--runs", "10", "--min-seconds", "0.05"]), ("eval", ["--data", str(setup / "test.npz")])):
        args = [kind, str(bundle), "--board", "emu-mcu", *extra, "--results-dir", str(results)]
        doc = json.loads(run_cli(*args, "--json").stdout)[0]["result"]
        used = doc["result"]["arena"]["used"]
        assert 0 < used <= 65536
        shown = run_cli(*args)
        assert shown.returncode == 0, shown.stderr
        assert f"memory: TFLM tensor arena {used:,} of 65,536 bytes used ({used / 65536:.1%})" in shown.stdout
        assert "  peak RSS" not in shown.stdout  # the emulating process's RSS is not the MCU's memory
    local = run_cli("bench", str(bundle), "--board", "local", "--runs", "10", "--min-seconds", "0.05",
                    "--results-dir", str(results))
    assert local.returncode == 0 and "memory: peak RSS " in local.stdout and "arena" not in local.stdout

    md = run_cli("report", str(results))
    assert md.returncode == 0, md.stderr
    assert "| memory |" in md.stdout
    assert f"arena {used / 1024:.1f} / 64.0 KiB" in md.stdout and "RSS " in md.stdout
    html = setup / "report.html"
    assert run_cli("report", str(results), "--html", str(html)).returncode == 0
    assert f"<td>arena {used / 1024:.1f} / 64.0 KiB</td>" in html.read_text()


def test_arena_advice_suggests_int8_only_to_a_model_that_is_not_int8(setup: Path) -> None:
    int8 = run_cli("check", str(setup / "int8"), "--board", "tiny-mcu")
    assert int8.returncode == 1 and "tensor arena, the board has 1,024" in int8.stderr
    assert "int8" not in int8.stderr.split("the board has 1,024", 1)[1]  # it is int8 already
    assert "smaller or fewer layers" in int8.stderr
    f32 = run_cli("check", str(setup / "float"), "--board", "tiny-mcu")
    assert f32.returncode == 1 and "tensor arena, the board has 1,024" in f32.stderr
    assert "int8" in f32.stderr.split("the board has 1,024", 1)[1]
    assert not (setup / "tiny").exists()  # refused before anything was pushed
