"""converters.tflite_model against TensorFlow's schema, its flatbuffer reader and the LiteRT interpreter.

Every fact the stdlib reader reports about a real converted model is checked against an
independent source: the interpreter (ops per node, tensors, I/O details) or TensorFlow's
generated flatbuffer code (opcode versions, builtin codes, metadata).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import CorruptModelError, ModelNotFoundError
from tests import helpers_models as hm

MODELS = {
    "float": hm.float_model,
    "int8": hm.int8_model,
    "dense_relu": hm.dense_relu_model,
    "cumsum": hm.cumsum_model,
    "select_tf": hm.select_tf_model,
    "custom": hm.custom_op_model,
}
FLOAT_NP = {np.float16, np.float32, np.float64}


def _derived(model: TFLiteModel) -> None:
    """Touch every derived fact, as `edgeship inspect` and the manifest do."""
    _ = (model.inputs, model.outputs, model.op_uses, model.float_ops(), model.fully_integer,
         model.weights_bytes, model.min_runtime_version, model.dynamic_tensors(), model.io_is_float)


# -- schema enums -------------------------------------------------------------------


def test_schema_enums_match_installed_tensorflow_schema() -> None:
    gen = hm.load_module("tools/gen_schema_enums.py", "_gen_schema_enums_test")
    committed = (hm.ROOT / "converters" / "_schema_enums.py").read_text()
    assert committed == gen.render(), "converters/_schema_enums.py is stale: run tools/gen_schema_enums.py"


def test_schema_enums_cover_the_schema_classes() -> None:
    from edgeship.converters._schema_enums import BUILTIN_OPERATORS, TENSOR_TYPES

    schema = hm.schema()
    assert BUILTIN_OPERATORS[schema.BuiltinOperator.CUMSUM] == "CUMSUM"
    assert BUILTIN_OPERATORS[schema.BuiltinOperator.CONV_2D] == "CONV_2D"
    assert TENSOR_TYPES[schema.TensorType.INT8] == "INT8"
    assert len(BUILTIN_OPERATORS) == len({k for k in vars(schema.BuiltinOperator) if not k.startswith("_")})


# -- real models against the interpreter ----------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_nodes_match_interpreter(name: str) -> None:
    data = MODELS[name]()
    model = TFLiteModel.from_bytes(data)
    details = hm.interpreter(data)._get_ops_details()
    sg = model.main
    assert len(sg.operators) == len(details)
    for op, d in zip(sg.operators, details):
        assert model.opcodes[op.opcode_index].name == d["op_name"]
        assert op.inputs == tuple(int(i) for i in d["inputs"])
        assert op.outputs == tuple(int(i) for i in d["outputs"])
    # op_uses: the same multiset of op names as the interpreter's nodes
    uses: Counter[str] = Counter()
    for u in model.op_uses:
        uses[u.name] += u.count
    assert uses == Counter(d["op_name"] for d in details)


@pytest.mark.parametrize("name", list(MODELS))
def test_opcodes_match_tensorflow_flatbuffer_reader(name: str) -> None:
    data = MODELS[name]()
    model = TFLiteModel.from_bytes(data)
    fb = hm.flatbuffer_model(data)
    op_names = {v: k for k, v in vars(hm.schema().BuiltinOperator).items() if not k.startswith("_")}
    assert len(model.opcodes) == len(fb.operatorCodes)
    for ours, theirs in zip(model.opcodes, fb.operatorCodes):
        assert ours.version == theirs.version
        code = max(theirs.builtinCode, theirs.deprecatedBuiltinCode)
        assert ours.builtin_code == code
        if theirs.customCode is None:
            assert (ours.kind, ours.name) == ("builtin", op_names[code])
        else:
            custom = theirs.customCode.decode()
            assert ours.name == custom
            assert ours.kind == ("select_tf" if custom.startswith("Flex") else "custom")
    assert model.schema_version == fb.version
    assert len(model.subgraphs) == len(fb.subgraphs)
    assert model.buffer_sizes == tuple(0 if b.data is None else len(b.data) for b in fb.buffers)


@pytest.mark.parametrize("name", list(MODELS))
def test_tensors_match_interpreter(name: str) -> None:
    data = MODELS[name]()
    model = TFLiteModel.from_bytes(data)
    it = hm.interpreter(data)
    tensors = model.main.tensors
    assert len(tensors) == it._interpreter.NumTensors(0)
    details = it.get_tensor_details()
    assert details, "the interpreter reported no tensors"
    for d in details:
        t = tensors[d["index"]]
        assert t.name == d["name"]
        assert t.dtype == np.dtype(d["dtype"]).name
        assert t.shape == tuple(int(x) for x in d["shape"])
        assert t.shape_signature == tuple(int(x) for x in d["shape_signature"])
        q = d["quantization_parameters"]
        if t.quantization is None:
            assert len(q["scales"]) == 0
        else:
            assert t.quantization.scale == tuple(float(s) for s in q["scales"])
            assert t.quantization.zero_point == tuple(int(z) for z in q["zero_points"])
            assert t.quantization.axis == q["quantized_dimension"]


@pytest.mark.parametrize("name", ["float", "int8", "dense_relu"])
def test_io_matches_interpreter(name: str) -> None:
    data = MODELS[name]()
    model = TFLiteModel.from_bytes(data)
    it = hm.interpreter(data)
    for ours, theirs in ((model.inputs, it.get_input_details()), (model.outputs, it.get_output_details())):
        assert len(ours) == len(theirs) == 1
        for (_, t), d in zip(ours, theirs):
            assert t.index == d["index"]
            assert t.name == d["name"]
            assert t.dtype == np.dtype(d["dtype"]).name
            assert t.shape == tuple(int(x) for x in d["shape"])
            scale, zero_point = d["quantization"]
            if t.quantization is None:
                assert (scale, zero_point) == (0.0, 0)
            else:
                assert (t.quantization.scale[0], t.quantization.zero_point[0]) == (scale, zero_point)
                assert not t.quantization.per_axis


def test_int8_model_is_fully_integer() -> None:
    data = hm.int8_model()
    model = TFLiteModel.from_bytes(data)
    it = hm.interpreter(data)
    assert [np.dtype(d["dtype"]) for d in it.get_input_details() + it.get_output_details()] == [np.int8, np.int8]
    # the interpreter agrees that no node has a float operand or result
    for d in it._get_ops_details():
        assert not FLOAT_NP.intersection(d["operand_types"] + d["result_types"]), d
    assert model.float_ops() == []
    assert model.fully_integer is True
    assert model.io_is_float is False
    (_, x), = model.inputs
    assert x.quantization is not None and x.quantization.scale[0] > 0


@pytest.mark.parametrize("name", ["float", "dense_relu"])
def test_float_model_is_not_fully_integer(name: str) -> None:
    data = MODELS[name]()
    model = TFLiteModel.from_bytes(data)
    details = hm.interpreter(data)._get_ops_details()
    expected = [f"{d['op_name']}#{n}" for n, d in enumerate(details)
                if FLOAT_NP.intersection(d["operand_types"] + d["result_types"])]
    assert expected, "a float model has float nodes"
    assert model.float_ops() == expected
    assert model.io_is_float is True
    assert model.fully_integer is False


def test_builtin_code_above_127_is_named() -> None:
    data = hm.cumsum_model()
    fb = hm.flatbuffer_model(data)
    schema = hm.schema()
    raw = [(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in fb.operatorCodes]
    # what makes this case hard: the int8 deprecated field saturates at PLACEHOLDER_FOR_GREATER_OP_CODES
    assert (schema.BuiltinOperator.CUMSUM, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES) in raw
    model = TFLiteModel.from_bytes(data)
    cumsum = [oc for oc in model.opcodes if oc.builtin_code == schema.BuiltinOperator.CUMSUM]
    assert len(cumsum) == 1 and cumsum[0].builtin_code >= 128
    assert (cumsum[0].name, cumsum[0].kind) == ("CUMSUM", "builtin")
    assert "CUMSUM" in hm.interpreter_op_names(data)


@pytest.mark.parametrize("name", ["float", "int8", "cumsum"])
def test_min_runtime_version_is_read(name: str) -> None:
    data = MODELS[name]()
    fb = hm.flatbuffer_model(data)
    entry, = [m for m in fb.metadata if m.name == b"min_runtime_version"]
    expected = bytes(fb.buffers[entry.buffer].data).rstrip(b"\0").decode()
    version = TFLiteModel.from_bytes(data).min_runtime_version
    assert version == expected
    assert version and all(part.isdigit() for part in version.split("."))
    assert len(version.split(".")) == 3


def test_int8_min_runtime_version_is_at_least_1_14() -> None:
    version = TFLiteModel.from_bytes(hm.int8_model()).min_runtime_version
    assert version is not None
    assert tuple(int(p) for p in version.split(".")) >= (1, 14, 0)


def test_sha256_and_size() -> None:
    import hashlib

    data = hm.dense_relu_model()
    model = TFLiteModel.from_bytes(data)
    assert model.size == len(data)
    assert model.sha256 == hashlib.sha256(data).hexdigest()


# -- corrupt and missing files -------------------------------------------------------------


@pytest.mark.parametrize("name", ["dense_relu", "int8", "select_tf"])
def test_truncations_parse_or_raise_corrupt(name: str) -> None:
    data = MODELS[name]()
    cuts = sorted(set(np.linspace(0, len(data) - 1, 40).astype(int).tolist()))
    assert len(cuts) == 40
    corrupt = 0
    for n in cuts:
        try:
            model = TFLiteModel.from_bytes(data[:n], source="cut.tflite")
        except CorruptModelError as exc:
            corrupt += 1
            assert "cut.tflite" in str(exc)
            continue
        _derived(model)  # a model that parses must be usable, not fail later with IndexError
    assert corrupt >= len(cuts) // 2  # most cuts lose the tables the root points to


@pytest.mark.parametrize("name", ["dense_relu", "int8", "select_tf"])
def test_random_byte_flips_parse_or_raise_corrupt(name: str) -> None:
    data = MODELS[name]()
    rng = np.random.default_rng(20240601)
    outcomes: Counter[str] = Counter()
    for _ in range(300):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        try:
            model = TFLiteModel.from_bytes(bytes(buf), source="flip.tflite")
        except CorruptModelError as exc:
            assert "flip.tflite" in str(exc)
            outcomes["corrupt"] += 1
            continue
        _derived(model)
        outcomes["parsed"] += 1
    # both outcomes happen, so the loop exercises the error path and the parse path
    assert outcomes["corrupt"] > 0 and outcomes["parsed"] > 0


def test_wrong_file_identifier_names_source() -> None:
    data = bytearray(hm.dense_relu_model())
    data[4:8] = b"NOPE"
    with pytest.raises(CorruptModelError, match=r"weird\.bin.*not a TFLite flatbuffer"):
        TFLiteModel.from_bytes(bytes(data), source="weird.bin")


def test_three_byte_file_names_source() -> None:
    with pytest.raises(CorruptModelError, match=r"tiny\.tflite: 3 bytes"):
        TFLiteModel.from_bytes(b"TFL", source="tiny.tflite")


def test_from_path_missing_raises_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"nope\.tflite"):
        TFLiteModel.from_path(tmp_path / "nope.tflite")


def test_from_path_directory_and_real_file(tmp_path: Path) -> None:
    with pytest.raises(CorruptModelError, match="directory"):
        TFLiteModel.from_path(tmp_path)
    path = tmp_path / "m.tflite"
    path.write_bytes(hm.dense_relu_model())
    assert TFLiteModel.from_path(path) == TFLiteModel.from_bytes(hm.dense_relu_model())
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(hm.dense_relu_model()[:100])
    with pytest.raises(CorruptModelError, match=r"bad\.tflite"):
        TFLiteModel.from_path(bad)
