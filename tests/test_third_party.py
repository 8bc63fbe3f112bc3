"""Any .tflite, not only edgeship's own: files made the way other tools make them -> bundle -> check -> bench/eval.

Every step runs the installed `edgeship` command on real boards (`local`, `emu-mcu`, and a
local board on the tensorflow runtime) with real interpreters; nothing here has a manifest
until `edgeship bundle` writes one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import helpers_models, helpers_third_party
from tests.conftest import invoke_cli, run_cli


@pytest.fixture()
def boards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """local, emu-mcu and local-tf (the agent on tensorflow.lite) with their stores in a temp dir."""
    path = tmp_path / "boards.yaml"
    path.write_text(
        "schema_version: 1\nboards:\n"
        f"  local:\n    description: test local\n    transport: local\n    store: {{dir: {tmp_path / 'local'}}}\n"
        f"  emu-mcu:\n    description: test copy of emu-mcu\n    transport: local\n    runtime: tflite_micro\n"
        f"    store: {{dir: {tmp_path / 'mcu'}, quota_mb: 16}}\n"
        f"    constraints: {{int8_only: true, max_model_bytes: 1000000, arena_bytes: 65536}}\n"
        f"  local-tf:\n    description: the agent here on tensorflow.lite\n    transport: local\n"
        f"    runtime: tensorflow\n    store: {{dir: {tmp_path / 'tf'}}}\n")
    monkeypatch.setenv("EDGESHIP_BOARDS", str(path))
    return tmp_path


def _bundle(tmp_path: Path, name: str, model: bytes) -> tuple[Path, dict[str, Any]]:
    """Write `model` as NAME.tflite (no manifest anywhere), bundle it with the CLI, return the bundle and manifest."""
    src = tmp_path / f"{name}.tflite"
    src.write_bytes(model)
    out = tmp_path / f"{name}-bundle"
    proc = run_cli("bundle", str(src), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["bundle"] == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == doc["manifest"]
    assert (out / "model.tflite").read_bytes() == model
    assert manifest["source"]["kind"] == "tflite" and manifest["source"]["path"] == str(src)
    assert manifest["recipe"]["name"] == "prebuilt"
    return out, manifest


def _bench(bundle: Path, board: str, results: Path) -> dict[str, Any]:
    proc = run_cli("bench", str(bundle), "--board", board, "--runs", "10", "--min-seconds", "0.05", "--json",
                   "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)[0]["result"]["result"]
    assert result["status"] == "ok" and result["latency_ms"]["count"] >= 10
    return result


def test_custom_op_model_bundles_with_the_op_named_and_no_board_runs_it_unregistered(boards: Path) -> None:
    bundle, manifest = _bundle(boards, "erfinv", helpers_models.custom_op_model())
    assert {"name": "Erfinv", "kind": "custom", "version": 1, "count": 1} in manifest["operators"]
    assert manifest["recipe"]["precision"] == "float32"
    ops = json.loads((bundle / "ops" / "ops.json").read_text())
    assert [o["name"] for o in ops["custom"]] == ["Erfinv"]
    assert 'AddCustom("Erfinv", ::tflite::ops::custom::Register_ERFINV()' in (bundle / "ops/registration.cc").read_text()
    shown = run_cli("bundle", str(boards / "erfinv.tflite"), "--out", str(boards / "again"))
    assert shown.returncode == 0 and "custom ops (a board must register them): Erfinv" in shown.stdout
    # `check` on local refuses it before any connection, naming the op; bench refuses it before upload.
    checked = run_cli("check", str(bundle), "--board", "local", "--json")
    assert checked.returncode == 1
    doc = json.loads(checked.stdout)[0]["result"]
    assert doc["custom_ops"] == ["Erfinv"]
    assert [p["code"] for p in doc["problems"]] == ["custom_op_missing"] and "Erfinv" in doc["problems"][0]["message"]
    store = boards / "local"
    before = sorted(store.rglob("*")) if store.exists() else []
    run = run_cli("bench", str(bundle), "--board", "local", "--runs", "5", "--results-dir", str(boards / "r"))
    assert run.returncode != 0 and "Erfinv" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert (sorted(store.rglob("*")) if store.exists() else []) == before  # nothing was uploaded
    mcu = run_cli("check", str(bundle), "--board", "emu-mcu")
    assert mcu.returncode == 1 and "cannot run this model" in mcu.stderr
    assert "this bundle is a prebuilt .tflite: convert the model it was made from" in mcu.stderr


@pytest.mark.convert  # helpers_third_party trains a Keras model
def test_keras_float_model_without_manifest_bundles_checks_benches_and_evaluates_on_local(boards: Path) -> None:
    bundle, manifest = _bundle(boards, "digits_keras", helpers_third_party.keras_float())
    assert manifest["recipe"] == {"name": "prebuilt", "precision": "float32", "io": "float32",
                                  "producer": "MLIR Converted."}
    assert [(t["name"], t["shape"], t["dtype"], t["quantization"]) for t in manifest["inputs"]] == [
        ("pixels", [1, 8, 8, 1], "float32", None)]
    assert [t["name"] for t in manifest["outputs"]] == ["digit"]
    assert {o["name"] for o in manifest["operators"]} >= {"FULLY_CONNECTED", "SOFTMAX"}
    assert (bundle / "ops" / "micro_op_resolver.h").exists()
    check = run_cli("check", str(bundle), "--board", "local")
    assert check.returncode == 0 and "local: compatible" in check.stdout, check.stderr
    push = run_cli("push", str(bundle), "--board", "local", "--json")
    assert push.returncode == 0 and json.loads(push.stdout)[0]["result"]["model_sha256"] == manifest["sha256"], push.stderr

    result = _bench(bundle, "local", boards / "results")
    assert result["inputs"] == "random"
    assert result["generated_inputs"] == [{"name": "pixels", "dtype": "float32", "shape": [1, 8, 8, 1],
                                           "values": "standard normal float32"}]
    text = run_cli("bench", str(bundle), "--board", "local", "--runs", "5", "--min-seconds", "0.05",
                   "--results-dir", str(boards / "results"))
    assert "inputs generated (no --data): pixels 1x8x8x1 standard normal float32" in text.stdout

    data = helpers_third_party.write_test_npz(boards / "test.npz")
    host = run_cli("eval-host", str(bundle), "--data", str(data), "--json")
    assert host.returncode == 0, host.stderr
    ev = run_cli("eval", str(bundle), "--board", "local", "--data", str(data), "--json", "--results-dir",
                 str(boards / "results"))
    assert ev.returncode == 0, ev.stderr
    r = json.loads(ev.stdout)[0]["result"]["result"]
    assert r["output"] == "digit" and r["samples"] == 300
    assert r["accuracy"] == json.loads(host.stdout)["accuracy"] > 0.5  # trained, scored on the right output
    assert r["agreement"]["argmax_agreement"] == 1.0

    no_data = run_cli("eval", str(bundle), "--board", "local")
    assert no_data.returncode == 2 and "--data" in no_data.stderr and len(no_data.stderr.strip().splitlines()) == 1


@pytest.mark.convert  # helpers_third_party trains a Keras model
def test_int8_model_from_the_raw_converter_benches_on_local_and_emu_mcu(boards: Path) -> None:
    bundle, manifest = _bundle(boards, "digits_int8", helpers_third_party.keras_int8())
    assert manifest["recipe"]["precision"] == "int8" and manifest["recipe"]["io"] == "int8"
    assert manifest["integer"]["fully_integer"] is True
    (inp,) = manifest["inputs"]
    assert inp["dtype"] == "int8" and inp["quantization"]["scale"][0] > 0
    for board in ("local", "emu-mcu"):
        assert run_cli("check", str(bundle), "--board", board).returncode == 0
        result = _bench(bundle, board, boards / "results")
        assert result["generated_inputs"] == [{"name": "pixels", "dtype": "int8", "shape": [1, 8, 8, 1],
                                               "values": "uniform int8 -128..127 (quantized)"}]
    assert result["runtime"]["name"] == "tflite_micro" and 0 < result["arena"]["used"] <= 65536
    data = helpers_third_party.write_test_npz(boards / "test.npz")
    ev = run_cli("eval", str(bundle), "--board", "emu-mcu", "--data", str(data), "--json")
    assert ev.returncode == 0, ev.stderr
    doc = json.loads(ev.stdout)[0]["result"]
    assert doc["result"]["accuracy"] == doc["host"]["accuracy"] > 0.5


@pytest.mark.convert  # helpers_third_party trains a Keras model
def test_stateful_lstm_bundles_and_benches(boards: Path) -> None:
    bundle, manifest = _bundle(boards, "lstm", helpers_third_party.stateful_lstm())
    ops = {o["name"] for o in manifest["operators"]}
    assert {"VAR_HANDLE", "ASSIGN_VARIABLE", "READ_VARIABLE"} <= ops  # the LSTM's state, kept between invokes
    # STATEFUL FLAG: convcore's manifest `stateful`/`state` come in through model_facts; once merged, assert
    # manifest["stateful"] is True here.
    # `local` runs ai_edge_litert 2.3 (TFLite 2.21): its level covers the model's min runtime 2.6, so it runs
    # there; the same agent on tensorflow.lite runs it too.
    assert run_cli("check", str(bundle), "--board", "local").returncode == 0
    for board, runtime in (("local", "ai_edge_litert"), ("local-tf", "tensorflow.lite")):
        result = _bench(bundle, board, boards / "results")
        assert result["runtime"]["name"] == runtime
        assert result["generated_inputs"][0]["values"] == "standard normal float32"


def test_token_id_inputs_are_generated_in_range(boards: Path) -> None:
    bundle, manifest = _bundle(boards, "tokens", helpers_third_party.token_ids())
    assert manifest["inputs"][0]["dtype"] == "int32"
    result = _bench(bundle, "local", boards / "results")  # ids over the whole int32 range would fail GATHER
    assert result["generated_inputs"][0]["values"] == "uniform int32 0..63"
    from edgeship.device_agent.worker import GENERATED_INT_HIGH, generated_inputs

    assert GENERATED_INT_HIGH <= helpers_third_party.VOCAB
    details = [{"index": 0, "dtype": np.int32, "shape": [1, 6], "quantization": (0.0, 0)},
               {"index": 1, "dtype": np.int8, "shape": [4096], "quantization": (0.1, 3)},
               {"index": 2, "dtype": np.float32, "shape": [4096], "quantization": (0.0, 0)}]
    values = generated_inputs(details, np.random.default_rng(0))
    assert values[0].dtype == np.int32 and values[0].min() >= 0 and values[0].max() < GENERATED_INT_HIGH
    assert values[1].dtype == np.int8 and values[1].min() == -128 and values[1].max() == 127
    assert values[2].dtype == np.float32 and abs(float(values[2].std()) - 1.0) < 0.1


def test_a_tflite_shipped_inside_an_installed_wheel(boards: Path) -> None:
    import tflite_micro

    shipped = sorted(Path(tflite_micro.__file__).parent.rglob("*.tflite"))
    assert shipped, "tflite-micro ships sine_float.tflite"
    bundle, manifest = _bundle(boards, shipped[0].stem, shipped[0].read_bytes())
    assert manifest["sha256"] == manifest["source"]["sha256"]
    assert run_cli("check", str(bundle), "--board", "local").returncode == 0
    _bench(bundle, "local", boards / "results")


def test_corrupt_truncated_and_misdirected_files_are_one_clear_line(tmp_path: Path) -> None:
    good = helpers_models.float_model()
    cases = {"truncated.tflite": (good[: len(good) // 2], "corrupt or truncated TFLite model"),
             "notes.tflite": (b"this is not a model at all", "not a TFLite flatbuffer")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"{name}.bundle"
        proc = invoke_cli("bundle", str(tmp_path / name), "--out", str(out), "--quiet")
        assert proc.returncode != 0 and message in proc.stderr and str(tmp_path / name) in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    missing = invoke_cli("bundle", str(tmp_path / "nope.tflite"), "--out", str(tmp_path / "b"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    (tmp_path / "ok.tflite").write_bytes(good)
    convert = invoke_cli("convert", str(tmp_path / "ok.tflite"), "--recipe", "int8", "--out", str(tmp_path / "c"))
    assert convert.returncode == 2 and f"edgeship bundle {tmp_path / 'ok.tflite'}`" in convert.stderr
    assert invoke_cli("bundle", str(tmp_path / "ok.tflite"), "--out", str(tmp_path / "b")).returncode == 0
    again = invoke_cli("bundle", str(tmp_path / "ok.tflite"), "--out", str(tmp_path / "b"))
    assert again.returncode != 0 and "--force" in again.stderr
    assert invoke_cli("bundle", str(tmp_path / "ok.tflite"), "--out", str(tmp_path / "b"), "--force").returncode == 0


def test_precision_is_what_the_tensors_show() -> None:
    import tensorflow as tf

    from edgeship.converters.bundle import precision_of
    from edgeship.converters.tflite_model import TFLiteModel

    rng = np.random.default_rng(3)
    w = tf.constant(rng.normal(size=(64, 32)).astype(np.float32))  # big enough for the converter to quantize

    def dense(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(tf.matmul(x, w))

    def dynamic(c: Any) -> None:
        c.optimizations = [tf.lite.Optimize.DEFAULT]

    def float16(c: Any) -> None:
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]

    spec = [tf.TensorSpec((1, 64), tf.float32)]
    made = {"float32": helpers_models._convert(dense, spec), "dynamic": helpers_models._convert(dense, spec, dynamic),
            "float16": helpers_models._convert(dense, spec, float16), "int8": helpers_models.int8_model()}
    assert {name: precision_of(TFLiteModel.from_bytes(model)) for name, model in made.items()} == {
        name: name for name in made}
