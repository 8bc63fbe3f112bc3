"""Emulated boards by name: started on demand and stopped after the command, or kept up between commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.emulated  # emu-serial and emu-pi by name


@pytest.fixture()
def emu_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    boards = tmp_path / "boards.yaml"
    boards.write_text("schema_version: 1\nboards:\n  emu-serial:\n    description: test copy\n    transport: emulated\n"
                      "    emulator: emu-serial\n    serial: {url: on-demand, baud: 115200}\n"
                      f"    store: {{dir: {tmp_path / 'store'}, quota_mb: 64}}\n")
    monkeypatch.setenv("EDGESHIP_BOARDS", str(boards))
    monkeypatch.setenv("EDGESHIP_EMULATE_DIR", str(tmp_path / "emulate"))
    return tmp_path


def _agents() -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"device_agent\x00--serial" in cmd:
                pids.add(int(p.name))
    return pids


def test_emu_serial_on_demand_runs_and_stops(emu_env: Path, convert_digits: Any, digits: Path) -> None:
    before = _agents()
    proc = run_cli("eval", str(convert_digits("int8").bundle), "--board", "emu-serial", "--data", str(digits / "test.npz"),
                   "--json", "--min-agreement", "100")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]["result"]
    assert doc["result"]["accuracy"] == doc["host"]["accuracy"]
    assert _agents() == before  # its agent and relay were stopped with the command


def test_emulate_up_keeps_the_board_between_commands(emu_env: Path, convert_digits: Any) -> None:
    bundle = str(convert_digits("int8").bundle)
    up = run_cli("emulate", "up", "emu-serial")
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(run_cli("emulate", "status", "--json").stdout)
        assert status["emu-serial"]["pid"] > 0
        first = json.loads(run_cli("push", bundle, "--board", "emu-serial", "--json").stdout)[0]["result"]["upload"]
        second = json.loads(run_cli("push", bundle, "--board", "emu-serial", "--json").stdout)[0]["result"]["upload"]
        assert not first["skipped"] and second["skipped"]  # the same agent and store served both commands
        pid = status["emu-serial"]["pid"]
        assert os.path.exists(f"/proc/{pid}")
    finally:
        down = run_cli("emulate", "down", "emu-serial")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert json.loads(run_cli("emulate", "status", "--json").stdout)["emu-serial"] is None


def test_digits_int8_on_emu_pi_matches_the_host(emu_env: Path, convert_digits: Any, digits: Path) -> None:
    """aarch64 Debian + tflite-runtime 2.14 under qemu, reached over a real sshd on loopback."""
    boards = emu_env / "boards.yaml"
    boards.write_text(boards.read_text() + "  emu-pi:\n    description: test copy\n    transport: emulated\n"
                      "    emulator: emu-pi\n    runtime: tflite_runtime\n    runtime_version: '2.14.0'\n"
                      f"    store: {{dir: {emu_env / 'pi-store'}}}\n")
    bundle = convert_digits("int8").bundle
    host = json.loads(run_cli("eval-host", str(bundle), "--data", str(digits / "test.npz"), "--json").stdout)
    proc = run_cli("eval", str(bundle), "--board", "emu-pi", "--data", str(digits / "test.npz"), "--json",
                   "--min-agreement", "99")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]["result"]
    r = doc["result"]
    assert r["runtime"] == {"name": "tflite_runtime", "version": "2.14.0"}
    assert doc["agent"]["cpu"]["arch"] == "aarch64"
    assert r["accuracy"] == host["accuracy"] and r["agreement"]["argmax_agreement"] >= 0.99


def test_emulate_up_keeps_emu_pi_and_its_sshd(emu_env: Path, convert_digits: Any) -> None:
    boards = emu_env / "boards.yaml"
    boards.write_text(boards.read_text() + "  emu-pi:\n    description: test copy\n    transport: emulated\n"
                      f"    emulator: emu-pi\n    store: {{dir: {emu_env / 'pi-store'}}}\n")
    up = run_cli("emulate", "up", "emu-pi")
    assert up.returncode == 0 and "sshd on 127.0.0.1:" in up.stdout, up.stderr
    try:
        ping = json.loads(run_cli("boards", "ping", "emu-pi", "--json").stdout)[0]["result"]
        assert ping["cpu"]["arch"] == "aarch64" and ping["runtime"]["name"] == "tflite_runtime"
        first = json.loads(run_cli("push", str(convert_digits("int8").bundle), "--board", "emu-pi", "--json").stdout)[0]["result"]
        again = json.loads(run_cli("push", str(convert_digits("int8").bundle), "--board", "emu-pi", "--json").stdout)[0]["result"]
        assert not first["upload"]["skipped"] and again["upload"]["skipped"]
        assert (emu_env / "pi-store" / "blobs" / first["model_sha256"]).exists()  # the catalogue's store was used
    finally:
        down = run_cli("emulate", "down", "emu-pi")
    assert "stopped" in down.stdout
