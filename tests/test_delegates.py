"""External delegates come only from the board's allow-list: a real delegate library, a real agent, real LiteRT.

The library is tests/native/edgeship_test_delegate.c, built by `make` with the system C compiler.
It claims the nodes of one byte-copy op (option claim=...), so a run shows the nodes it took and
the ops left on the CPU, and loading it leaves a mark (EDGESHIP_TEST_DELEGATE_MARKER) so a test
sees whether anything ever dlopen()ed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.client import Session
from edgeship.sdk.errors import AgentError
from tests.conftest import ROOT, run_cli
from tests.test_agent import open_agent

LIBRARY = ROOT / "build/test-delegate/libedgeship_test_delegate.so"
QUICK = {"runs": 3, "warmup": 1, "min_seconds": 0}


@pytest.fixture(scope="module")
def library() -> Path:
    """The test delegate, built by the Makefile's own rule (what `make test` runs first)."""
    subprocess.run(["make", "-s", str(LIBRARY.relative_to(ROOT))], cwd=ROOT, check=True, timeout=60)
    return LIBRARY


@pytest.fixture(scope="module")
def model(convert_digits: Any) -> bytes:
    return convert_digits("int8").model_path.read_bytes()


def _agent(tmp_path: Path, *args: str, marker: Path | None = None, **env: str) -> Session:
    extra = dict(env)
    if marker is not None:
        extra["EDGESHIP_TEST_DELEGATE_MARKER"] = str(marker)
    return open_agent(tmp_path / "store", *args, env=extra)


def _no_board_paths(text: str, *paths: Path) -> None:
    for p in paths:
        assert str(p) not in text, text
    assert "/tmp" not in text and str(ROOT) not in text, text


def test_an_allowed_delegate_loads_takes_the_claimed_nodes_and_keeps_results_exact(
        tmp_path: Path, library: Path, model: bytes, digits: Path) -> None:
    marker = tmp_path / "marker"
    agent = _agent(tmp_path, "--allow-delegate", f"test={library}", "--allow-delegate", "gone=/nonexistent/libgone.so",
                   marker=marker)
    try:
        hello = agent.info
        assert hello["delegates"] == ["xnnpack", "test"]
        external = {d["name"]: d for d in hello["external_delegates"]}
        assert external["test"] == {"name": "test", "loaded": True}
        assert external["gone"]["loaded"] is False and "<gone>" in external["gone"]["error"]
        _no_board_paths(json.dumps(hello["external_delegates"]), library)
        assert marker.read_text() == "loaded\n"  # the hello probe loaded it once, in its own process

        up = agent.upload(model)
        data = agent.upload((digits / "test.npz").read_bytes())
        cpu = agent.run("eval", up.sha256, data.sha256, {"xnnpack": False})
        run = agent.run("eval", up.sha256, data.sha256, {"xnnpack": False, "delegates": [
            {"name": "test", "options": {"claim": "RESHAPE"}, "required": True}]})
        assert run["status"] == "ok", run
        d = run["delegate"]
        assert d["applied"] == ["test"] and d["external"] == [
            {"name": "test", "options": {"claim": "RESHAPE"}, "loaded": True, "applied": True}]
        assert d["delegate_kernels"] == 1 and d["nodes"] == 7 and d["nodes_taken"] == 1
        assert d["taken_ops"] == {"RESHAPE": 1}
        assert d["cpu_ops"] == ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "SOFTMAX"]
        assert run["accuracy"] == cpu["accuracy"] and run["confusion"] == cpu["confusion"]

        # With XNNPACK on as well, the partition report adds its partitions (walked back from their outputs).
        both = agent.run("bench", up.sha256, None, {**QUICK, "delegates": [{"name": "test", "options": {"claim": "RESHAPE"}}]})
        b = both["delegate"]
        assert b["applied"] == ["test", "xnnpack"] and b["delegate_kernels"] >= 2 and b["taken_ops"]["RESHAPE"] == 1
        assert sum(b["taken_ops"].values()) == b["nodes_taken"] > 1 and "CONV_2D" in b["taken_ops"]
        assert "CONV_2D" not in b["cpu_ops"] and "RESHAPE" not in b["cpu_ops"]

        # The options reach the delegate: another op to claim takes nothing here, a bad one fails its creation.
        squeeze = agent.run("bench", up.sha256, None, {**QUICK, "xnnpack": False, "delegates": [
            {"name": "test", "options": {"claim": "SQUEEZE", "max_nodes": "1"}}]})
        assert squeeze["delegate"]["nodes_taken"] == 0 and "RESHAPE" in squeeze["delegate"]["cpu_ops"]
        bad = agent.run("bench", up.sha256, None, {**QUICK, "delegates": [{"name": "test", "options": {"claim": "CONV"}}]})
        assert bad["status"] == "ok" and bad["delegate"]["external"][0]["loaded"] is False
        assert any("option claim=CONV" in n and "running without it" in n for n in bad["delegate"]["notes"])
        refuses = agent.run("bench", up.sha256, None, {**QUICK, "xnnpack": False, "delegates": [
            {"name": "test", "options": {"fail": "prepare"}}]})
        assert refuses["status"] == "ok" and refuses["delegate"]["nodes_taken"] == 0
        assert any("failed to apply" in n and "fail=prepare" in n for n in refuses["delegate"]["notes"])
        required = agent.run("bench", up.sha256, None, {**QUICK, "delegates": [
            {"name": "test", "options": {"fail": "create"}, "required": True}]})
        assert required["status"] == "delegate_failed" and "delegate test failed to load" in required["message"]
        for r in (bad, refuses, required):
            _no_board_paths(json.dumps(r), library)
    finally:
        agent.close()


ALLOWS = "this board allows: gone"


def _refusals(library: Path, blob_path: str) -> list[tuple[str, Any, str]]:
    """Run `delegates` values that must be refused (what, value, what the message says)."""
    return [
        ("library path", [{"library": str(library)}], ALLOWS),
        ("library path with an allowed name", [{"name": "gone", "library": str(library)}], ALLOWS),
        ("path as the name", [{"name": str(library)}], ALLOWS),
        ("uploaded blob by path", [{"library": blob_path}], ALLOWS),
        ("uploaded blob as the name", [{"name": blob_path}], ALLOWS),
        ("relative blob path", [{"name": "blobs/" + blob_path.rsplit("/", 1)[-1]}], ALLOWS),
        ("unknown name", [{"name": "edgetpu"}], ALLOWS),
        ("over-long name", [{"name": "x" * 5000}], ALLOWS),
        ("NUL in the name", [{"name": "gone\0"}], ALLOWS),
        ("a number as the name", [{"name": 7}], ALLOWS),
        ("17 options", [{"name": "gone", "options": {f"k{i}": "v" for i in range(17)}}], "at most 16 options"),
        ("an option value over 256 characters", [{"name": "gone", "options": {"k": "v" * 257}}], "at most 256"),
        ("a number as an option value", [{"name": "gone", "options": {"k": 1}}], "printable string"),
        ("a key with a slash", [{"name": "gone", "options": {"../k": "v"}}], "option key"),
        ("a control character in a value", [{"name": "gone", "options": {"k": "a\nb"}}], "printable string"),
        ("options a list", [{"name": "gone", "options": ["k=v"]}], "options must be an object"),
        ("required a string", [{"name": "gone", "required": "yes"}], "required must be true or false"),
        ("an unknown key", [{"name": "gone", "preload": "x"}], "unknown key"),
        ("named twice", [{"name": "gone"}, {"name": "gone"}], "named twice"),
        ("five delegates", [{"name": "gone"}] * 5, "at most 4 delegates"),
        ("delegates a string", str(library), "must be a list"),
        ("delegates an object", {"name": "gone"}, "must be a list"),
        ("an entry a string", [str(library)], "each entry is an object"),
    ]


def test_paths_blobs_unknown_names_and_oversize_options_are_refused_and_nothing_is_loaded(
        tmp_path: Path, library: Path, model: bytes) -> None:
    marker = tmp_path / "marker"
    agent = _agent(tmp_path, "--allow-delegate", "gone=/nonexistent/libgone.so", marker=marker)
    try:
        up = agent.upload(model)
        blob = agent.upload(library.read_bytes())  # any bytes are a valid blob: here, a shared object
        blob_path = str(tmp_path / "store" / "blobs" / blob.sha256)
        assert Path(blob_path).exists()
        cases = _refusals(library, blob_path)
        for what, value, says in cases:
            with pytest.raises(AgentError) as err:
                agent.run("bench", up.sha256, None, {**QUICK, "delegates": value})
            assert err.value.code == "bad_request", what
            text = str(err.value)
            assert says in text, (what, text)
            _no_board_paths(text, library, Path(blob_path))
            assert len(text) < 400, (what, len(text))
        assert not marker.exists()  # nothing ever dlopen()ed the library, from its path or from the store
        assert agent.hello()["agent_version"]
        print(f"delegate refusals: {len(cases)} requests, {len(cases)} bad_request, 0 loads, 0 deaths")
    finally:
        agent.close()


def _start(tmp_path: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The agent's start-up with these flags (stdin closed: it serves nothing and exits)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(home or tmp_path))
    return subprocess.run([sys.executable, "-m", "edgeship.device_agent", "--stdio", "--store", str(tmp_path / "store"), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, env=env)


def test_a_library_in_the_store_can_never_be_allowed(tmp_path: Path, library: Path) -> None:
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    planted = store / "blobs" / ("0" * 64)
    planted.write_bytes(library.read_bytes())
    (tmp_path / "elsewhere").symlink_to(planted)  # a path outside the store that resolves into it
    (tmp_path / "linked-store").symlink_to(store)
    for flag in (f"x={planted}", f"x={tmp_path / 'elsewhere'}", f"x={tmp_path / 'linked-store' / 'blobs' / planted.name}",
                 "x=relative/lib.so", "x=", "bad/name=libfoo.so", f"a={library}"):
        args = ["--allow-delegate", flag] + (["--allow-delegate", f"a={library}"] if flag.startswith("a=") else [])
        done = _start(tmp_path, *args)
        assert done.returncode == 2, (flag, done.stderr)
        assert done.stderr.startswith("edgeship-agent: error: ") and "Traceback" not in done.stderr, done.stderr
    config = tmp_path / "delegates.json"
    config.write_text(json.dumps({"delegates": {"x": str(tmp_path / "elsewhere")}}))
    done = _start(tmp_path, "--delegate-config", str(config))
    assert done.returncode == 2 and "inside the agent's store" in done.stderr


def test_a_config_file_allows_delegates_and_the_default_one_is_read(tmp_path: Path, library: Path) -> None:
    home = tmp_path / "home"
    (home / ".edgeship").mkdir(parents=True)
    default = home / ".edgeship" / "agent-delegates.json"
    default.write_text(json.dumps({"delegates": {"fromhome": str(library)}}))
    agent = _agent(tmp_path, HOME=str(home))
    try:
        assert agent.info["delegates"] == ["xnnpack", "fromhome"]
    finally:
        agent.close()
    default.chmod(0o666)
    assert _start(tmp_path, home=home).returncode == 2  # anyone could edit that allow-list: refused
    default.chmod(0o644)
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"delegates": {"fromhome": str(library)}, "extra": 1}))
    done = _start(tmp_path, "--delegate-config", str(given), home=home)
    assert done.returncode == 2 and "expected" in done.stderr


def test_a_delegate_that_crashes_its_loader_costs_a_child_not_the_agent(
        tmp_path: Path, library: Path, model: bytes) -> None:
    agent = _agent(tmp_path, "--allow-delegate", f"test={library}", EDGESHIP_TEST_DELEGATE_ABORT="1")
    try:
        (probe,) = agent.info["external_delegates"]
        assert probe["loaded"] is False and "SIGABRT" in probe["error"], probe
        assert agent.info["delegates"] == ["xnnpack"]
        up = agent.upload(model)
        run = agent.run("bench", up.sha256, None, {**QUICK, "delegates": [{"name": "test"}]})
        assert run["status"] == "crashed", run
        assert agent.hello()["agent_version"]
    finally:
        agent.close()


def test_the_cli_names_a_local_boards_delegate_and_refuses_paths_and_unknown_names(
        tmp_path: Path, library: Path, convert_digits: Any, digits: Path) -> None:
    bundle = convert_digits("int8").bundle
    boards = tmp_path / "boards.yaml"
    boards.write_text(f"""schema_version: 1
boards:
  dlg:
    description: local agent allowing the test delegate
    transport: local
    store: {{dir: {tmp_path / 'store'}, quota_mb: 64}}
    delegates:
      - {{name: test, library: {library}}}
      - {{name: gone, library: /nonexistent/libgone.so}}
""")
    env = {"EDGESHIP_BOARDS": str(boards)}
    done = run_cli("eval", str(bundle), "--board", "dlg", "--data", str(digits / "test.npz"), "--no-xnnpack",
                   "--delegate", "test:claim=RESHAPE", "--require-delegate", "--min-agreement", "100", "--json",
                   "--results-dir", str(tmp_path / "results"), env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)[0]["result"]["result"]
    assert result["delegate"]["applied"] == ["test"] and result["delegate"]["taken_ops"] == {"RESHAPE": 1}
    assert result["delegate"]["external"][0]["options"] == {"claim": "RESHAPE"}
    by_path = run_cli("bench", str(bundle), "--board", "dlg", "--delegate", str(library), env=env)
    assert by_path.returncode == 2 and "not a library path" in by_path.stderr and "Traceback" not in by_path.stderr
    gone = run_cli("bench", str(bundle), "--board", "dlg", "--delegate", "gone", "--require-delegate", env=env)
    assert gone.returncode == 1 and "delegate gone does not load on the board" in gone.stderr, gone.stderr
    assert "/nonexistent" not in gone.stderr and "Traceback" not in gone.stderr
    unknown = run_cli("check", str(bundle), "--board", "dlg", "--delegate", "edgetpu", env=env)
    assert unknown.returncode != 0 and "delegate edgetpu is not one the board offers" in unknown.stderr
    assert "test" in unknown.stderr and "Traceback" not in unknown.stderr
