"""`edgeship boards setup` on an emulated bare board: a real sshd on loopback in front of a Python with no numpy and no runtime.

The board's Python is a venv made here without pip or packages (``python3 -m venv --without-pip``),
so it has neither numpy nor a TFLite runtime whatever the machine's own Python has. `boards setup`
must create edgeship's venv on the board, pip-install numpy and ai-edge-litert into it from the
package index (pip's cache makes that a few seconds), place the agent and ping it; the digits model
then evaluates there. The board's edgeship directory is this test's own (sdk.transport.ssh.AGENT_DIR
patched to an absolute path, as in tests/test_redteam_ssh.py), so the login user's shared
~/.edgeship is never touched; the CLI therefore runs in-process (click's CliRunner). Every CLI
call runs in a thread joined with a timeout: a hang fails the test.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result

from edgeship.sdk.cli import main
from edgeship.sdk.emulate.sshd import Sshd
from edgeship.sdk.schemas import validate
from edgeship.sdk.setup import LITERT, PROBE, TFLITE_RUNTIME, probe_command, runtime_candidates
from edgeship.sdk.transport import ssh as ssh_transport

ROOT = Path(__file__).resolve().parent.parent
BASE_PYTHON = "/usr/bin/python3"  # has the venv module; the bare board venv is made from it
STEP_TIMEOUT = 240.0


@pytest.fixture
def bare_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A real sshd, a bare Python behind it, this test's own board directory; yields the board URL and paths."""
    board_dir = tmp_path / "board-home" / ".edgeship"
    monkeypatch.setattr(ssh_transport, "AGENT_DIR", str(board_dir))
    bare = tmp_path / "bare"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    python = bare / "bin" / "python"
    missing = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, timeout=60)
    assert missing.returncode != 0, "the bare board's Python must not have numpy"
    with Sshd(tmp_path / "sshd") as server:
        known = tmp_path / "known_hosts"  # empty: the first contact needs --accept-new-host
        prefix = (f"ssh://{server.user}@127.0.0.1:{server.port}?key={server.user_key_path}&known_hosts={known}"
                  f"&store={tmp_path / 'store'}&")
        url = f"{prefix}python={quote(str(python), safe='/')}"
        yield {"url": url, "prefix": prefix, "dir": board_dir, "python": python, "server": server}


def cli(*args: str) -> Result:
    """`edgeship ARGS` in-process, bounded in time."""
    box: dict[str, Result] = {}
    t = threading.Thread(target=lambda: box.update(r=CliRunner().invoke(main, list(args))), daemon=True)
    t.start()
    t.join(STEP_TIMEOUT)
    assert not t.is_alive(), f"edgeship {' '.join(args)} still running after {STEP_TIMEOUT} s"
    return box["r"]


def tree(d: Path) -> dict[str, int]:
    """Every path under d with its mtime (ns): a second run that changes nothing leaves this equal."""
    return {str(p.relative_to(d)): p.lstat().st_mtime_ns for p in d.rglob("*")} if d.exists() else {}


def walkthrough(heading: str) -> list[str]:
    """The commands of the first ```sh block under a heading of docs/boards.md."""
    text = (ROOT / "docs" / "boards.md").read_text(encoding="utf-8")
    section = text[text.index(f"## {heading}\n"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, f"no sh block under {heading!r}"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert all(line.startswith("edgeship ") for line in lines), lines
    return lines


def run_line(line: str, substitutions: dict[str, str]) -> Result:
    for old, new in substitutions.items():
        line = line.replace(old, new)
    words = shlex.split(line)
    assert words[0] == "edgeship"
    return cli(*words[1:])


@pytest.mark.install
def test_the_raspberry_pi_walkthrough_takes_a_bare_board_to_a_passing_eval_and_a_second_setup_changes_nothing(
        bare_board: dict[str, Any], convert_digits: Any, digits: Path) -> None:
    url, board_dir = bare_board["url"], bare_board["dir"]
    venv_python = board_dir / "venv" / "bin" / "python"

    # --dry-run on the bare board: the plan lists every step and nothing is created on the board.
    refused = cli("boards", "setup", url, "--dry-run")
    assert refused.exit_code == 1 and "--accept-new-host" in refused.stderr  # host keys stay strict
    dry = cli("boards", "setup", url, "--dry-run", "--json", "--accept-new-host")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    validate("boards-setup", plan)
    assert [(s["action"], s["needed"]) for s in plan["steps"]] == [("venv", True), ("install", True), ("agent", True)]
    assert plan["probe"]["python"]["numpy"] is None and plan["probe"]["python"]["runtimes"] == {}
    assert plan["python"] == str(venv_python) and not board_dir.exists()
    assert "ai-edge-litert" in plan["steps"][1]["command"]

    # docs/boards.md's commands, with the Pi's address, interpreters and files replaced by this board's.
    bundle = Path(convert_digits("int8").bundle)
    subs = {"ssh://pi@raspberrypi.local?": bare_board["prefix"], "/usr/bin/python3": str(bare_board["python"]),
            "/home/pi/.edgeship": str(board_dir), "digits-int8": str(bundle),
            "--data test.npz": f"--data {digits / 'test.npz'}"}
    setup_line, ping_line, eval_line = walkthrough("Add your Raspberry Pi")
    first = run_line(setup_line, subs)
    assert first.exit_code == 0, first.output
    assert "runtime ai_edge_litert" in first.stdout and "installed numpy ai-edge-litert" in first.stdout
    line = re.search(r"use the board as: (\S+)", first.stdout)
    assert line is not None and f"python={venv_python}" in line.group(1), first.stdout
    check = subprocess.run([str(venv_python), "-c", "import numpy, ai_edge_litert.interpreter"], timeout=60)
    assert check.returncode == 0
    assert list(board_dir.glob("agent-*.pyz"))
    ping = run_line(ping_line, subs)
    assert ping.exit_code == 0 and "runtime ai_edge_litert" in ping.stdout, ping.output
    ev = run_line(eval_line + " --json", subs)
    assert ev.exit_code == 0, ev.output
    doc = json.loads(ev.stdout)[0]["result"]
    assert doc["result"]["status"] == "ok" and doc["agent"]["runtime"]["name"] == "ai_edge_litert"
    new_url = line.group(1)

    # A second run, with the original URL and with the new one: everything is detected in place, nothing changes.
    before = tree(board_dir / "venv")
    for board in (url, new_url):
        again = cli("boards", "setup", board, "--json")
        assert again.exit_code == 0, again.output
        doc = json.loads(again.stdout)
        validate("boards-setup", doc)
        assert doc["changed"] is False and not any(s["needed"] for s in doc["steps"])
        assert doc["steps"][0]["action"] == ("venv" if board == url else "python")  # found in place, and said so
        assert "ai_edge_litert" in doc["steps"][0]["what"]
        assert doc["ping"]["runtime"]["name"] == "ai_edge_litert" and doc["python"] == str(venv_python)
    assert tree(board_dir / "venv") == before
    text = cli("boards", "setup", url)
    assert text.exit_code == 0 and "nothing to change: everything is in place" in text.stdout


@pytest.mark.emulated
def test_the_usb_serial_walkthrough_prints_the_steps_then_runs_on_the_emulated_serial_board(
        convert_digits: Any, digits: Path) -> None:
    """The setup line prints the steps; ping and eval run with emu-serial (an agent behind a paced pty) as the line."""
    setup_line, ping_line, eval_line = walkthrough("Add a USB-serial board")
    steps = run_line(setup_line, {})
    assert steps.exit_code == 0, steps.output
    assert "ExecStart=/opt/edgeship/venv/bin/python /opt/edgeship/edgeship-agent.pyz --serial /dev/%I" in steps.stdout
    assert "sudo systemctl disable --now serial-getty@ttyS0.service" in steps.stdout
    subs = {"'serial:///dev/ttyUSB0?baud=115200'": "emu-serial", "digits-int8": str(convert_digits("int8").bundle),
            "--data test.npz": f"--data {digits / 'test.npz'}"}
    ping = run_line(ping_line, subs)
    assert ping.exit_code == 0 and "emu-serial: agent" in ping.stdout, ping.output
    ev = run_line(eval_line + " --json", subs)
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)[0]["result"]["result"]["status"] == "ok"


@pytest.mark.install
def test_a_board_without_index_access_gets_the_lines_to_install_by_hand(bare_board: dict[str, Any]) -> None:
    """The board's pip cannot reach the index (its venv's pip.conf points at a closed port): one error, the exact lines."""
    venv = bare_board["dir"] / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    (venv / "pip.conf").write_text("[global]\nindex-url = http://127.0.0.1:9/simple\nno-cache-dir = true\n")
    r = cli("boards", "setup", bare_board["url"], "--accept-new-host")
    assert r.exit_code == 1, r.output
    error = [x for x in r.stderr.splitlines() if x.startswith("edgeship: error:")]
    assert len(error) == 1 and "cannot reach the package index" in error[0], r.stderr
    assert "pip download --only-binary :all: --python-version 3." in error[0]
    assert f"{venv}/bin/python -m pip install --no-index --find-links" in error[0]
    assert not list(bare_board["dir"].glob("agent-*.pyz"))  # stopped before the agent: nothing half-done


@pytest.mark.install
def test_without_an_ai_edge_litert_wheel_setup_falls_back_to_tflite_runtime_with_numpy_below_2(
        bare_board: dict[str, Any], tmp_path: Path) -> None:
    """The board's pip sees only a wheelhouse (real wheels from the index) that has tflite-runtime and no ai-edge-litert."""
    wheels = tmp_path / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "-d", str(wheels), "numpy<2",
                    "tflite-runtime"], check=True, capture_output=True, timeout=180)
    venv = bare_board["dir"] / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    (venv / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {wheels}\n")
    r = cli("boards", "setup", bare_board["url"], "--accept-new-host", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["installed"] == ["numpy<2", "tflite-runtime"]
    assert doc["ping"]["runtime"]["name"] == "tflite_runtime"
    assert [s["action"] for s in doc["steps"] if s["needed"]] == ["install", "agent"]  # the venv was there


def test_runtime_table() -> None:
    assert runtime_candidates((3, 11, 2), "aarch64", ("glibc", "2.36")) == [LITERT, TFLITE_RUNTIME]
    assert runtime_candidates((3, 12, 0), "x86_64", ("glibc", "2.36")) == [LITERT]
    assert runtime_candidates((3, 9, 2), "armv7l", ("glibc", "2.31")) == [TFLITE_RUNTIME]
    assert runtime_candidates((3, 11, 2), "armv7l", ("glibc", "2.36")) == []
    assert runtime_candidates((3, 11, 2), "aarch64", ("glibc", "2.24")) == [TFLITE_RUNTIME]
    assert runtime_candidates((3, 11, 2), "x86_64", ("musl", "")) == []


def test_the_probe_is_one_constant_word_for_the_remote_shell() -> None:
    """Issue 11's rule: only constants and quoted values reach the remote shell."""
    words = shlex.split(probe_command("/usr/bin/python3"))
    assert words[:3] == ["/usr/bin/python3", "-c", PROBE] and re.fullmatch(r"[A-Za-z0-9_.;( \")+/=]+", PROBE)
    assert shlex.split(probe_command("python3"))[0] == "python3"


def test_serial_board_steps_name_the_unit_and_the_console(tmp_path: Path) -> None:
    r = cli("boards", "setup", "serial:///dev/ttyUSB0?baud=115200", "--device", "ttyAMA0")
    assert r.exit_code == 0, r.output
    assert "ExecStart=/opt/edgeship/venv/bin/python /opt/edgeship/edgeship-agent.pyz --serial /dev/%I" in r.stdout
    assert "sudo systemctl enable --now edgeship-agent@ttyAMA0" in r.stdout
    assert "sudo systemctl disable --now serial-getty@ttyAMA0.service" in r.stdout
    bad = cli("boards", "setup", "serial:///dev/ttyUSB0", "--device", "tty;reboot")
    assert bad.exit_code == 2 and "--device" in bad.stderr
    local = cli("boards", "setup", "local")
    assert local.exit_code == 2 and "needs no setup" in local.stderr and "Traceback" not in local.output
