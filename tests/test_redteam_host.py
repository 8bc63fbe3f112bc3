"""Red team, host side: the host against a hostile board, and the CLI against signals and an unwritable results dir.

The hostile board is tests/hostile_agent.py: the real protocol (device_agent.protocol.Link)
with one misbehaviour per mode. It is driven (a) through sdk.client.Session over a
subprocess pipe, every mode, and (b) through the real `edgeship` command, as the
`python=` of an ssh:// board behind the real sshd (sdk/emulate/sshd.py): exactly the
path a user's command takes to a board. Every case must end in one `edgeship: error:`
line, an exit code other than 0 and 70, no traceback, no hang (a hard timeout) and a
bounded peak RSS. The signal tests interrupt real pushes and fleet runs and check that
nothing partial is left and that the next push resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.client import Session, _wire_form
from edgeship.sdk.emulate.sshd import Sshd
from edgeship.sdk.errors import AgentError, BoardProtocolError, LinkError
from edgeship.sdk.transport.local import LocalStream
from tests.conftest import EDGESHIP, ROOT
from tests.hostile_agent import MODES, NASTY

HOSTILE = ROOT / "tests" / "hostile_agent.py"
CLI_TIMEOUT = 60.0
MAX_RSS_KIB = 400 * 1024  # the CLI with numpy, paramiko and rich is about 100 MiB; unbounded growth is not

# mode -> (the exception Session raises, a needle of its message)
SESSION_CASES: dict[str, tuple[type[Exception], str]] = {
    "put-offset-0": (BoardProtocolError, "keeps asking for the upload"),
    "put-past-end": (BoardProtocolError, "past the end"),
    "hello-version-int": (BoardProtocolError, "agent_version is 5, not a string"),
    "hello-runtime-list": (BoardProtocolError, "runtime is ['ai_edge_litert', '2.3.0'], not an object"),
    "max-frame-str": (BoardProtocolError, "limits.max_frame is 'big', not an integer"),
    "offset-str": (BoardProtocolError, "`put_begin`: offset is '0', not an integer"),
    "offset-missing": (BoardProtocolError, "`put_begin`: offset is missing"),
    "result-no-status": (BoardProtocolError, "`run`: status is missing"),
    "result-latency-str": (BoardProtocolError, "latency_ms is 'fast', not an object"),
    "negative-latency": (BoardProtocolError, "latency_ms.min is -5.0"),
    "nan-accuracy": (BoardProtocolError, "has NaN: numbers on the wire must be finite"),
    "huge-list": (BoardProtocolError, "latency_samples_ms has 60,000 entries"),
    "huge-frame": (LinkError, "exceeds the limit of 1048576"),
    "deep-json": (BoardProtocolError, "nests deeper than 32 levels"),
    "error-control-bytes": (AgentError, "disk on fire"),
    "disconnect-mid-put": (LinkError, "the local agent is gone"),
    "wrong-op": (BoardProtocolError, "answered `has` with 'progress'"),
}
UPLOAD_MODES = ("put-offset-0", "put-past-end", "offset-str", "offset-missing", "error-control-bytes",
                "disconnect-mid-put", "wrong-op")


def _session(mode: str, tmp_path: Path) -> Session:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOSTILE_MODE=mode)
    return Session(LocalStream(tmp_path / "store", python=sys.executable, agent=HOSTILE, env=env))


def _drive(session: Session, mode: str) -> Any:
    session.hello()
    if mode in UPLOAD_MODES:
        return session.upload(os.urandom(300_000))  # incompressible: raw, five 64 KiB chunks
    return session.run("bench", "0" * 64, None, {})


def test_every_mode_is_refused_by_the_session_with_a_named_field(tmp_path: Path) -> None:
    """(a) Session over a pipe: each hostile mode raises a project error naming what was wrong, and never hangs."""
    # endless-progress costs its run limit (5.55 s) and goes through the same Session.run in the CLI test
    assert set(SESSION_CASES) | {"huge-string", "control-bytes", "endless-progress"} == set(MODES)
    outcomes = {}
    for mode, (error, needle) in SESSION_CASES.items():
        session = _session(mode, tmp_path)
        started = time.monotonic()
        try:
            with pytest.raises(error) as caught:
                _drive(session, mode)
        finally:
            session.abort()
        outcomes[mode] = (type(caught.value).__name__, round(time.monotonic() - started, 2))
        assert needle in str(caught.value), (mode, str(caught.value))
        assert time.monotonic() - started < 20, mode
    print("session outcomes:", outcomes)


def test_absurd_strings_are_clipped_before_anyone_reads_them(tmp_path: Path) -> None:
    """A 900,000-character run message arrives clipped to 2,000; control bytes stay in the data (escaped on print)."""
    for mode, limit in (("huge-string", 2000), ("control-bytes", 2000)):
        session = _session(mode, tmp_path)
        try:
            result = _drive(session, mode)
        finally:
            session.close()
        assert result["status"] == "crashed" and len(result["message"]) <= limit
    assert result["message"].endswith(NASTY)  # the raw text is kept in the document; the CLI escapes it


# -- (b) the real CLI, through the real sshd -------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def bundle(convert_digits: Any) -> Path:
    return Path(convert_digits("int8").bundle)


def _hostile_board(server: Sshd, root: Path, mode: str) -> str:
    """An ssh:// board whose `python=` is a launcher of the hostile agent in `mode`, as a user could set it."""
    launcher = root / f"hostile-{mode}"
    launcher.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} {HOSTILE} {mode} \"$@\"\n")
    launcher.chmod(0o755)
    return (f"ssh://{server.user}@127.0.0.1:{server.port}?python={launcher}&key={server.user_key_path}"
            f"&known_hosts={root / 'known_hosts'}&store={root / 'board-store'}")


def run_measured(args: list[str], timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None,
                 signal_when: Any = None, sig: int = signal.SIGINT) -> tuple[int, str, str, int, float]:
    """Run the `edgeship` command: (exit code, stdout, stderr, peak RSS in KiB sampled every 20 ms, seconds after the signal).

    With `signal_when` (a callable polled every 20 ms), `sig` is sent once it returns true.
    The process is killed, and the test fails, if it outlives `timeout`.
    """
    proc = subprocess.Popen([str(EDGESHIP), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    out: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k, s: out.__setitem__(k, s.read()), args=(k, s))
               for k, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    signalled_at = None
    peak = 0
    while True:
        peak = max(peak, _hwm_kib(proc.pid))
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.waitpid(proc.pid, 0)
            pytest.fail(f"edgeship {' '.join(args[:2])} hung (killed after {timeout:.0f} s)")
        if signal_when is not None and signalled_at is None and signal_when():
            proc.send_signal(sig)
            signalled_at = time.monotonic()
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(10)
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()  # type: ignore[union-attr]
    after = time.monotonic() - signalled_at if signalled_at is not None else 0.0
    return (proc.returncode, out.get("out", b"").decode("utf-8", "replace"), out.get("err", b"").decode("utf-8", "replace"),
            peak, after)


def _hwm_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM; wait4's ru_maxrss would count the forking parent's)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code not in (0, 70), err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: "), err
    return lines[0]


def _no_control_bytes(text: str) -> None:
    bad = sorted({f"{ord(c):#x}" for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0
                  or 0x202A <= ord(c) <= 0x202E})
    assert not bad, f"control characters reached the terminal: {bad}"


# mode -> (command, a needle of the error line)
CLI_CASES = {
    "hello-version-int": ("ping", "agent_version is 5, not a string"),
    "huge-frame": ("ping", "exceeds the limit of 1048576"),
    "deep-json": ("ping", "nests deeper than 32 levels"),
    "put-offset-0": ("push", "keeps asking for the upload"),
    "offset-missing": ("push", "offset is missing"),
    "disconnect-mid-put": ("push", "exited with status 0"),
    "error-control-bytes": ("push", "disk on fire"),
    "result-no-status": ("bench", "status is missing"),
    "negative-latency": ("bench", "latency_ms.min is -5.0"),
    "endless-progress": ("bench", "did not finish the run within 6 s"),
}


def _command(kind: str, board: str, bundle: Path, tmp_path: Path) -> list[str]:
    if kind == "ping":
        return ["boards", "ping", board, "--accept-new-host"]
    if kind == "push":
        return ["push", str(bundle), "--board", board, "--accept-new-host", "-q"]
    return ["bench", str(bundle), "--board", board, "--accept-new-host", "-q", "--results-dir", str(tmp_path / "r")]


def test_the_cli_survives_every_hostile_board(sshd: Sshd, bundle: Path, tmp_path: Path) -> None:
    """(b) Through `edgeship` and a real sshd: one line, a non-zero exit other than 70, no traceback, bounded memory."""
    figures = {}
    for mode, (kind, needle) in CLI_CASES.items():
        board = _hostile_board(sshd, tmp_path, mode)
        code, out, err, rss, _ = run_measured(_command(kind, board, bundle, tmp_path))
        line = _one_error_line(code, err)
        assert needle in line, (mode, line)
        _no_control_bytes(out + err)
        assert rss < MAX_RSS_KIB, (mode, rss)
        figures[mode] = (code, rss // 1024)
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())  # no result from a bad reply
    print("cli outcomes (exit, MiB):", figures)


def test_board_text_reaches_the_terminal_escaped(sshd: Sshd, bundle: Path, tmp_path: Path) -> None:
    """Escape sequences in a board's identity and run message are printed as \\x1b..., never as bytes."""
    board = _hostile_board(sshd, tmp_path, "control-bytes")
    code, out, err, _, _ = run_measured(["boards", "ping", board, "--accept-new-host"])
    assert code == 0, err
    assert "\\x1b[2J" in out and "\\u202e" in out and "\x1b" not in out
    _no_control_bytes(out + err)
    code, out, err, _, _ = run_measured(_command("bench", board, bundle, tmp_path))
    assert code == 1 and "status crashed" in out and "the runtime crashed\\x1b[2J" in out, out + err
    _one_error_line(code, err)
    _no_control_bytes(out + err)
    saved = json.loads(next((tmp_path / "r").glob("*.json")).read_text())  # the document keeps the raw text
    assert saved["result"]["message"].endswith(NASTY)


# -- signals and the results directory -------------------------------------------------------------------


def _procs_mentioning(needle: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def test_sigint_mid_push_exits_130_and_the_next_push_resumes(bundle: Path, tmp_path: Path) -> None:
    """Ctrl-C while the model crosses a 460800-baud line: exit 130, one line, services stopped, a resumable partial."""
    store = tmp_path / "serial-store"
    boards = tmp_path / "boards.yaml"
    boards.write_text("schema_version: 1\nboards:\n  slowline:\n    description: emulated serial board\n"
                      "    transport: emulated\n    emulator: emu-serial\n"
                      "    serial: {url: '(started on demand)', baud: 460800}\n"
                      f"    store: {{dir: {store}}}\n")
    env = {"EDGESHIP_EMULATE_DIR": str(tmp_path / "emu")}
    wire = len(_wire_form((bundle / "model.tflite").read_bytes())[1])  # the bytes the upload sends

    def partway() -> bool:
        parts = list((store / "partial").glob("*")) if (store / "partial").exists() else []
        return any(wire // 2 < p.stat().st_size for p in parts)  # half-way: the resume has half to send

    code, out, err, _, after = run_measured(["--boards", str(boards), "push", str(bundle), "--board", "slowline", "-q"],
                                            env=env, signal_when=partway)
    line = _one_error_line(code, err)
    assert code == 130 and "interrupted" in line, err
    assert after < 15, after
    partial = sum(p.stat().st_size for p in (store / "partial").glob("*"))
    assert partial > 0, "nothing of the upload was kept for the resume"
    assert not (store / "blobs").exists() or not list((store / "blobs").iterdir())
    time.sleep(0.5)
    assert _procs_mentioning(str(store)) == [], "the emulated board's agent outlived the interrupted command"

    code, out, err, _, _ = run_measured(["--boards", str(boards), "push", str(bundle), "--board", "slowline", "--json"],
                                        env=env)
    assert code == 0, err
    up = json.loads(out)[0]["result"]["upload"]
    assert not up["skipped"] and wire // 2 < up["resumed_from"] < wire == up["wire_size"], up
    assert up["sent_bytes"] == wire - up["resumed_from"], up
    print(f"push resumed at {up['resumed_from']} of {up['wire_size']} bytes")


def _two_local_boards(tmp_path: Path) -> tuple[Path, list[Path]]:
    stores = [tmp_path / "a", tmp_path / "b"]
    boards = tmp_path / "boards.yaml"
    boards.write_text("schema_version: 1\nboards:\n" + "".join(
        f"  {s.name}:\n    description: local agent {s.name}\n    transport: local\n    store: {{dir: {s}}}\n"
        for s in stores))
    return boards, stores


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_fleet_stops_every_board_promptly(bundle: Path, tmp_path: Path, sig: int, code: int,
                                                       word: str) -> None:
    """A signal while two boards bench for 30 s each: the command ends in seconds, with nothing half-written."""
    boards, stores = _two_local_boards(tmp_path)
    results = tmp_path / "results"
    sha = json.loads((bundle / "manifest.json").read_text())["sha256"]
    running_since: list[float] = []

    def both_running() -> bool:
        if all((s / "blobs" / sha).exists() for s in stores):
            running_since.append(time.monotonic())
            return running_since[-1] - running_since[0] > 1.0  # the runs have started
        return False

    got, _, err, _, after = run_measured(
        ["--boards", str(boards), "bench", str(bundle), "--board", "a,b", "--runs", "1", "--min-seconds", "30",
         "--results-dir", str(results), "-q"], signal_when=both_running, sig=sig)
    line = _one_error_line(got, err)
    assert got == code and word in line, err
    assert after < 12, f"the fleet took {after:.1f} s to stop"
    assert not results.exists() or not list(results.iterdir()), list(results.iterdir())
    time.sleep(0.5)
    for s in stores:
        assert _procs_mentioning(str(s)) == [], f"the agent of {s.name} outlived the command"
    print(f"fleet stopped {after:.2f} s after the signal")


def test_an_unwritable_results_dir_is_one_line_exit_1_and_the_result_is_still_printed(bundle: Path,
                                                                                     tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    boards, _ = _two_local_boards(tmp_path)
    bench = ["--boards", str(boards), "bench", str(bundle), "--runs", "3", "--warmup", "1", "--min-seconds", "0",
             "--results-dir", str(blocker / "results"), "-q"]
    code, out, err, _, _ = run_measured([*bench, "--board", "a", "--json"])
    line = _one_error_line(code, err)
    assert code == 1 and "--results-dir: cannot write the result to" in line and str(blocker) in line, err
    assert json.loads(out)[0]["result"]["result"]["status"] == "ok"  # the finished result is not lost
    code, out, err, _, _ = run_measured([*bench, "--board", "a,b"])
    line = _one_error_line(code, err)
    assert code == 1 and "2 of 2 results not saved" in line, err
    assert out.count(" ok ") >= 2, out  # both boards' rows are printed
    assert not list(tmp_path.glob("**/.*.tmp"))
