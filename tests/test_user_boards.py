"""The default user boards file, `boards add`, EDGESHIP_BOARD, and boards that cannot run models.

Every test runs the real `edgeship` command with a throwaway HOME and XDG_CONFIG_HOME (never the
user's own), and the boards it pings are real agents: the local board's agent under this
Python, under a Python without numpy, and forced to a runtime this machine lacks.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EDGESHIP

SSH_URL = "ssh://pi@192.0.2.7:2222?python=/usr/bin/python3"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`edgeship ARGS` with the throwaway environment; a hard timeout, so a hang fails the test."""
    return subprocess.run([str(EDGESHIP), *args], capture_output=True, text=True, timeout=60, env=env)


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    out = {k: v for k, v in os.environ.items() if k not in ("EDGESHIP_BOARD", "EDGESHIP_BOARDS")}
    out.update(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "config"), EDGESHIP_LOCAL_STORE=str(tmp_path / "store"))
    return out


def user_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "edgeship" / "boards.yaml"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv's python (no pip, no site packages): no numpy, no TFLite runtime, like a new board."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "numpy" in probe.stderr  # the board this test needs: numpy really missing
    return python


def test_add_writes_a_private_user_file_that_list_show_and_ping_read(env: dict[str, str]) -> None:
    added = run(env, "boards", "add", "mine", "local", "--description", "my own local board")
    assert added.returncode == 0, added.stderr
    path = user_file(env)
    assert str(path) in added.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert run(env, "boards", "add", "pi", SSH_URL, "--runtime", "tflite_runtime").returncode == 0

    listed = json.loads(run(env, "boards", "list", "--json").stdout)
    assert listed["mine"]["source"] == str(path) and listed["mine"]["description"] == "my own local board"
    assert listed["emu-mcu"]["source"] == "built-in"
    pi = listed["pi"]
    assert pi["transport"] == "ssh" and pi["runtime"] == "tflite_runtime" and pi["python"] == "/usr/bin/python3"
    assert (pi["ssh"]["host"], pi["ssh"]["port"], pi["ssh"]["user"]) == ("192.0.2.7", 2222, "pi")
    table = run(env, "boards", "list").stdout
    assert "built-in" in table and "source" in table
    # typed as for ssh, without a port: the entry leaves the port to the ssh config (else 22)
    assert run(env, "boards", "add", "pi2", "pi@raspberrypi.local?python=/home/pi/venv/bin/python").returncode == 0
    pi2 = json.loads(run(env, "boards", "show", "pi2", "--json").stdout)
    assert (pi2["ssh"]["host"], pi2["ssh"]["user"], pi2["python"]) == ("raspberrypi.local", "pi", "/home/pi/venv/bin/python")
    assert "port" not in yaml.safe_load(path.read_text())["boards"]["pi2"]["ssh"]

    shown = run(env, "boards", "show", "mine")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == f"# mine: from {path}"
    assert json.loads(run(env, "boards", "show", "pi", "--json").stdout)["source"] == str(path)

    pinged = run(env, "boards", "ping", "mine", "--json")
    assert pinged.returncode == 0, pinged.stderr
    (entry,) = json.loads(pinged.stdout)
    info = entry["result"]
    assert entry["ok"] is True and info["runtime"]["name"] and info["numpy"]["version"]


def test_user_entries_override_built_in_ones_and_boards_file_overrides_both(env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    assert run(env, "boards", "add", "emu-mcu", SSH_URL, "--description", "my emu-mcu").returncode == 0
    listed = json.loads(run(env, "boards", "list", "--json").stdout)
    assert listed["emu-mcu"]["description"] == "my emu-mcu" and listed["emu-mcu"]["source"] == str(user_file(env))
    extra = tmp_path / "ci.yaml"
    extra.write_text("schema_version: 1\nboards:\n  emu-mcu:\n    description: the CI's emu-mcu\n    transport: local\n")
    for args, extra_env in ((["--boards", str(extra)], {}), ([], {"EDGESHIP_BOARDS": str(extra)})):
        proc = subprocess.run([str(EDGESHIP), *args, "boards", "list", "--json"], capture_output=True, text=True,
                              timeout=60, env={**env, **extra_env})
        board = json.loads(proc.stdout)["emu-mcu"]
        assert board["description"] == "the CI's emu-mcu" and board["source"] == str(extra)


def test_add_refuses_an_existing_name_without_force_and_keeps_entries_and_comments(env: dict[str, str]) -> None:
    path = user_file(env)
    path.parent.mkdir(parents=True)
    path.write_text("# my boards, by hand\nschema_version: 1\nboards:\n  # the desk pi\n  desk:\n"
                    "    description: on my desk   # keep this\n    transport: ssh\n    ssh: {host: desk.lan}\n\n"
                    "  lab:\n    description: in the lab\n    transport: local\n# end\n")
    before = path.read_text()
    refused = run(env, "boards", "add", "desk", "local")
    one_error_line(refused, 2, str(path), "'desk'", "--force")
    assert path.read_text() == before

    assert run(env, "boards", "add", "bench", SSH_URL).returncode == 0
    forced = run(env, "boards", "add", "desk", "local", "--description", "now local", "--force")
    assert forced.returncode == 0, forced.stderr
    text = path.read_text()
    for kept in ("# my boards, by hand", "# the desk pi", "# end", "in the lab"):
        assert kept in text
    listed = json.loads(run(env, "boards", "list", "--json").stdout)
    assert listed["desk"]["description"] == "now local" and listed["desk"]["transport"] == "local"
    assert listed["lab"]["description"] == "in the lab" and listed["bench"]["ssh"]["host"] == "192.0.2.7"


def test_add_validates_before_writing(env: dict[str, str]) -> None:
    one_error_line(run(env, "boards", "add", "a,b", "local"), 2, "'a,b'")
    one_error_line(run(env, "boards", "add", "x", "ssh://host?python=$(reboot)"), 2, "python")
    assert not user_file(env).exists()


def test_edgeship_board_is_the_default_board(env: dict[str, str]) -> None:
    assert run(env, "boards", "add", "mine", "local").returncode == 0
    with_default = {**env, "EDGESHIP_BOARD": "mine"}
    pinged = run(with_default, "boards", "ping", "--json")
    assert pinged.returncode == 0, pinged.stderr
    assert json.loads(pinged.stdout)[0]["board"] == "mine"
    assert run(with_default, "boards", "show").stdout.startswith("# mine: from ")

    wrong = {**env, "EDGESHIP_BOARD": "nope"}
    for args in (["boards", "ping"], ["push", "no-bundle"], ["bench", "no-bundle"], ["boards", "show"]):
        one_error_line(run(wrong, *args), 2, "EDGESHIP_BOARD=nope", "unknown board 'nope'")
    given = one_error_line(run(wrong, "push", "no-bundle", "--board", "other"), 2, "unknown board 'other'")
    assert "EDGESHIP_BOARD" not in given  # --board wins over the variable


def test_no_board_and_no_default_is_a_usage_error(env: dict[str, str]) -> None:
    for args in (["boards", "ping"], ["boards", "show"]):
        one_error_line(run(env, *args), 2, "name a board", "EDGESHIP_BOARD")


def test_a_malformed_user_file_is_one_error_naming_file_and_key(env: dict[str, str]) -> None:
    path = user_file(env)
    path.parent.mkdir(parents=True)
    path.write_text("schema_version: 1\nboards:\n  pi:\n    description: x\n    transport: ssh\n"
                    "    ssh: {host: pi.lan, prot: 22}\n")
    before = path.read_text()
    for args in (["boards", "list"], ["boards", "ping", "local"], ["boards", "add", "other", "local"]):
        one_error_line(run(env, *args), 1, str(path), "board 'pi'", "unknown key 'ssh.prot'")
    assert path.read_text() == before  # add never rewrites a file it cannot read


def _ping_unready(env: dict[str, str], name: str) -> tuple[str, dict[str, object]]:
    proc = run(env, "boards", "ping", name)
    line = one_error_line(proc, 1, f"board '{name}' cannot run models", f"edgeship boards setup {name}")
    assert proc.stdout.startswith(f"{name}: agent ") and "runtime none" in proc.stdout  # the agent did answer
    as_json = run(env, "boards", "ping", name, "--json")
    assert as_json.returncode == 1
    (entry,) = json.loads(as_json.stdout)
    assert entry["ok"] is False and entry["error"] in line
    return line, entry["result"]


def test_a_board_without_numpy_says_so_in_one_line_and_ping_exits_1(env: dict[str, str], bare_python: Path) -> None:
    assert run(env, "boards", "add", "bare", "local").returncode == 0
    path = user_file(env)
    path.write_text(path.read_text().replace("    transport: local\n", f"    transport: local\n    python: {bare_python}\n"))
    line, info = _ping_unready(env, "bare")
    assert "numpy is not installed" in line and "No module named 'numpy'" in line
    assert info["numpy"] == {"version": None, "error": "ModuleNotFoundError: No module named 'numpy'"}
    both = run(env, "boards", "ping", "local", "bare")  # one board fine, one not: the table shows both, exit 1
    one_error_line(both, 1, "cannot run models: bare", "edgeship boards setup")
    assert both.stdout.startswith("local: agent ") and "numpy is not installed" in both.stdout


def test_bench_and_eval_stop_before_any_upload_on_a_board_without_numpy(env: dict[str, str], bare_python: Path,
                                                                         tmp_path: Path) -> None:
    import importlib.util

    micro = importlib.util.find_spec("tflite_micro")  # a real .tflite that ships with the micro extra
    assert micro is not None and micro.submodule_search_locations
    model = Path(next(iter(micro.submodule_search_locations))) / "python" / "tflite_micro" / "sine_float.tflite"
    bundled = run(env, "bundle", str(model), "-o", str(tmp_path / "sine"))
    assert bundled.returncode == 0, bundled.stderr
    assert run(env, "boards", "add", "bare", "local").returncode == 0
    path = user_file(env)
    path.write_text(path.read_text().replace("    transport: local\n", f"    transport: local\n    python: {bare_python}\n"))
    store = Path(env["HOME"]) / ".edgeship" / "store"
    one_error_line(run(env, "bench", str(tmp_path / "sine"), "--board", "bare", "--runs", "1"), 1,
                   "board 'bare' cannot run models: numpy is not installed", "edgeship boards setup bare")
    assert (store / "blobs").is_dir() and not any((store / "blobs").iterdir())  # the agent ran; nothing was uploaded


def test_a_board_without_a_runtime_says_so_in_one_line_and_ping_exits_1(env: dict[str, str]) -> None:
    missing = subprocess.run([sys.executable, "-c", "import tflite_runtime"], capture_output=True, timeout=30)
    assert missing.returncode != 0  # the runtime this board is forced to really is absent here
    assert run(env, "boards", "add", "nort", "local", "--runtime", "tflite_runtime").returncode == 0
    line, info = _ping_unready(env, "nort")
    assert "no TFLite runtime" in line and "tflite_runtime" in line
    assert info["numpy"]["version"]  # numpy is there: only the runtime is missing


def test_the_agent_without_numpy_answers_hello_and_refuses_runs(tmp_path: Path, bare_python: Path) -> None:
    from edgeship.sdk.client import Session, cannot_run
    from edgeship.sdk.transport.local import LocalStream

    session = Session(LocalStream(tmp_path / "store", python=bare_python))
    try:
        info = session.hello()
        assert info["numpy"]["version"] is None and info["runtime"]["name"] is None
        assert "numpy is not installed" in (cannot_run(info, "b") or "")
        up = session.upload(b"not a model, never loaded")
        result = session.run("bench", up.sha256, None, {"runs": 1, "min_seconds": 0})
    finally:
        session.close()
    assert result["status"] == "no_runtime" and "numpy is not installed" in result["message"]


def test_an_ssh_board_without_numpy_is_named_too(env: dict[str, str], bare_python: Path, tmp_path: Path) -> None:
    from edgeship.sdk.emulate.sshd import Sshd

    with Sshd(tmp_path / "sshd") as server:  # a real sshd on loopback in front of the numpy-less Python
        url = (f"ssh://{server.user}@127.0.0.1:{server.port}?python={bare_python}&key={server.user_key_path}"
               f"&known_hosts={tmp_path / 'known_hosts'}&store={tmp_path / 'board-store'}")
        assert run(env, "boards", "add", "sshbare", url).returncode == 0
        proc = run(env, "boards", "ping", "sshbare", "--accept-new-host")
        one_error_line(proc, 1, "board 'sshbare' cannot run models: numpy is not installed",
                       "No module named 'numpy'", "edgeship boards setup sshbare")
        assert proc.stdout.startswith("sshbare: agent ") and "runtime none" in proc.stdout
