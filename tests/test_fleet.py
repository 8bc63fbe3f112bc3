"""Fleet runs: boards in parallel, one unreachable board reported while the others finish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_cli


def test_fleet_with_an_unreachable_board_finishes_the_others(tmp_path: Path, convert_digits: Any, digits: Path) -> None:
    boards = tmp_path / "boards.yaml"
    boards.write_text(
        "schema_version: 1\nboards:\n"
        f"  here:\n    description: local agent A\n    transport: local\n    store: {{dir: {tmp_path / 'a'}}}\n"
        f"  there:\n    description: local agent B\n    transport: local\n    store: {{dir: {tmp_path / 'b'}}}\n"
        "  gone:\n    description: a serial board that is not plugged in\n    transport: serial\n"
        "    serial: {url: /dev/edgeship-no-such-tty, baud: 115200}\n")
    results = tmp_path / "results"
    proc = run_cli("--boards", str(boards), "eval", str(convert_digits("int8").bundle), "--board", "here,gone,there",
                   "--data", str(digits / "test.npz"), "--json", "--results-dir", str(results), "--jobs", "2")
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "1 of 3 boards failed: gone" in line
    rows = {r["board"]: r for r in json.loads(proc.stdout)}
    assert rows["here"]["ok"] and rows["there"]["ok"] and not rows["gone"]["ok"]
    assert "/dev/edgeship-no-such-tty" in rows["gone"]["error"]
    assert rows["here"]["result"]["result"]["accuracy"] == rows["there"]["result"]["result"]["accuracy"]
    files = sorted(results.glob("*.json"))
    assert len(files) == 2
    doc = json.loads(files[0].read_text())
    for key in ("schema_version", "board", "agent", "model_sha256", "model_size", "recipe", "dataset_sha256", "created_utc"):
        assert doc[key] is not None, key
    assert doc["result"]["runtime"]["name"] and doc["result"]["confusion"] is not None
    assert sum(map(sum, doc["result"]["confusion"])) == 360


def test_fleet_gate_miss_is_exit_3(tmp_path: Path, convert_digits: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("EDGESHIP_LOCAL_STORE", str(tmp_path / "store"))
    boards = tmp_path / "boards.yaml"
    boards.write_text("schema_version: 1\nboards:\n"
                      f"  a:\n    description: A\n    transport: local\n    store: {{dir: {tmp_path / 'a'}}}\n"
                      f"  b:\n    description: B\n    transport: local\n    store: {{dir: {tmp_path / 'b'}}}\n")
    proc = run_cli("--boards", str(boards), "bench", str(convert_digits("int8").bundle), "--board", "a,b", "--runs", "20",
                   "--max-p90-ms", "0.000001", "-q", "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 3 and "2 of 2 boards missed their gates: a, b" in proc.stderr
    samples = json.loads(next((tmp_path / "r").glob("*.json")).read_text())["result"]["latency_samples_ms"]
    assert 20 <= len(samples) <= 1001 and all(s > 0 for s in samples)
