"""Every command's --json output, run for real, is the document its model in sdk/schemas.py describes.

The models are what `edgeship schema NAME` exports and docs/cli.md ("JSON output") lists, so a
field added, renamed or leaked (a protocol frame's `op`) fails here. Commands that take boards
print a list of per-board entries for one board as for several.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.schemas import SCHEMAS, validate
from tests.conftest import invoke_cli, one_error_line, run_cli

ENTRY_KEYS = ["board", "ok", "error"]  # first, in this order, in every per-board entry; `result` last
RUN_ENTRY_KEYS = [*ENTRY_KEYS, "gate", "results_file", "results_error", "result"]


def _printed(name: str, proc: Any, code: int = 0) -> Any:
    """The document a command printed, checked against the model of `name`."""
    assert proc.returncode == code, proc.stderr
    doc = json.loads(proc.stdout)
    validate(name, doc)
    return doc


def _keys(doc: Any) -> set[str]:
    """Every key in a JSON document, at any depth."""
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _keys(v)}
    if isinstance(doc, list):
        return {k for v in doc for k in _keys(v)}
    return set()


def _entries(doc: Any, keys: list[str] | None = None) -> list[dict[str, Any]]:
    assert isinstance(doc, list) and doc
    for entry in doc:
        assert list(entry)[:3] == ENTRY_KEYS and list(entry)[-1] == "result"
        if keys is not None:
            assert list(entry) == keys
    return doc


# -- the schemas themselves --------------------------------------------------------------------------

def test_schema_lists_and_exports_every_document() -> None:
    listed = invoke_cli("schema", "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == list(SCHEMAS)
    for name in SCHEMAS:
        proc = invoke_cli("schema", name)
        assert proc.returncode == 0, proc.stderr
        schema = json.loads(proc.stdout)
        assert schema["title"] == f"edgeship {name}" and schema["$schema"].startswith("https://json-schema.org/")
        assert "type" in schema or "$ref" in schema or "anyOf" in schema or "oneOf" in schema
    run = json.loads(invoke_cli("schema", "bench").stdout)
    assert run["type"] == "array"  # one board or several: a list of entries
    entry = run["$defs"][run["items"]["$ref"].split("/")[-1]]
    assert list(entry["properties"]) == RUN_ENTRY_KEYS and entry["additionalProperties"] is False


def test_every_command_with_a_result_has_json_and_a_schema() -> None:
    import click

    from edgeship.sdk.cli import main

    def leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
        out = []
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                out += leaves(command, (*prefix, name))
            else:
                out.append(("-".join((*prefix, name)), command))
        return out

    no_result = {"agent-serve", "schema"}  # the agent itself; the schemas are JSON already
    for name, command in leaves(main):
        has_json = any("--json" in getattr(p, "opts", ()) for p in command.params)
        assert has_json == (name not in no_result), name
        assert has_json == (name in SCHEMAS), name


def test_schema_names_documented_in_cli_md() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    section = doc[doc.index("## JSON output"):]
    section = section[:section.index("\n---")]
    assert [name for name in SCHEMAS if f"`{name}`" not in section] == []


def test_unknown_schema_is_a_usage_error() -> None:
    proc = invoke_cli("schema", "nope")
    assert proc.returncode == 2
    assert "unknown schema 'nope'" in one_error_line(proc.stderr) and "boards-ping" in proc.stderr


def test_a_field_the_model_does_not_name_fails_validation() -> None:
    from pydantic import ValidationError

    entry = {"board": "local", "ok": True, "error": None, "result": {"agent_version": "0.1.0", "op": "hello"}}
    with pytest.raises(ValidationError, match="op"):
        validate("boards-ping", [entry])


# -- commands that need no model ---------------------------------------------------------------------

def test_boards_list_show_add(tmp_path: Path) -> None:
    listed = _printed("boards-list", invoke_cli("boards", "list", "--json"))
    assert listed["local"]["transport"] == "local"
    shown = _printed("boards-show", invoke_cli("boards", "show", "local", "--json"))
    assert shown["name"] == "local"
    added = _printed("boards-add", invoke_cli("boards", "add", "pi", "ssh://pi@raspberrypi.local", "--json",
                                              env={"XDG_CONFIG_HOME": str(tmp_path)}))
    assert added == {"board": "pi", "path": str(tmp_path / "edgeship" / "boards.yaml"), "comments_kept": True}


def _here(tmp_path: Path) -> dict[str, str]:
    """A boards file (EDGESHIP_BOARDS) with `here`: the local agent, its store in the test's directory."""
    boards = tmp_path / "boards.yaml"
    boards.write_text("schema_version: 1\nboards:\n  here:\n    description: the local agent, a store of its own\n"
                      f"    transport: local\n    store: {{dir: {tmp_path / 'store'}}}\n")
    return {"EDGESHIP_BOARDS": str(boards)}


def test_ping_one_board_and_several(tmp_path: Path) -> None:
    env = _here(tmp_path)
    one = _entries(_printed("boards-ping", invoke_cli("boards", "ping", "here", "--json", env=env)))
    assert len(one) == 1 and one[0]["ok"] and one[0]["error"] is None
    assert one[0]["result"]["agent_version"] and one[0]["result"]["rtt_ms"] > 0
    assert "op" not in _keys(one)  # the hello frame's op is the protocol's
    several = _entries(_printed("boards-ping", invoke_cli("boards", "ping", "here", "ssh://nobody@127.0.0.1:1",
                                                          "--json", env=env), code=1))
    assert [e["board"] for e in several] == ["here", "ssh://nobody@127.0.0.1:1"]
    assert several[0]["ok"] and not several[1]["ok"] and several[1]["result"] is None and several[1]["error"]
    assert list(several[0]) == list(one[0])  # the same entry for one board and for several


def test_agent_build(tmp_path: Path) -> None:
    out = tmp_path / "agent.pyz"
    doc = _printed("agent-build", invoke_cli("agent", "build", "-o", str(out), "--json"))
    assert doc["path"] == str(out) and doc["size"] == out.stat().st_size
    import hashlib

    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and "agent.pyz" in doc["command"]


def test_emulate_up_status_down(tmp_path: Path) -> None:
    env = {"EDGESHIP_EMULATE_DIR": str(tmp_path / "emulate")}  # its state directory is read at import: a subprocess
    try:
        up = _entries(_printed("emulate-up", run_cli("emulate", "up", "emu-serial", "--json", env=env)))
        assert up[0]["board"] == "emu-serial" and up[0]["ok"] and up[0]["result"]["pid"] > 0
        status = _printed("emulate-status", run_cli("emulate", "status", "--json", env=env))
        assert status["emu-serial"]["pid"] == up[0]["result"]["pid"]
    finally:
        down = _entries(_printed("emulate-down", run_cli("emulate", "down", "emu-serial", "--json", env=env)))
    assert down[0]["result"] == {"was_running": True}


# -- the digits model on the local board ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(convert_digits: Any) -> Path:
    return Path(convert_digits("int8").bundle)


def test_host_side_commands(bundle: Path, digits: Path, tmp_path: Path) -> None:
    made = _printed("bundle", invoke_cli("bundle", str(bundle / "model.tflite"), "-o", str(tmp_path / "b"), "--json"))
    assert made["manifest"]["sha256"] == json.loads((bundle / "manifest.json").read_text())["sha256"]
    assert _printed("inspect", invoke_cli("inspect", str(bundle / "model.tflite"), "--json"))["kind"] == "tflite"
    whole = _printed("inspect", invoke_cli("inspect", str(bundle), "--json"))  # a bundle directory
    assert whole["kind"] == "bundle" and whole["model"]["sha256"] == whole["manifest"]["sha256"]
    assert _printed("ops", invoke_cli("ops", str(bundle), "--json"))["builtin"]
    host = _printed("eval-host", invoke_cli("eval-host", str(bundle), "--data", str(digits / "test.npz"), "--json"))
    assert host["samples"] == 360


def test_check_push_one_board(bundle: Path, tmp_path: Path) -> None:
    env = _here(tmp_path)
    (ok,) = _entries(_printed("check", invoke_cli("check", str(bundle), "--board", "here", "--json", env=env)))
    assert ok["ok"] and ok["result"]["compatible"]
    (no,) = _entries(_printed("check", invoke_cli("check", str(bundle), "--board", "here", "--delegate", "nope",
                                                  "--json", env=env), code=1))
    assert not no["ok"] and "here cannot run this model" in no["error"]
    assert [p["code"] for p in no["result"]["problems"]] == ["delegate_unknown"]
    (pushed,) = _entries(_printed("push", invoke_cli("push", str(bundle), "--board", "here", "--json", env=env)))
    assert pushed["ok"] and pushed["result"]["upload"]["skipped"] is False  # its own store: sent
    assert "op" not in _keys(pushed)


def test_bench_eval_one_board_and_several_and_report(bundle: Path, digits: Path, tmp_path: Path) -> None:
    env = _here(tmp_path)
    results = tmp_path / "results"
    fast = ("--runs", "5", "--warmup", "1", "--min-seconds", "0", "--results-dir", str(results), "--json")
    bench = _entries(_printed("bench", invoke_cli("bench", str(bundle), "--board", "here", *fast, env=env)),
                     RUN_ENTRY_KEYS)
    assert len(bench) == 1 and bench[0]["ok"] and bench[0]["result"]["kind"] == "bench"
    assert Path(bench[0]["results_file"]).is_file()
    one = _entries(_printed("eval", invoke_cli("eval", str(bundle), "--board", "here", "--data",
                                               str(digits / "test.npz"), *fast, env=env)), RUN_ENTRY_KEYS)
    several = _entries(_printed("eval", invoke_cli("eval", str(bundle), "--board", "here,emu-mcu", "--data",
                                                   str(digits / "test.npz"), *fast, env=env)), RUN_ENTRY_KEYS)
    assert [e["board"] for e in several] == ["here", "emu-mcu"] and all(e["ok"] for e in several)
    assert list(one[0]["result"]) == list(several[0]["result"])  # one board's entry is a fleet's entry
    assert one[0]["result"]["result"]["accuracy"] == several[0]["result"]["result"]["accuracy"]
    assert "op" not in _keys([bench, one, several])  # the result frame's op stays in the protocol
    for entry in (*bench, *one, *several):  # what was printed is the document written
        assert json.loads(Path(entry["results_file"]).read_text()) == entry["result"]
        validate("result", entry["result"])
    (missed,) = _entries(_printed("eval", invoke_cli("eval", str(bundle), "--board", "here", "--data",
                                                     str(digits / "test.npz"), *fast[:-3], "--results-dir",
                                                     str(tmp_path / "gated"), "--min-accuracy", "99.99", "--json",
                                                     env=env), code=3))
    assert not missed["ok"] and missed["error"] is None and "--min-accuracy 99.99" in missed["gate"]  # worded as the CLI's
    html = tmp_path / "report.html"
    rep = _printed("report", invoke_cli("report", str(results), "--html", str(html), "--json", env=env))
    assert len(rep["results"]) == 4 and rep["html"] == str(html) and html.stat().st_size > 0
    assert {r["board"] for r in rep["results"]} == {"here", "emu-mcu"}


def test_a_result_keeps_no_frame_op() -> None:
    from edgeship.sdk.results import RunResult

    def made(result: dict[str, Any]) -> dict[str, Any]:
        return RunResult(kind="bench", board="b", model_sha256="ab" * 32, result=result).to_json()["result"]

    assert made({"op": "result", "status": "ok"}) == {"status": "ok"}  # the reply frame's op
    # An agent from before missing_op named the model's missing op in `op`: kept, under its own name.
    assert made({"op": "CONV_2D", "status": "unsupported_op"}) == {"status": "unsupported_op", "missing_op": "CONV_2D"}
