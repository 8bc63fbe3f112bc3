"""RunResult (sdk/results.py): one frozen, versioned result document, checked when it is read back."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.errors import UsageError
from edgeship.sdk.report import load_results
from edgeship.sdk.results import RESULT_SCHEMA_VERSION, RunResult
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, convert_digits: Any, digits: Path) -> Path:
    """A result document as `edgeship eval --board local` writes it."""
    out = tmp_path_factory.mktemp("results")
    proc = run_cli("eval", str(convert_digits("int8").bundle), "--board", "local", "--data", str(digits / "test.npz"),
                   "-q", "--results-dir", str(out / "docs"), env={"EDGESHIP_LOCAL_STORE": str(out / "store")})
    assert proc.returncode == 0, proc.stderr
    (path,) = sorted((out / "docs").glob("eval-local-*.json"))
    return path


def test_a_document_eval_wrote_loads_back_typed_and_unchanged(written: Path) -> None:
    doc = json.loads(written.read_text())
    result = RunResult.from_json(doc, written)
    assert result.to_json() == doc and list(result.to_json()) == list(doc)  # field for field, in order
    assert result.kind == "eval" and result.board == "local" and result.ok
    assert result.schema_version == doc["schema_version"] == RESULT_SCHEMA_VERSION
    assert result.accuracy == doc["result"]["accuracy"] and 0.9 < result.accuracy <= 1.0
    assert result.argmax_agreement == doc["result"]["agreement"]["argmax_agreement"]
    assert result.host_accuracy == doc["host"]["accuracy"]
    assert result.latency("p90") == doc["result"]["latency_ms"]["p90"]
    with pytest.raises(AttributeError):  # frozen
        result.board = "other"  # type: ignore[misc]
    (row,) = load_results([written]).rows
    assert row.run == result and row.doc == doc


def test_round_trip_of_each_kind() -> None:
    bench = RunResult(kind="bench", board="b", model_sha256="ab" * 32, agent={"version": "1"}, bundle="x",
                      options={"runs": 7}, upload={"model": {"sha256": "ab" * 32}, "data": None},
                      result={"status": "ok", "kind": "bench", "first_inference_ms": 1.0, "warmup": {"count": 5},
                              "latency_ms": {k: (3 if k == "count" else 0.5) for k in
                                             ("count", "mean", "std", "min", "p50", "p90", "p95", "p99", "max")}})
    doc = bench.to_json()
    assert "dataset_sha256" in doc and doc["dataset_sha256"] is None and "host" not in doc and "model" not in doc
    assert RunResult.from_json(json.loads(json.dumps(doc))) == bench
    debug = RunResult(kind="debug-quant", board="host", model="m.keras", model_sha256="cd" * 32, recipe="int8",
                      options={"batch": 1}, result={"status": "ok", "layers": [{"node": "a", "rmse_over_scale": 0.3}]})
    doc = debug.to_json()
    assert not {"agent", "bundle", "dataset_sha256", "upload"} & set(doc) and doc["model"] == "m.keras"
    assert RunResult.from_json(doc) == debug


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("board"), "field 'board' is missing"),
    (lambda d: d.update(model_size="big"), "field 'model_size' is 'big', not an integer"),
    (lambda d: d.update(schema_version=2), "field 'schema_version' is 2; this edgeship reads version 1"),
    (lambda d: d.pop("schema_version"), "field 'schema_version' is missing"),
    (lambda d: d["result"]["latency_ms"].update(p90=-1), "field 'result.latency_ms.p90' is -1"),
    (lambda d: d["result"].pop("status"), "field 'result.status' is missing"),
    (lambda d: d.update(kind="benchmark"), "field 'kind' is 'benchmark', not one of bench, eval, debug-quant"),
    (lambda d: d.update(colour="red"), "field 'colour' is not in the schema"),
])
def test_from_json_names_the_file_and_the_bad_field(written: Path, tmp_path: Path, change: Any, words: str) -> None:
    doc = copy.deepcopy(json.loads(written.read_text()))
    change(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(UsageError) as err:
        RunResult.from_json(doc, bad)
    assert str(err.value).startswith(f"{bad}: not an edgeship result document") and words in str(err.value), err.value
    proc = run_cli("report", str(bad))  # the CLI: one line, exit 2
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_check_gates_names_its_parameters_and_the_cli_its_flags(written: Path) -> None:
    from edgeship.sdk.device import check_gates
    from edgeship.sdk.errors import GateError, RunError

    result = RunResult.from_json(json.loads(written.read_text()), written)
    check_gates(result, min_accuracy=50, min_agreement=50, max_p90_ms=1e6)  # all met: no error
    with pytest.raises(GateError) as err:
        check_gates(result, min_accuracy=100.1, min_agreement=100.1)
    text = str(err.value)
    assert text.startswith("local missed its gates: accuracy ") and "< min_accuracy 100.1%" in text
    assert "argmax agreement" in text and "< min_agreement 100.1%" in text and "--" not in text
    failed = RunResult.from_json({**result.to_json(), "result": {"status": "crashed", "message": "boom"}})
    with pytest.raises(RunError, match="the run failed on local: crashed: boom") as run_err:
        check_gates(failed, min_accuracy=1)
    assert run_err.value.status == "crashed"
