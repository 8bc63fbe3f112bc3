"""What a person sees when a command line is wrong, a package is missing, or a command has several boards.

- a group given no command or a bad option (`edgeship --bogus`, `edgeship boards`) is one line, exit 2;
- option values are checked before TensorFlow is imported (a fresh interpreter reports its sys.modules);
- a package this install lacks names the extra that installs it (the import really fails: a meta-path
  blocker in a fresh interpreter), never an internal error;
- every exit code of docs/cli.md's table comes from a real command that produces it;
- check and push take several boards, inspect takes a bundle, agent build prints a command that runs;
- shell completion completes board names and recipes (click's protocol, in a fresh interpreter).

The models are tiny flatbuffers made without TensorFlow (tests/helpers_crafted.py); boards are `local`
agents with their stores in the test's directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeship.converters.bundle import bundle_tflite
from edgeship.converters.data import MIN_CALIBRATION_SAMPLES
from edgeship.converters.recipe import CLUSTERS_RANGE, RECIPES, Recipe
from edgeship.sdk.cli import main
from edgeship.sdk.errors import UsageError
from tests import helpers_crafted as crafted
from tests.conftest import EDGESHIP, run_cli

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
HEAVY = ("tensorflow", "keras", "tf_keras", "tensorflow_model_optimization")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_DEBUG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    env.update(extra)
    return env


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a one-LOG float32 model, made without TensorFlow."""
    root = tmp_path_factory.mktemp("ux")
    (root / "log.tflite").write_bytes(crafted.log_of_input())
    return bundle_tflite(root / "log.tflite", root / "bundle").bundle


@pytest.fixture()
def boards(tmp_path: Path) -> Path:
    """Four local boards (a, b, c, d) with their own stores, and `gone`, a serial board that is not plugged in."""
    path = tmp_path / "boards.yaml"
    path.write_text("schema_version: 1\nboards:\n" + "".join(
        f"  {n}:\n    description: local agent {n}\n    transport: local\n    store: {{dir: {tmp_path / n}}}\n"
        for n in ("a", "b", "c", "d"))
        + "  gone:\n    description: not plugged in\n    transport: serial\n"
          "    serial: {url: /dev/edgeship-no-such-tty, baud: 115200}\n")
    return path


# --- 1. group-level mistakes --------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needles"), [
    (["--bogus"], ["No such option '--bogus'", "(see 'edgeship --help')"]),
    ([], ["edgeship needs a command:", "convert", "boards", "(see 'edgeship --help')"]),
    (["boards"], ["edgeship boards needs a command: add, list, ping, setup or show", "(see 'edgeship boards --help')"]),
    (["emulate"], ["edgeship emulate needs a command: down, setup, status or up"]),
    (["agent"], ["edgeship agent needs a command: build or serve"]),
    (["boards", "--bogus"], ["No such option '--bogus'", "(see 'edgeship boards --help')"]),
    (["--boards"], ["'--boards' requires an argument", "(see 'edgeship --help')"]),
    (["nope"], ["No such command 'nope'"]),
], ids=["bogus-option", "no-command", "boards", "emulate", "agent", "boards-bogus", "boards-file-missing", "no-such-command"])
def test_a_group_level_mistake_is_one_line_and_exit_2(args: list[str], needles: list[str]) -> None:
    result = CliRunner().invoke(main, args, prog_name="edgeship")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    line = _one_line(result.stderr)
    for needle in needles:
        assert needle in line, line
    assert "Usage:" not in line  # one line, not the help


# --- 2. option values are checked before TensorFlow is imported ----------------------------------

# Runs several `edgeship` command lines in one fresh interpreter, then reports what each printed and what got imported.
PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from edgeship.sdk.cli import main

    runs = []
    for args in json.loads(sys.argv[1]):
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(args, prog_name="edgeship", standalone_mode=False)
            except SystemExit as exc:
                code = exc.code
        runs.append({"args": args, "exit_code": code, "stderr": err.getvalue()})
    print(json.dumps({"runs": runs, "modules": sorted(sys.modules)}))
""")


def test_option_values_fail_before_tensorflow_is_imported(tmp_path: Path) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"not a keras file: loading it would import TensorFlow and fail differently")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 8), np.float32), y=np.zeros(4, np.int64))
    out = str(tmp_path / "out")
    low, high = CLUSTERS_RANGE
    cases: list[tuple[list[str], int, str]] = [
        (["-r", "int8", "--calib", str(data), "--calib-samples", str(MIN_CALIBRATION_SAMPLES - 22)], 2,
         f"--calib-samples: must be at least {MIN_CALIBRATION_SAMPLES} (got {MIN_CALIBRATION_SAMPLES - 22})"),
        (["-r", "int8", "--calib", str(data), "--calib-samples", "0"], 2, "--calib-samples: must be at least"),
        (["-r", "int8", "--calib", str(data), "--image-range", "1,-1"], 2, "--image-range: needs LO < HI"),
        (["-r", "int8", "--calib", str(data), "--image-range", "1"], 2, "--image-range: expected LO,HI"),
        (["-r", "qat", "--train", str(data), "--epochs", "0"], 2, "--epochs: must be at least 1 (got 0)"),
        (["-r", "qat", "--train", str(data), "--learning-rate", "-0.001"], 2, "--learning-rate: must be a positive number"),
        (["-r", "qat", "--train", str(data), "--batch-size", "0"], 2, "--batch-size: must be at least 1 (got 0)"),
        (["-r", "float32", "--train", str(data), "--sparsity", "0.5", "--epochs", "0"], 2, "--epochs: must be at least 1"),
        (["-r", "float32", "--train", str(data), "--sparsity", "0.5", "--learning-rate", "0"], 2, "--learning-rate:"),
        (["-r", "float32", "--train", str(data), "--clusters", str(low - 1)], 2, f"--clusters: must be between {low} and {high}"),
        (["-r", "float32", "--train", str(data), "--clusters", str(high + 1)], 2, f"--clusters: must be between {low} and {high}"),
        (["-r", "float32", "--train", str(data), "--sparsity", "1"], 2, "--sparsity: must be between 0 and 1"),
        (["-r", "float32", "--batch", "0"], 2, "--batch: must be at least 1 (got 0)"),
        (["-r", "float32", "--output", "probs"], 2, "--output: picks the output"),
        (["-r", "int8", "--calib", str(tmp_path / "nope.npz")], 1, f"--calib: {tmp_path / 'nope.npz'}: no such file"),
        (["-r", "qat", "--train", str(tmp_path / "nope.npz")], 1, "--train: "),
        (["-r", "float32", "--eval", str(tmp_path)], 1, "--eval: "),
    ]
    quant = [
        (["--calib-samples", "3"], 2, f"--calib-samples: must be at least {MIN_CALIBRATION_SAMPLES}"),
        (["--top", "-1"], 2, "--top: must be 0"),
        (["--batch", "0"], 2, "--batch: must be at least 1"),
        (["--try-float", "-1"], 2, "--try-float: must be 0 or more"),
        (["--image-range", "0,0"], 2, "--image-range: needs LO < HI"),
        (["--eval", str(tmp_path / "nope.npz")], 1, "--eval: "),
    ]
    lines = [["convert", str(model), "-o", out, "-q", *args] for args, _, _ in cases]
    lines += [["debug-quant", str(model), "--calib", str(data), "--eval", str(data), "-q", *args] for args, _, _ in quant]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(lines)], capture_output=True, text=True, cwd=ROOT,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for run, (_, code, start) in zip(report["runs"], cases + quant):
        line = _one_line(run["stderr"])
        assert run["exit_code"] == code and line.startswith(f"edgeship: error: {start}"), (run["args"], line)
    assert "edgeship.converters.recipe" in report["modules"]  # the commands really ran
    assert [m for m in report["modules"] if m.split(".")[0] in HEAVY] == []
    assert not Path(out).exists()


def test_the_bounds_are_the_librarys(tmp_path: Path) -> None:
    """The CLI has no numbers of its own: the library's bound is the first value that passes."""
    calib = tmp_path / "c.npz"
    assert Recipe.int8(calib, samples=MIN_CALIBRATION_SAMPLES).calib_samples == MIN_CALIBRATION_SAMPLES
    with pytest.raises(UsageError, match=f"at least {MIN_CALIBRATION_SAMPLES}") as err:
        Recipe.int8(calib, samples=MIN_CALIBRATION_SAMPLES - 1)
    assert err.value.option == "calib_samples"
    for k in CLUSTERS_RANGE:
        assert Recipe.from_name("float32", train=calib, clusters=k).compression.clusters == k  # type: ignore[union-attr]
    with pytest.raises(UsageError) as bad:
        Recipe.from_name("qat", train=calib, learning_rate=float("nan"))
    assert bad.value.option == "learning_rate"


# --- 3. a package this install lacks ---------------------------------------------------------------

# A sitecustomize on PYTHONPATH: every Python started with it (the CLI, and the converter's child process) finds
# none of these packages, as on an install without them; an import of one fails where the real code imports it.
BLOCKER = textwrap.dedent("""
    import os, sys

    BLOCK = set(os.environ["EDGESHIP_TEST_BLOCK"].split(","))

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")


def _without(modules: str, *args: str, script: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed `edgeship ARGS` on a Python where `modules` (comma-separated) are not installed.

    `script=False` runs the CLI module itself (python -m edgeship.sdk.cli), past the console script's own
    check for the host packages.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeship-blocked-") as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(BLOCKER)
        env = _env(EDGESHIP_TEST_BLOCK=modules)
        env["PYTHONPATH"] = os.pathsep.join([tmp, env["PYTHONPATH"]])
        probe = subprocess.run([sys.executable, "-c", f"import {modules.split(',')[0]}"], env=env, capture_output=True)
        assert probe.returncode != 0, f"the blocker did not hide {modules}"
        command = [str(EDGESHIP)] if script else [sys.executable, "-m", "edgeship.sdk.cli"]
        return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_missing_tensorflow_names_the_convert_extra(tmp_path: Path) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK")  # the file exists, so convert goes on to load it with Keras
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.zeros((64, 4), np.float32), y=np.zeros(64, np.int64))
    out = str(tmp_path / "out")
    for args in (["convert", str(model), "-r", "float32", "-o", out, "-q"],  # the converter's child starts first
                 ["convert", str(model), "-r", "qat", "--train", str(calib), "-o", out, "-q"],  # a strategy first
                 ["debug-quant", str(model), "--calib", str(calib), "--eval", str(calib), "-q"],
                 ["inspect", str(model)]):
        proc = _without("tensorflow,keras,tf_keras,tensorflow_model_optimization", *args)
        line = _one_line(proc.stderr)
        assert proc.returncode == 1, (args, line)
        assert "is not installed" in line and "pip install 'edgeship[convert]'" in line and "internal error" not in line, line


def test_missing_runtime_names_the_agent_extra(tmp_path: Path, float_bundle: Path) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((3, 1, 4), np.float32), y=np.zeros(3, np.int64))
    proc = _without("ai_edge_litert,tflite_runtime,tensorflow", "eval-host", str(float_bundle), "--data", str(data))
    line = _one_line(proc.stderr)
    assert proc.returncode == 1 and "no TFLite runtime found" in line and "pip install 'edgeship[agent]'" in line, line


def test_missing_paramiko_names_the_host_extra_for_one_board_and_in_a_fleet(float_bundle: Path, boards: Path) -> None:
    ssh = "ssh://nobody@127.0.0.1:9"
    one = _without("paramiko", "push", str(float_bundle), "--board", ssh)
    assert one.returncode == 1 and "paramiko is not installed" in _one_line(one.stderr)
    assert "pip install 'edgeship[host]'" in one.stderr
    fleet = _without("paramiko", "--boards", str(boards), "push", str(float_bundle), "--board", f"a,{ssh}", "--json")
    assert fleet.returncode == 1, fleet.stderr
    entries = {e["board"]: e for e in json.loads(fleet.stdout)}
    assert entries["a"]["ok"] and "pip install 'edgeship[host]'" in entries[ssh]["error"], entries


def test_a_missing_module_no_extra_installs_stays_an_internal_error() -> None:
    proc = _without("rich", "boards", "list", script=False)  # rich is the CLI's own dependency, not an extra's
    line = _one_line(proc.stderr)
    assert proc.returncode == 70 and "internal error: ModuleNotFoundError" in line and "--debug" in line, line


# --- 4. the exit-code table of docs/cli.md, each code from a real command ---------------------------

def _doc_exit_codes() -> dict[int, str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("Exit codes ("):]
    section = section[: section.index("\n\n", section.index("| code |"))]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| `(\d+)` \| (.*) \|$", section, re.M)}


def _signalled(args: list[str], sig: int, store: Path, sha: str) -> subprocess.CompletedProcess[str]:
    """`edgeship ARGS` sent `sig` once its bench runs on the board (the model has been in the board's store for a second)."""
    proc = subprocess.Popen([str(EDGESHIP), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 60
    while not (store / "blobs" / sha).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_exit_code_table_matches_real_commands(tmp_path: Path, float_bundle: Path, boards: Path) -> None:
    documented = _doc_exit_codes()
    assert set(documented) == {0, 1, 2, 3, 70, 130, 143}, documented
    assert "gate" in documented[3] and "RunError" in documented[1] and "RunError" not in documented[3]
    huge = tmp_path / "huge"
    (tmp_path / "huge.tflite").write_bytes(crafted.huge_add((1 << 14, 1 << 14)))  # 1 GiB tensors, over the worker's limit
    bundle_tflite(tmp_path / "huge.tflite", huge)
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK")
    def bench(board: str) -> list[str]:
        return ["--boards", str(boards), "bench", str(float_bundle), "--board", board, "-q", "--results-dir", str(tmp_path / "r")]

    sha = json.loads((float_bundle / "manifest.json").read_text())["sha256"]

    got: dict[int, list[subprocess.CompletedProcess[str]]] = {
        0: [run_cli("--version")],
        1: [run_cli("inspect", str(tmp_path / "nope.tflite")),
            run_cli("check", str(float_bundle), "--board", "emu-mcu"),  # int8-only board, float model
            run_cli("--boards", str(boards), "bench", str(huge), "--board", "a", "--runs", "1", "-q",
                    "--results-dir", str(tmp_path / "r"))],  # the model did not run: out_of_memory
        2: [run_cli("convert", str(model), "-o", str(tmp_path / "o"), "-r", "int8", "--calib", str(model),
                    "--calib-samples", "10")],
        3: [run_cli(*bench("a"), "--runs", "1", "--min-seconds", "0", "--max-p90-ms", "0.000001")],
        70: [_without("rich", "boards", "list", script=False)],
        130: [_signalled([*bench("c"), "--min-seconds", "30"], signal.SIGINT, tmp_path / "c", sha)],  # a fresh store each:
        143: [_signalled([*bench("d"), "--min-seconds", "30"], signal.SIGTERM, tmp_path / "d", sha)],  # the run has begun
    }
    assert set(got) == set(documented)
    for code, procs in got.items():
        for proc in procs:
            assert proc.returncode == code, (code, proc.args, proc.returncode, proc.stderr[-1000:])
            if code:
                _one_line(proc.stderr)
    assert "the run failed on a: out_of_memory" in got[1][2].stderr
    assert "missed its gates" in got[3][0].stderr
    assert "interrupted" in got[130][0].stderr and "terminated (SIGTERM)" in got[143][0].stderr


# --- 5. several boards for check and push; inspect a bundle; agent build ---------------------------

def test_check_several_boards(float_bundle: Path, boards: Path) -> None:
    one = run_cli("--boards", str(boards), "check", str(float_bundle), "--board", "a", "--json")
    (entry,) = json.loads(one.stdout)  # one board: a list of one entry, as for several
    assert one.returncode == 0 and entry["board"] == "a" and entry["ok"] and entry["result"]["compatible"] is True
    proc = run_cli("--boards", str(boards), "check", str(float_bundle), "--board", "a,emu-mcu,b", "--json")
    assert proc.returncode == 1
    assert _one_line(proc.stderr) == "edgeship: error: 1 of 3 boards cannot run this model: emu-mcu"
    entries = json.loads(proc.stdout)
    assert [(e["board"], e["ok"]) for e in entries] == [("a", True), ("emu-mcu", False), ("b", True)]
    assert entries[1]["result"]["problems"][0]["code"] == "not_int8" and "int8-only" in entries[1]["error"]
    assert entries[0]["error"] is None and entries[0]["result"]["compatible"] is True
    text = run_cli("--boards", str(boards), "check", str(float_bundle), "--board", "a,emu-mcu")
    assert text.returncode == 1
    rows = {line.split()[0]: line for line in text.stdout.splitlines() if line.split() and line.split()[0] in ("a", "emu-mcu")}
    assert "compatible" in rows["a"] and "INCOMPATIBLE" in rows["emu-mcu"], text.stdout
    every = run_cli("--boards", str(boards), "check", str(float_bundle), "--all", "--json")
    names = {e["board"] for e in json.loads(every.stdout)}
    assert {"a", "b", "local", "emu-mcu"} <= names and "rpi4-litert" not in names  # example profiles are left out


def test_push_several_boards(float_bundle: Path, boards: Path, tmp_path: Path) -> None:
    sha = json.loads((float_bundle / "manifest.json").read_text())["sha256"]
    proc = run_cli("--boards", str(boards), "push", str(float_bundle), "--board", "a,gone,b", "--json", "-j", "2")
    assert proc.returncode == 1 and _one_line(proc.stderr) == "edgeship: error: 1 of 3 boards failed: gone"
    entries = json.loads(proc.stdout)
    assert [(e["board"], e["ok"]) for e in entries] == [("a", True), ("gone", False), ("b", True)]
    assert "/dev/edgeship-no-such-tty" in entries[1]["error"] and entries[1]["result"] is None
    assert entries[0]["result"]["model_sha256"] == sha and not entries[0]["result"]["upload"]["skipped"]
    for store in ("a", "b"):
        assert (tmp_path / store / "blobs" / sha).exists()
    again = run_cli("--boards", str(boards), "push", str(float_bundle), "--board", "a,b")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"{b}: model {sha[:12]} ({(float_bundle / 'model.tflite').stat().st_size / 1024:.1f} "
                                         f"KiB): already on the board, nothing sent" for b in ("a", "b")]


def test_inspect_a_bundle(float_bundle: Path, tmp_path: Path) -> None:
    sha = json.loads((float_bundle / "manifest.json").read_text())["sha256"]
    text = run_cli("inspect", str(float_bundle))
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    assert first.startswith(f"{float_bundle}: bundle, recipe prebuilt (float32") and sha[:12] in first, first
    assert "LOG" in text.stdout and "fully integer: no" in text.stdout  # then the model itself, as for a .tflite
    doc = json.loads(run_cli("inspect", "--json", str(float_bundle)).stdout)
    assert doc["kind"] == "bundle" and doc["manifest"]["sha256"] == doc["model"]["sha256"] == sha
    assert doc["model"]["kind"] == "tflite" and [o["name"] for o in doc["model"]["operators"]] == ["LOG"]
    edited = tmp_path / "edited"
    bundle_tflite(float_bundle / "model.tflite", edited)
    (edited / "model.tflite").write_bytes(crafted.log_of_input(8))
    bad = run_cli("inspect", str(edited))
    assert bad.returncode == 1 and "does not match the sha256" in _one_line(bad.stderr)


def test_inspect_a_bundle_does_not_import_tensorflow(float_bundle: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([["inspect", str(float_bundle)]])], capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["runs"][0]["exit_code"] == 0 and "edgeship.converters.inspect" in report["modules"]
    assert [m for m in report["modules"] if m.split(".")[0] in HEAVY] == []


class _ShellStream:
    """The agent started by a shell command line, as a person would type it, as a byte stream (read/write/close)."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return os.read(self.proc.stdout.fileno(), max_bytes) if ready else b""

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait(timeout=10)


def test_agent_build_prints_commands_that_run(tmp_path: Path) -> None:
    from edgeship.sdk.client import Session

    out = tmp_path / "dist" / "edgeship-agent.pyz"
    proc = run_cli("agent", "build", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    commands = [line.split("#")[0].strip() for line in proc.stdout.splitlines() if line.strip().startswith("python3 ")]
    assert len(commands) == 2 and "pip install 'edgeship[agent]'" in proc.stdout
    serial, stdio = commands
    assert shlex.split(serial)[:4] == ["python3", out.name, "--serial", "/dev/ttyS0"]
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"  # `python3` on the board: an interpreter with numpy and a TFLite runtime
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    session = Session(_ShellStream(stdio, out.parent, env))  # run where the file was copied, as printed
    try:
        info = session.hello()
    finally:
        session.close()
    assert info["agent_version"] and (info.get("runtime") or {}).get("name")
    assert (home / ".edgeship" / "store").is_dir()  # the printed --store, expanded by the board's shell


# --- integer wording -------------------------------------------------------------------------------

def test_one_wording_for_integer_models_and_int8_only_boards() -> None:
    """A model is "fully integer" (manifest integer.fully_integer); a board is "int8-only" (boards.yaml int8_only)."""
    banned = re.compile(r"integer-only|integer only|full-integer|int8 only", re.I)
    files = [ROOT / "README.md", ROOT / "boards.yaml", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "sdk").rglob("*.py")), *sorted((ROOT / "converters").rglob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
             if banned.search(line)]
    assert found == []


# --- 6. shell completion ------------------------------------------------------------------------------

def _complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the last word of `words` (click's bash_complete protocol)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from edgeship.sdk.cli import main; main(prog_name='edgeship')"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env=_env(_EDGESHIP_COMPLETE="bash_complete", COMP_WORDS=words,
                 COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)), **(env or {})))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines()]


def test_completion_offers_boards_and_recipes(tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "edgeship").mkdir(parents=True)
    (config / "edgeship" / "boards.yaml").write_text(
        "schema_version: 1\nboards:\n  my-pi:\n    description: the one on my desk\n    transport: local\n")
    env = {"XDG_CONFIG_HOME": str(config)}
    offered = _complete("edgeship bench b.tflite --board ", env)
    assert offered[0] == "local" and {"emu-pi", "emu-mcu", "my-pi"} <= set(offered), offered
    assert _complete("edgeship push b --board local,em", env) == ["local,emu-mcu", "local,emu-pi", "local,emu-serial"]
    assert _complete("edgeship boards show my", env) == ["my-pi"]
    assert _complete("edgeship emulate up ") == ["emu-pi", "emu-serial"]
    extra = tmp_path / "more.yaml"
    extra.write_text("schema_version: 1\nboards:\n  lab-x:\n    description: lab\n    transport: local\n")
    assert _complete(f"edgeship --boards {extra} check b --board lab") == ["lab-x"]
    assert _complete("edgeship convert m.keras -r ") == list(RECIPES)
    assert _complete("edgeship convert m.keras --recipe int") == ["int8", "int16x8"]


def test_completion_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_EDGESHIP_COMPLETE={shell}_source edgeship" in text
    line = re.search(r'eval "\$\((_EDGESHIP_COMPLETE=bash_source edgeship)\)"', text)
    assert line is not None
    script = subprocess.run([str(EDGESHIP)], capture_output=True, text=True, timeout=60,
                            env=_env(_EDGESHIP_COMPLETE="bash_source"))
    assert script.returncode == 0 and "complete -o nosort -F _edgeship_completion edgeship" in script.stdout, script.stdout
