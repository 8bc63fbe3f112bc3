"""Never crash the host: TFLite Micro segfaults are met in child processes and reported as results.

The crashes are real ones of TFLM's Python wrapper, not simulated: the conv net of
tests/helpers_models.py segfaults TFLM at arenas of 2232..2263 bytes (it needs 2808), the
digits int8 model at 2592..2847 bytes (it needs 9728).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeship.device_agent import micro
from edgeship.device_agent.agent import Agent, AgentConfig
from edgeship.device_agent.protocol import Message
from tests import helpers_models
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
CRASHING_SEARCH_UPPER = 3487  # arena_needed(upper=3487) bisects through 2255 bytes, inside the crash range
CRASHING_ARENA = 2240  # inside 2232..2263
DIGITS_CRASHING_ARENA = 2600  # inside 2592..2847


@pytest.fixture(scope="module")
def conv_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("safety") / "conv-int8.tflite"
    path.write_bytes(helpers_models.int8_model())
    return path


def test_planning_in_process_really_crashes(conv_int8: Path) -> None:
    code = ("import sys; from edgeship.device_agent import micro; "
            f"micro.arena_needed(open(sys.argv[1], 'rb').read(), upper={CRASHING_SEARCH_UPPER})")
    proc = subprocess.run([sys.executable, "-c", code, str(conv_int8)], capture_output=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stderr[-500:])


def test_the_probe_survives_a_crash_and_still_finds_the_need(conv_int8: Path) -> None:
    model = conv_int8.read_bytes()
    plain = micro.probe(model)  # the default search meets no crashing size
    assert plain.crashes == () and micro.MIN_ARENA < plain.needed < 8192
    found = micro.probe(model, upper=CRASHING_SEARCH_UPPER)
    assert found.needed == plain.needed
    assert found.crashes and all(sig == "SIGSEGV" and size < found.needed for size, sig in found.crashes)
    assert micro.probe(model, arena_size=found.needed).fits is True
    assert micro.probe(model, arena_size=found.needed - 1).fits is False


def test_a_crash_at_the_asked_arena_is_a_result(conv_int8: Path) -> None:
    with pytest.raises(micro.ArenaProbeCrashed) as info:
        micro.probe(conv_int8.read_bytes(), arena_size=CRASHING_ARENA)
    assert info.value.arena_size == CRASHING_ARENA and info.value.signal_name == "SIGSEGV"
    assert f"crashed (SIGSEGV) while planning the arena at {CRASHING_ARENA} bytes" in str(info.value)
    assert "arena_bytes" in str(info.value)


def _put(agent: Agent, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    agent.handle(Message({"op": "put_begin", "sha256": sha, "size": len(data), "wire_size": len(data)}), print)
    agent.handle(Message({"op": "put", "sha256": sha, "offset": 0}, data), print)
    assert agent.handle(Message({"op": "put_end", "sha256": sha}), print).header["op"] == "ok"
    return sha


def test_the_agent_survives_a_tflm_crash_in_its_worker(conv_int8: Path, tmp_path: Path) -> None:
    agent = Agent(AgentConfig(store_dir=tmp_path / "store", runtime="tflite_micro", arena_size=CRASHING_ARENA))
    sha = _put(agent, conv_int8.read_bytes())
    sent: list[Any] = []
    crashed = agent.handle(Message({"op": "run", "kind": "bench", "model": sha,
                                    "options": {"runs": 3, "warmup": 0, "min_seconds": 0}}), sent.append).header
    assert crashed["status"] == "crashed", crashed
    assert f"the TFLM runtime crashed (SIGSEGV) while planning the arena at {CRASHING_ARENA} bytes" in crashed["message"]
    assert crashed["arena"] == {"size": CRASHING_ARENA}
    ok = agent.handle(Message({"op": "run", "kind": "bench", "model": sha,
                               "options": {"runs": 3, "warmup": 0, "min_seconds": 0, "arena_size": 8192}}),
                      sent.append).header
    assert ok["status"] == "ok" and ok["arena"]["size"] == 8192 and 0 < ok["arena"]["used"] <= 8192


def _boards_file(tmp_path: Path) -> Path:
    boards = tmp_path / "boards.yaml"
    boards.write_text(
        "schema_version: 1\nboards:\n"
        "  mcu-crash:\n    description: an MCU whose arena size crashes TFLM on the digits model\n"
        f"    transport: local\n    runtime: tflite_micro\n    store: {{dir: {tmp_path / 'mcu'}, quota_mb: 16}}\n"
        f"    constraints: {{int8_only: true, arena_bytes: {DIGITS_CRASHING_ARENA}}}\n"
        "  emu-serial:\n    description: emu-serial with its store in the test's directory\n"
        "    transport: emulated\n    emulator: emu-serial\n    serial: {url: \"(started on demand)\", baud: 115200}\n"
        f"    store: {{dir: {tmp_path / 'serial'}, quota_mb: 64}}\n"
        "  local:\n    description: local with its store in the test's directory\n    transport: local\n"
        f"    store: {{dir: {tmp_path / 'local'}}}\n")
    return boards


def test_check_reports_the_crash(tmp_path: Path, convert_digits: Any) -> None:
    bundle = convert_digits("int8").bundle
    proc = run_cli("--boards", str(_boards_file(tmp_path)), "check", str(bundle), "--board", "mcu-crash", "--json")
    assert proc.returncode == 1, proc.stderr
    problems = json.loads(proc.stdout)[0]["result"]["problems"]
    assert [p["code"] for p in problems] == ["micro_crashed"]
    assert f"while planning the arena at {DIGITS_CRASHING_ARENA} bytes" in problems[0]["message"]
    ok = run_cli("check", str(bundle), "--board", "emu-mcu")
    assert ok.returncode == 0 and "compatible" in ok.stdout, ok.stderr


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_fleet_with_a_crashing_board_finishes_the_others(tmp_path: Path, convert_digits: Any) -> None:
    bundle = convert_digits("int8").bundle
    proc = run_cli("--boards", str(_boards_file(tmp_path)), "bench", str(bundle),
                   "--board", "local,emu-mcu,mcu-crash,emu-serial", "--runs", "5", "--warmup", "1",
                   "--min-seconds", "0", "--json", "--jobs", "4")
    assert proc.returncode == 1, proc.stderr
    assert "1 of 4 boards failed: mcu-crash" in proc.stderr
    rows = {r["board"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"local", "emu-mcu", "mcu-crash", "emu-serial"}
    assert f"the TFLM runtime crashed (SIGSEGV) while planning the arena at {DIGITS_CRASHING_ARENA} bytes" \
        in rows["mcu-crash"]["error"]
    for name in ("local", "emu-mcu", "emu-serial"):
        assert rows[name]["ok"] and rows[name]["result"]["result"]["status"] == "ok", rows[name]
    assert rows["emu-mcu"]["result"]["result"]["arena"]["used"] > DIGITS_CRASHING_ARENA
    # emu-serial was started for this command: its relay and agent (with the test's store) are gone
    assert _processes_mentioning(str(tmp_path / "serial")) == []
    status = run_cli("emulate", "status")
    assert "emu-serial: down" in status.stdout, status.stdout
