"""Pruning that says what it costs: blocks only on big Dense layers, the fine-tuned float accuracy in the
manifest, and a warning when fine-tuning itself lost accuracy. Real tfmot pruning, real conversions.

The zero pattern is read from the converted flatbuffer (float32 recipe, so every zero is a pruned
weight): TFLite stores a FULLY_CONNECTED weight as (out, in), and block pruning zeroes runs of 16
along `in`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.convert  # each test trains and prunes a Dense model


def _digits_flat(root: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    np.savez(root / "train.npz", x=x[:1400], y=y[:1400])
    np.savez(root / "test.npz", x=x[1400:], y=y[1400:])
    return root / "train.npz", root / "test.npz"


def _dense_model(path: Path, x: np.ndarray, y: np.ndarray, widths: list[int]) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input((64,), name="pixels")]
    layers += [keras.layers.Dense(w, activation="relu", name=f"fc{i + 1}") for i, w in enumerate(widths)]
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax", name="probs")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=25, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _digits_flat(tmp_path_factory.mktemp("flat_digits"))


def _fc_weights(bundle: Path) -> dict[tuple[int, int], np.ndarray]:
    """The FULLY_CONNECTED weight matrices of a float bundle, keyed by shape (out, in)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(bundle / "model.tflite"))
    interpreter.allocate_tensors()
    out = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED":
            w = interpreter.get_tensor(int(op["inputs"][1]))
            out[tuple(w.shape)] = w
    return out


def _whole_blocks(w: np.ndarray, block: int = 16) -> float:
    """Of the zero weights, the fraction that lie in fully zero runs of `block` along the input axis."""
    runs = w.reshape(w.shape[0], -1, block)
    zeros = runs == 0
    return float(zeros[zeros.all(axis=2)].size / max(1, zeros.sum()))


def test_small_dense_layers_stay_weight_by_weight_and_a_lost_float_model_is_reported(
        data: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = data
    d = np.load(train)
    model = _dense_model(tmp_path / "small.keras", d["x"], d["y"], [32])  # 64x32 and 32x10: both small
    out = tmp_path / "bundle"
    r = run_cli("convert", str(model), "-r", "float32", "--train", str(train), "--sparsity", "0.95", "--eval", str(test),
                "-o", str(out))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "fine-tuned float model (pruning)" in warnings[0], r.stderr
    acc = json.loads((out / "manifest.json").read_text())["accuracy"]
    assert acc["float_model"] - acc["finetuned_float_model"] > 0.02, acc
    # a float32 model computes what the pruned Keras model computed: the two accuracies are the same measurement
    assert abs(acc["model"] - acc["finetuned_float_model"]) <= 1 / acc["samples"] + 1e-9, acc
    assert acc["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert f"{acc['finetuned_float_model'] * 100:.2f}%" in acc["warnings"][0]
    weights = _fc_weights(out)
    assert set(weights) == {(32, 64), (10, 32)}
    for shape, w in weights.items():
        assert (w == 0).mean() > 0.9, shape  # pruned...
        assert _whole_blocks(w) < 0.9, shape  # ...weight by weight, not in blocks of 16


def test_a_large_dense_layer_gets_blocks_of_16_and_the_small_ones_do_not(data: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

    train, test = data
    d = np.load(train)
    model = _dense_model(tmp_path / "wide.keras", d["x"], d["y"], [256, 128])  # fc2: 256 inputs, 32768 weights
    result = convert(model, Recipe.from_name("float32", train=train, sparsity=0.5), tmp_path / "bundle", eval_data=test)
    acc = result.manifest.accuracy
    assert acc is not None and acc.finetuned_float_model is not None and acc.warnings == []
    assert acc.float_model - acc.finetuned_float_model <= 0.02
    weights = _fc_weights(tmp_path / "bundle")
    assert set(weights) == {(256, 64), (128, 256), (10, 128)}
    assert _whole_blocks(weights[(128, 256)]) == 1.0  # every zero of the big layer is in a zero run of 16
    for shape in ((256, 64), (10, 128)):  # 64 inputs; 1,280 weights: too small for blocks
        assert (weights[shape] == 0).mean() > 0.4 and _whole_blocks(weights[shape]) < 0.5, shape


def test_recipes_that_do_not_fine_tune_record_no_fine_tuned_accuracy(convert_digits: Any) -> None:
    acc = convert_digits("int8").manifest.accuracy
    assert acc.finetuned_float_model is None and acc.warnings == []
