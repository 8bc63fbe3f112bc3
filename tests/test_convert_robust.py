"""The converter on models that break it (issue 9): recurrent, attention, stateful, int16x8; real TensorFlow.

The models are tiny and trained for a moment on digits read row by row (8 time steps of 8
features), which is enough for the converter: what is tested is what the flatbuffer,
the manifest and the interpreter say, and that a converter crash is one line and leaves
nothing behind. The crash is real: TensorFlow 2.21's converter segfaults quantizing a
Keras 3 LSTM to int8.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.convert import convert
from edgeship.converters.manifest import Manifest
from edgeship.converters.recipe import Recipe
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import ConversionError
from tests.conftest import EDGESHIP

STEPS, FEATURES = 8, 8


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lstm.keras, gru.keras, attention.keras (Keras 3), fused_lstm.h5 and stateful_lstm.h5 (tf_keras), data."""
    from edgeship.converters._tf import tensorflow

    tensorflow()
    import keras
    import tf_keras
    from sklearn.datasets import load_digits

    out = tmp_path_factory.mktemp("robust")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    np.savez(out / "calib.npz", x=x[:100])
    np.savez(out / "test.npz", x=x[1500:1600], y=y[1500:1600])
    keras.utils.set_random_seed(0)

    def fit(model: Any, batch: int = 32) -> None:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x[:600], y[:600], epochs=1, batch_size=batch, verbose=0)

    for name, layer in (("lstm", keras.layers.LSTM), ("gru", keras.layers.GRU)):
        inp = keras.Input((STEPS, FEATURES), name="rows")
        model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="probs")(layer(12, name=name)(inp)))
        fit(model)
        model.save(out / f"{name}.keras")

    for name, unroll in (("gru_sequences", False), ("gru_sequences_unrolled", True)):  # untrained: shapes only
        inp = keras.Input((STEPS, FEATURES), name="rows")
        h = keras.layers.Flatten(name="flat")(keras.layers.GRU(6, return_sequences=True, unroll=unroll, name="gru")(inp))
        keras.Model(inp, keras.layers.Dense(10, name="probs")(h)).save(out / f"{name}.keras")

    inp = keras.Input((STEPS, FEATURES), name="rows")
    h = keras.layers.Dense(16, name="embed")(inp)
    h = keras.layers.LayerNormalization(name="norm")(h + keras.layers.MultiHeadAttention(2, 8, name="mha")(h, h))
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="probs")(h))
    fit(model)
    model.save(out / "attention.keras")

    for name, stateful in (("fused_lstm", False), ("stateful_lstm", True)):
        inp = tf_keras.Input((STEPS, FEATURES), batch_size=1 if stateful else None, name="rows")
        h = tf_keras.layers.LSTM(12, stateful=stateful, name="lstm")(inp)
        model = tf_keras.Model(inp, tf_keras.layers.Dense(10, activation="softmax", name="probs")(h))
        fit(model, batch=1 if stateful else 32)
        model.save(out / f"{name}.h5")
    return out


def _cli(*args: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.run([str(EDGESHIP), *args], capture_output=True, text=True, env=env, timeout=600)


def _outputs(data: bytes, x: np.ndarray, reset: bool) -> np.ndarray:
    """The model's first output for each sample, one invocation each (state reset before each when asked)."""
    from edgeship.device_agent.quant import dequantize, quantize
    from edgeship.device_agent.runtime import load_runtime

    it = load_runtime().interpreter(data)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for sample in x:
        if reset:
            it.reset_all_variables()
        it.set_tensor(inp["index"], quantize(sample[None], inp))
        it.invoke()
        rows.append(dequantize(it.get_tensor(out["index"]), out)[0])
    return np.asarray(rows)


def test_a_converter_crash_is_one_line_and_leaves_nothing_behind(zoo: Path, tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "bundles" / "lstm-int8"
    proc = _cli("convert", str(zoo / "lstm.keras"), "-r", "int8", "--calib", str(zoo / "calib.npz"), "-o", str(out),
                "-q", "--json", tmpdir=tmpdir)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"edgeship: error: the TFLite converter crashed (signal 11) while quantizing {zoo / 'lstm.keras'} with recipe "
        f"int8; try recipe dynamic or float32"]
    assert not out.exists() and list(out.parent.iterdir()) == []  # no bundle, no .partial
    assert list(tmpdir.iterdir()) == []  # no static SavedModel, no converter job


def test_one_converter_child_serves_the_process_and_a_crashed_one_is_replaced(zoo: Path, tmp_path: Path) -> None:
    """Conversions in one process share a converter child (TensorFlow imported once); a crash is not reused."""
    from edgeship.converters import isolated
    from edgeship.sdk.errors import ConverterCrashError

    def idle_pid() -> int | None:
        return isolated._idle[0]._proc.pid if isolated._idle else None

    convert(zoo / "gru.keras", Recipe.from_name("float32"), tmp_path / "a")
    first = idle_pid()
    assert first is not None
    convert(zoo / "gru.keras", Recipe.from_name("dynamic"), tmp_path / "b")
    assert idle_pid() == first  # the same child took the second job
    work = isolated._idle[0].work
    assert [p.name for p in work.iterdir()] == ["child.log"]  # each job's files go with the job
    with pytest.raises(ConverterCrashError):
        convert(zoo / "lstm.keras", Recipe.from_name("int8", calibration=zoo / "calib.npz"), tmp_path / "c")
    assert idle_pid() is None and not work.exists()  # the crashed child is gone, with its directory
    assert not (tmp_path / "c").exists()
    result = convert(zoo / "gru.keras", Recipe.from_name("float32"), tmp_path / "d")  # a new child
    assert idle_pid() not in (None, first)
    assert result.manifest.sha256 == TFLiteModel.from_path(tmp_path / "a" / "model.tflite").sha256


@pytest.mark.parametrize("name", ["lstm.keras", "gru.keras", "fused_lstm.h5"])
@pytest.mark.parametrize("recipe", ["float32", "float16", "dynamic"])
def test_recurrent_models_convert_static_and_agree_with_keras(zoo: Path, tmp_path: Path, name: str,
                                                              recipe: str) -> None:
    from edgeship.converters.source import load_source

    result = convert(zoo / name, Recipe.from_name(recipe), tmp_path / "b")
    data = result.model_path.read_bytes()
    model = TFLiteModel.from_bytes(data)
    assert model.dynamic_tensors() == []
    assert [t.shape for _, t in model.inputs] == [(1, STEPS, FEATURES)]
    x = np.load(zoo / "test.npz")["x"][:20]
    expected = load_source(zoo / name).predict({"rows": x}, 1)["probs"]
    got = _outputs(data, x, reset=True)
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.9
    assert np.max(np.abs(got - expected)) < (0.02 if recipe == "float32" else 0.1)
    # Keras 3 runs its recurrent layers as a WHILE loop; tf_keras's LSTM becomes TFLite's fused kernel, with its
    # state in variable tensors, so the manifest calls the model stateful.
    fused = name == "fused_lstm.h5"
    assert ("UNIDIRECTIONAL_SEQUENCE_LSTM" in {u.name for u in model.op_uses}) == fused
    assert result.manifest.stateful == fused


def test_a_gru_returning_sequences_is_told_to_unroll_and_then_converts(zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"still has dynamic tensors .*the loop \(WHILE\) of recurrent layer\(s\) "
                                              r"gru, which returns sequences; rebuild it with unroll=True"):
        convert(zoo / "gru_sequences.keras", Recipe.float32(), tmp_path / "rolled")
    assert list(tmp_path.iterdir()) == []
    model = TFLiteModel.from_path(convert(zoo / "gru_sequences_unrolled.keras", Recipe.float32(),
                                          tmp_path / "unrolled").model_path)
    assert model.dynamic_tensors() == [] and "WHILE" not in {u.name for u in model.op_uses}


def test_a_fused_lstm_is_marked_stateful_because_its_runs_depend_on_each_other(zoo: Path, tmp_path: Path) -> None:
    result = convert(zoo / "fused_lstm.h5", Recipe.float32(), tmp_path / "b")
    data = result.model_path.read_bytes()
    m = Manifest.load(result.bundle)
    assert m.stateful and m.state is not None and m.state.resource_variables == []
    variables = [t.name for sg in TFLiteModel.from_bytes(data).subgraphs for t in sg.tensors if t.is_variable]
    assert m.state.variable_tensors == variables and len(variables) == 2  # the LSTM's h and c
    x = np.repeat(np.load(zoo / "test.npz")["x"][:1], 3, axis=0)  # the same sample three times
    carried, reset = _outputs(data, x, reset=False), _outputs(data, x, reset=True)
    assert np.abs(carried[1] - carried[0]).max() > 1e-4  # the second run started from the first one's state
    assert np.abs(reset - reset[0]).max() < 1e-6
    proc = subprocess.run([str(EDGESHIP), "inspect", str(result.model_path)], capture_output=True, text=True)
    assert proc.returncode == 0 and f"stateful: yes (variable tensors {', '.join(variables)}" in proc.stdout


def test_int8_of_a_fused_lstm_is_fully_integer_and_still_stateful(zoo: Path, tmp_path: Path) -> None:
    from edgeship.converters.source import load_source

    result = convert(zoo / "fused_lstm.h5", Recipe.from_name("int8", calibration=zoo / "calib.npz"), tmp_path / "b")
    m = result.manifest
    assert m.integer.fully_integer and m.stateful and "UNIDIRECTIONAL_SEQUENCE_LSTM" in {o.name for o in m.operators}
    x = np.load(zoo / "test.npz")["x"][:20]
    expected = load_source(zoo / "fused_lstm.h5").predict({"rows": x}, 1)["probs"]
    got = _outputs(result.model_path.read_bytes(), x, reset=True)
    assert np.max(np.abs(got - expected)) < 0.1, np.max(np.abs(got - expected))  # probabilities, in int8 steps of 1/256


def test_a_stateful_keras_lstm_names_its_resource_variables(zoo: Path, tmp_path: Path) -> None:
    m = convert(zoo / "stateful_lstm.h5", Recipe.float32(), tmp_path / "b").manifest
    assert m.stateful and m.state is not None
    assert sorted(m.state.resource_variables) == ["lstm/Variable", "lstm/Variable_1"]  # tf_keras's h and c


def test_int8_attention_is_the_raw_converters_model_with_its_float_op_named(zoo: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from edgeship.converters import data as datasets
    from edgeship.converters.source import load_source
    from edgeship.sdk.catalogue import load_catalogue
    from edgeship.sdk.compat import check

    proc = _cli("convert", str(zoo / "attention.keras"), "-r", "int8", "--calib", str(zoo / "calib.npz"),
                "-o", str(tmp_path / "b"), tmpdir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = Manifest.load(tmp_path / "b")
    data = (tmp_path / "b" / "model.tflite").read_bytes()
    ours = TFLiteModel.from_bytes(data)

    # A plain TFLiteConverter on the same static graph and the same calibration samples.
    source = load_source(zoo / "attention.keras")
    saved, key = source.export_static(tmp_path / "static", 1)
    picked = datasets.pick_calibration({"rows": np.load(zoo / "calib.npz")["x"]}, 200, False, zoo / "calib.npz")
    raw = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=[key])
    raw.optimizations = [tf.lite.Optimize.DEFAULT]
    raw.representative_dataset = lambda: ({"rows": picked["rows"][i : i + 1]} for i in range(len(picked["rows"])))
    raw.inference_input_type = raw.inference_output_type = tf.int8
    theirs = TFLiteModel.from_bytes(bytes(raw.convert()))

    assert [(u.name, u.count) for u in ours.op_uses] == [(u.name, u.count) for u in theirs.op_uses]
    assert ours.float_ops() == theirs.float_ops() and ours.float_ops()
    assert abs(ours.size - theirs.size) <= 0.03 * theirs.size
    assert manifest.integer.float_ops == ours.float_ops() and not manifest.integer.fully_integer
    assert [t.split("/")[-2] for t in manifest.integer.float_op_tensors] == ["norm_1"]  # LayerNormalization's NEG
    assert manifest.integer.activations == "int8"
    node = manifest.integer.float_ops[0]
    assert f"fully integer: no (1 float op: {node} ({manifest.integer.float_op_tensors[0]}))" in proc.stdout
    assert f"the converter left op(s) float: {node}" in proc.stderr  # the progress line says it too

    with pytest.raises(ConversionError, match=r"^int8_strict: the converter left 1 op\(s\) float: NEG#\d+ \("):
        convert(zoo / "attention.keras", Recipe.from_name("int8", calibration=zoo / "calib.npz", int8_strict=True),
                tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    problems = check(manifest, load_catalogue()["emu-mcu"])
    assert [p.code for p in problems] == ["not_int8"] and "NEG#" in problems[0].message


def test_int8_strict_still_converts_digits_fully_integer(digits: Path, tmp_path: Path) -> None:
    recipe = Recipe.from_name("int8", calibration=digits / "train.npz", int8_strict=True)
    m = convert(digits / "digits.keras", recipe, tmp_path / "b").manifest
    assert m.integer.fully_integer and m.integer.float_ops == [] and m.recipe["int8_strict"] is True
    assert not m.stateful and m.state is None


def test_int16x8_digits_has_int16_activations_and_boards_say_what_runs_it(digits: Path, tmp_path: Path) -> None:
    from edgeship.device_agent.runtime import load_runtime
    from edgeship.sdk.catalogue import load_catalogue
    from edgeship.sdk.compat import check, notes

    proc = _cli("convert", str(digits / "digits.keras"), "-r", "int16x8", "--calib", str(digits / "train.npz"),
                "--eval", str(digits / "test.npz"), "-o", str(tmp_path / "b"), "--json", tmpdir=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no converter chatter, anywhere
    m = Manifest.model_validate(json.loads(proc.stdout)["manifest"])  # stdout is one JSON document
    assert m == Manifest.load(tmp_path / "b")
    it = load_runtime().interpreter((tmp_path / "b" / "model.tflite").read_bytes())
    assert [d["dtype"] for d in it.get_input_details() + it.get_output_details()] == [np.int16, np.int16]
    assert [t.dtype for t in m.inputs + m.outputs] == ["int16", "int16"]
    assert m.integer.activations == "int16" and m.integer.fully_integer
    int8_weights = [d for d in it.get_tensor_details() if d["dtype"] == np.int8]
    assert int8_weights, "16x8 keeps int8 weights"
    assert m.accuracy is not None and m.accuracy.model >= m.accuracy.float_model - 0.01
    boards = load_catalogue()
    assert [p.code for p in check(m, boards["emu-mcu"])] == ["not_int8"]
    assert "delegate_int16" in [p.code for p in check(m, boards["coral-devboard"])]
    assert check(m, boards["local"]) == [] and "XNNPACK" in notes(m, boards["local"])[0]


@pytest.mark.convert
def test_a_converter_refusal_still_shows_its_mlir_error(tmp_path: Path) -> None:
    import tensorflow as tf

    class Erf(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.math.erf(x)}

    module = Erf()
    tf.saved_model.save(module, str(tmp_path / "erf"), signatures={"serving_default": module.serve})
    with pytest.raises(ConversionError, match=r"recipe float32: 'tf.Erf' op is neither a custom op nor a flex op"):
        convert(tmp_path / "erf", Recipe.float32(), tmp_path / "b")
