"""The converter on the digits example: the size, accuracy and integer-only promises of issue 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.manifest import Manifest
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.schemas import validate
from tests.conftest import run_cli

DYNAMIC_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}


def _model(result: Any) -> TFLiteModel:
    return TFLiteModel.from_path(result.model_path)


def test_int8_is_small_accurate_and_integer_only(convert_digits: Any) -> None:
    f32, i8 = convert_digits("float32"), convert_digits("int8")
    assert i8.manifest.size <= 0.30 * f32.manifest.size, (i8.manifest.size, f32.manifest.size)
    acc = i8.manifest.accuracy
    assert acc is not None and acc.samples == 360
    assert acc.model >= acc.float_model - 0.01, f"int8 {acc.model:.4f} vs float {acc.float_model:.4f}"
    model = _model(i8)
    assert model.fully_integer and model.float_ops() == []
    assert [t.dtype for _, t in model.inputs + model.outputs] == ["int8", "int8"]


@pytest.mark.slow
def test_qat_is_within_half_a_point_of_float_and_integer_only(convert_digits: Any) -> None:
    qat = convert_digits("qat")
    acc = qat.manifest.accuracy
    assert acc.model >= acc.float_model - 0.005, f"qat {acc.model:.4f} vs float {acc.float_model:.4f}"
    model = _model(qat)
    assert model.fully_integer and model.float_ops() == []
    assert qat.manifest.recipe["qat"]["epochs"] >= 1
    assert "tensorflow-model-optimization" in qat.manifest.tools


@pytest.mark.parametrize("io", ["uint8", "float32"])
def test_int8_io_variants_keep_float_only_at_the_edges(convert_digits: Any, io: str) -> None:
    model = _model(convert_digits("int8", io=io))
    assert [t.dtype for _, t in model.inputs + model.outputs] == [io, io]
    assert model.float_ops() == []  # float32 I/O: only the boundary QUANTIZE/DEQUANTIZE touch float
    if io == "float32":
        names = {u.name for u in model.op_uses}
        assert {"QUANTIZE", "DEQUANTIZE"} <= names
        assert not model.fully_integer


@pytest.mark.parametrize("recipe", ["float32", "float16", "dynamic", "int8"])
def test_every_recipe_is_static_and_matches_its_manifest(convert_digits: Any, recipe: str) -> None:
    result = convert_digits(recipe)
    model = _model(result)
    manifest = Manifest.load(result.bundle)  # validates against the schema
    assert manifest.sha256 == model.sha256 and manifest.size == result.model_path.stat().st_size
    assert model.dynamic_tensors() == []
    assert not DYNAMIC_SHAPE_OPS & {u.name for u in model.op_uses}
    assert [(o.name, o.version, o.count) for o in manifest.operators] == [(u.name, u.version, u.count) for u in model.op_uses]
    assert manifest.inputs[0].name == "image" and manifest.inputs[0].shape == [1, 8, 8, 1]
    assert manifest.outputs[0].name == "probs"
    assert manifest.min_runtime_version and manifest.source.sha256 and manifest.tools["tensorflow"].startswith("2.21")
    assert manifest.accuracy is not None and manifest.accuracy.model > 0.9
    ops_json = json.loads((result.bundle / "ops" / "ops.json").read_text())
    assert {o["name"] for o in ops_json["builtin"]} == {u.name for u in model.op_uses}


def test_float16_halves_and_dynamic_quarters_the_weights(convert_digits: Any) -> None:
    f32 = convert_digits("float32").manifest.weights_bytes
    assert convert_digits("float16").manifest.weights_bytes <= 0.55 * f32
    assert convert_digits("dynamic").manifest.weights_bytes <= 0.30 * f32


def test_batch_option_fixes_a_larger_static_batch(convert_digits: Any) -> None:
    result = convert_digits("int8", batch=4)
    model = _model(result)
    assert model.inputs[0][1].shape == (4, 8, 8, 1) and model.dynamic_tensors() == []
    assert result.manifest.accuracy.samples == 360  # the last partial batch is padded, not dropped


def test_manifest_quantization_matches_the_interpreter(convert_digits: Any) -> None:
    from ai_edge_litert.interpreter import Interpreter

    result = convert_digits("int8")
    interp = Interpreter(model_content=result.model_path.read_bytes())
    detail = interp.get_input_details()[0]
    q = result.manifest.inputs[0].quantization
    assert q is not None
    assert np.isclose(q.scale[0], detail["quantization"][0]) and q.zero_point[0] == detail["quantization"][1]


def test_convert_command_end_to_end(digits: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = run_cli("convert", str(digits / "digits.keras"), "--recipe", "int8", "--calib", str(digits / "train.npz"),
                   "--eval", str(digits / "test.npz"), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    validate("convert", doc)  # its documented shape (sdk/schemas.py, `edgeship schema convert`)
    assert doc["manifest"]["recipe"]["name"] == "int8"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.tflite", "ops"]
    again = run_cli("convert", str(digits / "digits.keras"), "--recipe", "float32", "--out", str(out))
    assert again.returncode != 0 and "--force" in again.stderr
    assert Manifest.load(out).recipe["name"] == "int8"  # the refused run left the bundle alone
    assert "fully integer: yes" in run_cli("inspect", str(out / "model.tflite")).stdout
    f32 = run_cli("convert", str(digits / "digits.keras"), "--recipe", "float32", "--out", str(tmp_path / "f32"), "-q")
    assert f32.returncode == 0, f32.stderr
    assert "fully integer: no (a float model, 7 float ops)" in f32.stdout  # a float model's ops are not listed

    report = run_cli("eval-host", str(out), "--data", str(digits / "test.npz"), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["accuracy"] == pytest.approx(doc["manifest"]["accuracy"]["model"])
    assert data["latency_ms"]["count"] == 360 and data["latency_ms"]["p50"] > 0
