"""Compatibility checked against what the runtime really runs: TFLite levels, op versions, custom ops.

Real conversions, real runtimes: the digits model converted with --recipe dynamic needs
TFLite 2.17 (FULLY_CONNECTED v12), which LiteRT 2.3 (TF 2.21 kernels) runs and
tflite-runtime 2.14 does not; the Erfinv model has a CUSTOM op no stock runtime registers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.tools import flatbuffer_utils as fu

from edgeship.converters.manifest import MODEL_FILE, Manifest, model_facts
from edgeship.converters.recipe import Recipe
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.device_agent import runtime
from edgeship.device_agent.agent import Agent, AgentConfig
from edgeship.device_agent.protocol import Message
from edgeship.sdk.boards import Board, open_session
from tests import helpers_models as hm
from tests.conftest import run_cli

UNREACHABLE = "    transport: ssh\n    ssh: {host: 127.0.0.1, port: 9}\n"  # nothing listens: a connection would fail


@pytest.fixture(scope="module")
def dynamic_bundle(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeship.converters.convert import convert

    out = tmp_path_factory.mktemp("dyn") / "digits-dynamic"
    convert(digits / "digits.keras", Recipe.from_name("dynamic"), out)
    return out


def _rebundle(bundle: Path, model: bytes, out: Path) -> Path:
    """`bundle` with its model replaced by `model`, the manifest's model facts read from the new model."""
    out.mkdir(parents=True)
    facts = model_facts(TFLiteModel.from_bytes(model), model)
    Manifest.load(bundle).model_copy(update=facts).write(out)
    (out / MODEL_FILE).write_bytes(model)
    return out


def _boards(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text("schema_version: 1\nboards:\n" + text)
    return path


def _local(name: str, tmp_path: Path, extra: str = "") -> str:
    return f"  {name}:\n    description: {name}\n    transport: local\n    store: {{dir: {tmp_path / name}}}\n{extra}"


# -- TFLite levels ------------------------------------------------------------------------

def test_litert_level_is_the_tensorflow_release_whose_schema_it_ships() -> None:
    import ai_edge_litert.schema_py_generated as litert_schema

    from edgeship.converters._schema_enums import BUILTIN_OPERATORS  # generated from TensorFlow 2.21's schema

    ops = {v: k for k, v in vars(litert_schema.BuiltinOperator).items() if k.isupper()}
    assert ops == BUILTIN_OPERATORS  # same op set as TF 2.21: the evidence for LITERT_TFLITE_LEVEL
    rt = runtime.load_runtime("ai_edge_litert")
    assert rt.tflite_level == "2.21" and tf.__version__.startswith(rt.tflite_level + ".")
    assert rt.version.startswith("2.3") and rt.tflite_level != rt.version
    assert runtime.tflite_level("tflite_runtime", "2.14.0") == "2.14.0"
    assert runtime.tflite_level("tensorflow.lite", "2.21.0") == "2.21.0"
    assert runtime.tflite_level("ai_edge_litert", "9.9.0") is None  # unknown: probed by loading, not guessed
    assert runtime.tflite_level("tflite_micro", "0.dev1") is None


def test_hello_reports_the_level_and_custom_ops_that_really_resolve(tmp_path: Path) -> None:
    session = open_session(Board("local", "local", store=tmp_path / "store"))
    try:
        rt = session.info["runtime"]
    finally:
        session.close()
    assert rt["name"] == "ai_edge_litert" and rt["tflite_level"] == "2.21"
    assert rt["custom_ops"] == list(runtime.TFLITE_CUSTOM_OPS)
    base = hm.custom_op_model()  # custom "Erfinv": unresolved
    for name in [*rt["custom_ops"], "Erfinv"]:
        model = fu.convert_bytearray_to_object(bytearray(base))
        for code in model.operatorCodes:
            if code.customCode:
                code.customCode = name.encode()
        try:
            runtime.load_runtime("ai_edge_litert").interpreter(bytes(fu.convert_object_to_bytearray(model)))
            error = ""
        except RuntimeError as exc:  # a registered op fails to prepare on these operands; an absent one is unresolved
            error = str(exc)
        assert ("unresolved custom op" in error) == (name == "Erfinv"), (name, error)


def test_local_runs_a_dynamic_range_model_needing_tflite_2_17(dynamic_bundle: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(dynamic_bundle)
    assert manifest.min_runtime_version == "2.17.0"
    assert any(o.name == "FULLY_CONNECTED" and o.version >= 12 for o in manifest.operators)
    boards = _boards(tmp_path, _local("here", tmp_path))
    check = run_cli("--boards", str(boards), "check", str(dynamic_bundle), "--board", "here")
    assert check.returncode == 0, check.stderr
    bench = run_cli("--boards", str(boards), "bench", str(dynamic_bundle), "--board", "here", "--runs", "5",
                    "--warmup", "1", "--min-seconds", "0", "--json")
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout)[0]["result"]["result"]
    assert result["status"] == "ok" and result["runtime"]["name"] == "ai_edge_litert"


def test_an_old_runtime_is_refused_before_upload_with_both_versions(dynamic_bundle: Path, tmp_path: Path) -> None:
    boards = _boards(tmp_path, "  pi14:\n    description: a Pi with tflite-runtime 2.14\n" + UNREACHABLE
                     + "    runtime: tflite_runtime\n    runtime_version: \"2.14.0\"\n")
    check = run_cli("--boards", str(boards), "check", str(dynamic_bundle), "--board", "pi14", "--json")
    assert check.returncode == 1
    problems = json.loads(check.stdout)[0]["result"]["problems"]
    assert [p["code"] for p in problems] == ["runtime_too_old"]
    assert "needs TFLite 2.17.0" in problems[0]["message"] and "tflite_runtime 2.14.0" in problems[0]["message"]
    push = run_cli("--boards", str(boards), "push", str(dynamic_bundle), "--board", "pi14")
    assert push.returncode == 1 and "pi14 cannot run this model" in push.stderr and "2.14.0" in push.stderr
    shipped = run_cli("check", str(dynamic_bundle), "--board", "emu-pi")  # the shipped emulated Pi: tflite-runtime 2.14
    assert shipped.returncode == 1 and "needs TFLite 2.17.0" in shipped.stderr and "2.14.0" in shipped.stderr


def test_the_worker_reports_a_missing_op_version_as_such(tmp_path: Path) -> None:
    """A model from a TensorFlow newer than the runtime (FULLY_CONNECTED v99): status op_version, not a crash."""
    model = fu.convert_bytearray_to_object(bytearray(hm.dense_relu_model()))
    for code in model.operatorCodes:
        code.version = 99
    data = bytes(fu.convert_object_to_bytearray(model))
    agent = Agent(AgentConfig(store_dir=tmp_path / "store"))
    sha = hashlib.sha256(data).hexdigest()
    agent.handle(Message({"op": "put_begin", "sha256": sha, "size": len(data), "wire_size": len(data)}), print)
    agent.handle(Message({"op": "put", "sha256": sha, "offset": 0}, data), print)
    agent.handle(Message({"op": "put_end", "sha256": sha}), print)
    result = agent.handle(Message({"op": "run", "kind": "bench", "model": sha, "options": {"runs": 1}}), print).header
    assert result["status"] == "op_version", result
    assert result["op"] == "result" and result["missing_op"] == "FULLY_CONNECTED" and result["version"] == 99
    assert "ai_edge_litert" in result["message"] and "TFLite 2.21" in result["message"]


# -- custom ops ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def erfinv_bundle(dynamic_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _rebundle(dynamic_bundle, hm.custom_op_model(), tmp_path_factory.mktemp("erfinv") / "bundle")


def test_an_undeclared_custom_op_is_refused_before_upload(erfinv_bundle: Path, tmp_path: Path) -> None:
    boards = _boards(tmp_path, _local("here", tmp_path)
                     + "  mine:\n    description: a board whose runtime build registers Erfinv\n" + UNREACHABLE
                     + "    custom_ops: [Erfinv]\n")
    check = run_cli("--boards", str(boards), "check", str(erfinv_bundle), "--board", "here", "--json")
    assert check.returncode == 1
    doc = json.loads(check.stdout)[0]["result"]
    assert doc["custom_ops"] == ["Erfinv"]
    assert [p["code"] for p in doc["problems"]] == ["custom_op_missing"] and "Erfinv" in doc["problems"][0]["message"]
    bench = run_cli("--boards", str(boards), "bench", str(erfinv_bundle), "--board", "here", "--runs", "1")
    assert bench.returncode == 1 and "custom op(s) Erfinv" in bench.stderr
    assert not (tmp_path / "here").exists() or not any((tmp_path / "here").rglob(Manifest.load(erfinv_bundle).sha256))
    declared = run_cli("--boards", str(boards), "check", str(erfinv_bundle), "--board", "mine")
    assert declared.returncode == 0 and "custom ops: Erfinv" in declared.stdout, declared.stderr
    micro = run_cli("check", str(erfinv_bundle), "--board", "emu-mcu", "--json")
    codes = [p["code"] for p in json.loads(micro.stdout)[0]["result"]["problems"]]
    assert micro.returncode == 1 and "custom_op_missing" in codes


def test_an_op_tflite_micro_lacks_is_named_by_check(dynamic_bundle: Path, tmp_path: Path) -> None:
    def atan2(y: Any, x: Any) -> Any:
        return tf.math.atan2(y, x) * 2.0

    spec = tf.TensorSpec((1, 4), tf.float32)
    model = hm._convert(atan2, [spec, spec])
    assert "ATAN2" in hm.interpreter_op_names(model)
    bundle = _rebundle(dynamic_bundle, model, tmp_path / "atan2")
    boards = _boards(tmp_path, "  mcu-float:\n    description: TFLM without the int8 rule\n    transport: local\n"
                     f"    runtime: tflite_micro\n    store: {{dir: {tmp_path / 'mcu'}}}\n")
    check = run_cli("--boards", str(boards), "check", str(bundle), "--board", "mcu-float", "--json")
    problems = json.loads(check.stdout)[0]["result"]["problems"]
    assert check.returncode == 1 and [p["code"] for p in problems] == ["op_unsupported"]
    assert "ATAN2" in problems[0]["message"] and "MUL" not in problems[0]["message"]
    ops = run_cli("ops", str(bundle), "--out", str(tmp_path / "ops"))
    assert ops.returncode == 0 and "TFLite Micro has no kernel for ATAN2" in ops.stderr
    header = (tmp_path / "ops" / "micro_op_resolver.h").read_text()
    assert "AddAtan2" not in header and "AddMul();" in header and "NOT IN TFLITE MICRO" in header
    np.testing.assert_equal(json.loads((tmp_path / "ops" / "ops.json").read_text())["micro_unsupported"], ["ATAN2"])


def _densify_model() -> bytes:
    """A conv with a mostly-zero filter, converted with EXPERIMENTAL_SPARSITY: TFLite inserts DENSIFY before CONV_2D."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
    kernel[..., ::2] = 0
    kernel[:, :, ::2, :] = 0
    kernel[0] = 0
    k = tf.constant(kernel)

    def sparsity(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]

    return hm._convert(lambda x: tf.nn.conv2d(x, k, 1, "SAME"), [tf.TensorSpec((1, 8, 8, 8), tf.float32)], sparsity)


def test_densify_gets_no_add_call_and_tflm_really_lacks_it() -> None:
    from edgeship.converters.opsgen import OpSet, render_micro
    from edgeship.device_agent import micro

    model = _densify_model()
    parsed = TFLiteModel.from_bytes(model)
    assert {u.name for u in parsed.op_uses} == {"CONV_2D", "DENSIFY"}
    runtime.load_runtime("ai_edge_litert").interpreter(model)  # TFLite runs it
    with pytest.raises(micro.UnsupportedOpError) as info:  # TFLite Micro does not: the table agrees with TFLM
        micro.probe(model)
    assert info.value.op == "DENSIFY"
    header = render_micro(OpSet.of([("sparse.tflite", parsed)]))
    assert "AddDensify" not in header and "micro_op_resolver.AddConv2D();" in header
    assert "constexpr int kNumberOperators = 1;" in header
    assert "// NOT IN TFLITE MICRO: it has no kernel (no Add...() method) for DENSIFY" in header
