"""Calibration from an image folder, QAT's unsupported-layer handling, and inspect on a Keras file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeship.converters.convert import convert
from edgeship.converters.recipe import Recipe
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import UnsupportedLayerError
from tests.conftest import run_cli


def test_int8_calibrates_from_an_image_folder(digits: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    x = np.load(digits / "train.npz")["x"][:40]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(x):  # 8x8 grey PNGs, pixels 0..255
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(np.round(img * 255).astype(np.uint8)).numpy())
    result = convert(digits / "digits.keras", Recipe.int8(folder), tmp_path / "b", eval_data=digits / "test.npz")
    assert TFLiteModel.from_path(result.model_path).fully_integer
    assert result.manifest.accuracy.model >= result.manifest.accuracy.float_model - 0.02


def _conv1d_model(path: Path) -> tuple[Path, Path]:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(16, 2), name="signal"),
        keras.layers.Conv1D(4, 3, activation="relu", name="conv1d"),  # tfmot's 8-bit scheme cannot wrap Conv1D
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    model.save(path / "c1d.keras")
    rng = np.random.default_rng(0)
    np.savez(path / "train.npz", x=rng.normal(size=(64, 16, 2)).astype(np.float32), y=rng.integers(0, 3, 64))
    return path / "c1d.keras", path / "train.npz"


@pytest.mark.convert
def test_qat_names_layers_it_cannot_wrap_and_can_leave_them_float(tmp_path: Path) -> None:
    model, train = _conv1d_model(tmp_path)
    with pytest.raises(UnsupportedLayerError, match=r"^leave_unsupported_float: QAT cannot wrap these layers: conv1d \(Conv1D\);") as err:
        convert(model, Recipe.quantization_aware(train, epochs=1), tmp_path / "b")
    assert err.value.layers == ["conv1d (Conv1D)"]
    assert not (tmp_path / "b").exists()

    result = convert(model, Recipe.quantization_aware(train, epochs=1, leave_unsupported_float=True), tmp_path / "b")
    tfl = TFLiteModel.from_path(result.model_path)
    assert tfl.fully_integer  # the float-trained layer is calibrated into int8 by the converter
    assert result.manifest.recipe["qat"]["leave_unsupported_float"] is True


def test_inspect_keras_lists_layers_and_parameters(digits: Path) -> None:
    proc = run_cli("inspect", str(digits / "digits.keras"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    import keras

    model = keras.saving.load_model(digits / "digits.keras", compile=False)
    assert info["params"] == model.count_params() >= 50_000
    assert [la["name"] for la in info["layers"]] == [layer.name for layer in model.layers]
    assert sum(la["params"] for la in info["layers"]) == info["params"]
