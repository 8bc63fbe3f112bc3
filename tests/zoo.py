"""The model zoo: the model families embedded developers ship, trained briefly on scikit-learn's digits.

Each family is a small model of a kind users bring to edgeship (keras.applications
MobileNetV2, a ResNet-style graph, a DS-CNN keyword spotter, Conv1D, LSTM, GRU, a tf_keras
fused LSTM in .h5, a two-input two-output model, a tiny transformer block, and two kinds
of SavedModel), saved in the format a user would save it in, with train/test/calib .npz
files in edgeship's dataset format (docs/converters.md):

    x or one array per input name     features
    y                                 labels of the first output
    y:<output layer name>             labels per output (multi-output models)

The data are the 1,797 8x8 digits of ``sklearn.datasets.load_digits`` (no download),
reshaped or upscaled to each family's input. Training is seeded and short: the whole zoo
trains in about a minute on two cores (docs/zoo.md has the measured time).

Used by the tests (the session fixture ``zoo`` in tests/conftest.py builds a family on
first use) and by bench/zoo.py. From a shell::

    python tests/zoo.py --out DIR [FAMILY ...]     # build (all families by default), print a summary
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

SEED = 0
ALL_RECIPES = ("float32", "float16", "dynamic", "int8", "qat", "int16x8")
FLOAT_RECIPES = ("float32", "float16", "dynamic")
CNN_RECIPES = (*FLOAT_RECIPES, "int8", "qat", "int16x8")


@dataclass(frozen=True)
class ZooModel:
    """One trained family: where it is, what data goes with it, and what edgeship should do with it."""

    family: str
    path: Path  # the model file or SavedModel directory
    source: str  # "keras" (.keras), "h5" (tf_keras .h5), "savedmodel"
    train: Path
    test: Path
    calib: Path
    recipes: tuple[str, ...]  # the recipes that must convert
    fully_integer: tuple[str, ...]  # recipes whose result must be fully integer (int8 I/O, no float op)
    int8_friendly: bool  # int8 stays within 2 points of float
    inputs: tuple[str, ...]  # input names, in the source model's order
    outputs: tuple[str, ...]  # output names, in the source model's order
    float_accuracy: float  # the trained model's top-1 on the test split (first output), in Keras
    train_seconds: float
    probe: tuple[str, ...] = ()  # recipes bench/zoo.py also tries, known not to work (yet)
    exercises: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("path", "train", "test", "calib"):
            d[k] = str(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ZooModel:
        d = dict(d)
        for k in ("path", "train", "test", "calib"):
            d[k] = Path(d[k])
        for k in ("recipes", "fully_integer", "inputs", "outputs", "probe"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class _Family:
    build: Callable[[Path, dict[str, np.ndarray]], tuple[Path, str, tuple[str, ...], tuple[str, ...], float]]
    recipes: tuple[str, ...]
    fully_integer: tuple[str, ...]
    int8_friendly: bool
    exercises: str
    probe: tuple[str, ...] = field(default=())


# -- data ---------------------------------------------------------------------------------

def digits_split() -> dict[str, np.ndarray]:
    """Digits as (N, 8, 8) float32 in [0, 1], split 80/20 stratified with the digits example's seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return {"x_train": x_train, "x_test": x_test, "y_train": y_train, "y_test": y_test}


def _upscale(x: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    import tensorflow as tf

    return tf.image.resize(x[..., None], (height, width)).numpy().astype(np.float32)


def _save_data(folder: Path, train: dict[str, np.ndarray], test: dict[str, np.ndarray], calib_samples: int = 200) -> None:
    calib: dict[str, Any] = {k: v[:calib_samples] for k, v in train.items() if not k.startswith("y")}
    for name, arrays in (("train", dict(train)), ("test", dict(test)), ("calib", calib)):
        np.savez(folder / f"{name}.npz", **arrays)  # calib: the first training samples, features only


def _single(folder: Path, data: dict[str, np.ndarray], transform: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, ...]:
    xtr, xte = transform(data["x_train"]), transform(data["x_test"])
    _save_data(folder, {"x": xtr, "y": data["y_train"]}, {"x": xte, "y": data["y_test"]})
    return xtr, xte


# -- training -------------------------------------------------------------------------------

def _fit_keras(model: Any, x: Any, y: Any, x_test: Any, y_test: Any, epochs: int, lr: float,
               loss: Any = "sparse_categorical_crossentropy") -> float:
    """Compile, fit (seeded, batch 32) and return the test accuracy of the first output."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    pred = model.predict(x_test, batch_size=128, verbose=0)
    first = pred[0] if isinstance(pred, (list, tuple)) else pred
    labels = y_test[0] if isinstance(y_test, (list, tuple)) else y_test
    return float(np.mean(np.argmax(first, axis=-1) == labels))


def _fit_tf_keras(model: Any, x: Any, y: Any, x_test: Any, y_test: Any, epochs: int, lr: float) -> float:
    import tf_keras

    model.compile(optimizer=tf_keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    pred = model.predict(x_test, batch_size=128, verbose=0)
    return float(np.mean(np.argmax(pred, axis=-1) == y_test))


def _seed() -> None:
    import keras
    import tf_keras

    keras.utils.set_random_seed(SEED)
    tf_keras.utils.set_random_seed(SEED)


Built = tuple[Path, str, tuple[str, ...], tuple[str, ...], float]


# -- the families -----------------------------------------------------------------------------

def _mobilenetv2(folder: Path, data: dict[str, np.ndarray]) -> Built:
    import keras

    xtr, xte = _single(folder, data, lambda x: np.repeat(_upscale(x, 4)[..., None], 3, axis=-1) * 2.0 - 1.0)
    model = keras.applications.MobileNetV2(input_tensor=keras.Input((32, 32, 3), name="image"), alpha=0.35,
                                           weights=None, classes=10)
    for layer in model.layers:  # keras.applications uses momentum 0.999: too slow for a short run's BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    acc = _fit_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=12, lr=2e-3)
    path = folder / "mobilenetv2.keras"
    model.save(path)
    return path, "keras", ("image",), (model.layers[-1].name,), acc


def _conv_bn_relu(x: Any, filters: int, kernel: Any, name: str, strides: Any = 1) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _resnet(folder: Path, data: dict[str, np.ndarray]) -> Built:
    import keras
    from keras import layers

    xtr, xte = _single(folder, data, lambda x: x[..., None])
    inp = keras.Input((8, 8, 1), name="image")
    stem = _conv_bn_relu(inp, 16, 3, "stem")
    y = _conv_bn_relu(stem, 16, 3, "res1a")
    y = layers.BatchNormalization(name="res1b_bn")(layers.Conv2D(16, 3, padding="same", use_bias=False, name="res1b_conv")(y))
    x = layers.ReLU(name="res1_relu")(layers.Add(name="res1_add")([stem, y]))
    y = _conv_bn_relu(x, 32, 3, "res2a", strides=2)
    y = layers.BatchNormalization(name="res2b_bn")(layers.Conv2D(32, 3, padding="same", use_bias=False, name="res2b_conv")(y))
    shortcut = layers.BatchNormalization(name="res2_proj_bn")(
        layers.Conv2D(32, 1, strides=2, use_bias=False, name="res2_proj_conv")(x))
    x = layers.ReLU(name="res2_relu")(layers.Add(name="res2_add")([shortcut, y]))
    a = _conv_bn_relu(x, 16, 1, "mix_1x1")
    b = _conv_bn_relu(x, 16, 3, "mix_3x3")
    x = layers.Concatenate(name="mix_concat")([a, b])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name="resnet_tiny")
    acc = _fit_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=15, lr=3e-3)
    path = folder / "resnet.keras"
    model.save(path)
    return path, "keras", ("image",), ("probs",), acc


def _dscnn(folder: Path, data: dict[str, np.ndarray]) -> Built:
    import keras
    from keras import layers

    xtr, xte = _single(folder, data, lambda x: _resize(x, 49, 10))
    inp = keras.Input((49, 10, 1), name="mfcc")
    x = _conv_bn_relu(inp, 32, (10, 4), "conv0", strides=(2, 2))
    for i in range(3):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}_conv")(x)
        x = layers.ReLU(name=f"dw{i}_relu")(layers.BatchNormalization(name=f"dw{i}_bn")(x))
        x = _conv_bn_relu(x, 32, 1, f"pw{i}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name="ds_cnn")
    acc = _fit_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=15, lr=3e-3)
    path = folder / "dscnn.keras"
    model.save(path)
    return path, "keras", ("mfcc",), ("probs",), acc


def _sequence_model(kind: str) -> Callable[[Path, dict[str, np.ndarray]], Built]:
    def build(folder: Path, data: dict[str, np.ndarray]) -> Built:
        import keras
        from keras import layers

        xtr, xte = _single(folder, data, lambda x: x)  # 8 time steps (rows) x 8 features
        inp = keras.Input((8, 8), name="rows")
        if kind == "conv1d":
            x = layers.Conv1D(32, 3, padding="same", activation="relu", name="conv1")(inp)
            x = layers.Conv1D(32, 3, padding="same", activation="relu", name="conv2")(x)
            x = layers.Flatten(name="flatten")(x)
        elif kind == "lstm":
            x = layers.LSTM(32, name="lstm")(inp)
        elif kind == "gru":
            x = layers.GRU(32, name="gru")(inp)
        else:  # attention: one transformer encoder block
            h = layers.Dense(16, name="embed")(inp)
            a = layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(h, h)
            h = layers.LayerNormalization(name="ln1")(layers.Add(name="add1")([h, a]))
            f = layers.Dense(16, name="ffn2")(layers.Dense(32, activation="relu", name="ffn1")(h))
            h = layers.LayerNormalization(name="ln2")(layers.Add(name="add2")([h, f]))
            x = layers.Flatten(name="flatten")(h)  # keeps the row order that attention alone ignores
        out = layers.Dense(10, activation="softmax", name="probs")(x)
        model = keras.Model(inp, out, name=kind)
        acc = _fit_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=20, lr=5e-3)
        path = folder / f"{kind}.keras"
        model.save(path)
        return path, "keras", ("rows",), ("probs",), acc

    return build


def _lstm_h5(folder: Path, data: dict[str, np.ndarray]) -> Built:
    import tf_keras

    xtr, xte = _single(folder, data, lambda x: x)
    model = tf_keras.Sequential([tf_keras.Input((8, 8), name="rows"), tf_keras.layers.LSTM(32, name="lstm"),
                                 tf_keras.layers.Dense(10, activation="softmax", name="probs")], name="lstm_h5")
    acc = _fit_tf_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=20, lr=5e-3)
    path = folder / "lstm_h5.h5"
    model.save(path)
    return path, "h5", ("rows",), ("probs",), acc


TWO_IO_OUTPUTS = ("digit", "above_four")  # the source order; sorted, the names come the other way round
TWO_IO_INPUTS = ("pixels", "features")


def _two_io(folder: Path, data: dict[str, np.ndarray]) -> Built:
    import keras
    from keras import layers

    def arrays(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return {"pixels": x[..., None], "features": x.reshape(len(x), 64), "y": y,
                "y:digit": y, "y:above_four": (y > 4).astype(np.int64)}

    train, test = arrays(data["x_train"], data["y_train"]), arrays(data["x_test"], data["y_test"])
    _save_data(folder, train, test)
    pixels = keras.Input((8, 8, 1), name="pixels")
    features = keras.Input((64,), name="features")
    a = layers.Flatten(name="flatten")(layers.MaxPooling2D(2, name="pool")(
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(pixels)))
    b = layers.Dense(32, activation="relu", name="dense_features")(features)
    h = layers.Dense(64, activation="relu", name="hidden")(layers.Concatenate(name="concat")([a, b]))
    digit = layers.Dense(10, activation="softmax", name="digit")(h)
    above = layers.Dense(2, activation="softmax", name="above_four")(h)
    model = keras.Model([pixels, features], [digit, above], name="two_io")
    x_in = [train["pixels"], train["features"]]
    acc = _fit_keras(model, x_in, [train["y:digit"], train["y:above_four"]], [test["pixels"], test["features"]],
                     [test["y:digit"], test["y:above_four"]], epochs=15, lr=2e-3,
                     loss=["sparse_categorical_crossentropy", "sparse_categorical_crossentropy"])
    path = folder / "two_io.keras"
    model.save(path)
    return path, "keras", TWO_IO_INPUTS, TWO_IO_OUTPUTS, acc


def _small_cnn(lib: Any) -> Any:
    layers = lib.layers
    return lib.Sequential([lib.Input((8, 8, 1), name="image"),
                           layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
                           layers.MaxPooling2D(2, name="pool"), layers.Flatten(name="flatten"),
                           layers.Dense(32, activation="relu", name="fc"),
                           layers.Dense(10, activation="softmax", name="probs")], name="small_cnn")


def _savedmodel_tf(folder: Path, data: dict[str, np.ndarray]) -> Built:
    """tf.saved_model.save of a tf_keras model: the classic TF2 export (a Keras 3 model needs an explicit
    signature for it; tf_keras gives serving_default with the layer names); no keras_metadata.pb."""
    import tensorflow as tf
    import tf_keras

    xtr, xte = _single(folder, data, lambda x: x[..., None])
    model = _small_cnn(tf_keras)
    acc = _fit_tf_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=12, lr=3e-3)
    path = folder / "savedmodel_tf"
    tf.saved_model.save(model, str(path))
    return path, "savedmodel", ("image",), ("probs",), acc


def _savedmodel_keras2(folder: Path, data: dict[str, np.ndarray]) -> Built:
    """tf_keras `model.save(dir)`: a SavedModel with keras_metadata.pb, so QAT can reload its layers."""
    import tf_keras

    xtr, xte = _single(folder, data, lambda x: x[..., None])
    model = _small_cnn(tf_keras)
    acc = _fit_tf_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=12, lr=3e-3)
    path = folder / "savedmodel_keras2"
    model.save(str(path), save_format="tf")
    return path, "savedmodel", ("image",), ("probs",), acc


def _savedmodel_export(folder: Path, data: dict[str, np.ndarray]) -> Built:
    """Keras 3 `model.export(path)`: a serving-only SavedModel (no Keras metadata, so no QAT)."""
    import keras

    xtr, xte = _single(folder, data, lambda x: x[..., None])
    model = _small_cnn(keras)
    acc = _fit_keras(model, xtr, data["y_train"], xte, data["y_test"], epochs=12, lr=3e-3)
    path = folder / "savedmodel_export"
    model.export(str(path), verbose=False)
    return path, "savedmodel", ("image",), ("output_0",), acc


FAMILIES: dict[str, _Family] = {
    "mobilenetv2": _Family(_mobilenetv2, CNN_RECIPES, ("int8", "qat"), True,
                           "keras.applications MobileNetV2 (alpha 0.35, 32x32x3): inverted residuals, "
                           "DepthwiseConv2D, BatchNormalization, ReLU6"),
    "resnet": _Family(_resnet, CNN_RECIPES, ("int8", "qat"), True,
                      "functional graph: Conv+BN+ReLU, Add (identity and projection shortcuts), Concatenate, "
                      "GlobalAveragePooling2D"),
    "dscnn": _Family(_dscnn, CNN_RECIPES, ("int8", "qat"), True,
                     "DS-CNN keyword spotting (49x10x1): Conv2D+BN+ReLU, DepthwiseConv2D+BN+ReLU, 1x1 Conv2D+BN+ReLU"),
    "conv1d": _Family(_sequence_model("conv1d"), (*FLOAT_RECIPES, "int8", "int16x8"), ("int8",), True,
                      "Conv1D over 8 time steps (EXPAND_DIMS/CONV_2D/RESHAPE in TFLite); QAT cannot wrap Conv1D"),
    "lstm": _Family(_sequence_model("lstm"), FLOAT_RECIPES, (), False,
                    "Keras 3 LSTM: a while loop in the graph", probe=("int8",)),
    "gru": _Family(_sequence_model("gru"), FLOAT_RECIPES, (), False,
                   "Keras 3 GRU: a while loop in the graph", probe=("int8",)),
    "lstm_h5": _Family(_lstm_h5, FLOAT_RECIPES, (), False,
                       "tf_keras LSTM in .h5: fused to UNIDIRECTIONAL_SEQUENCE_LSTM, with variable (state) tensors",
                       probe=("int8",)),
    "two_io": _Family(_two_io, CNN_RECIPES, ("int8", "qat"), True,
                      "two inputs (pixels, features) and two outputs (digit, above_four), named so that sorting "
                      "reverses both orders"),
    "attention": _Family(_sequence_model("attention"), (*FLOAT_RECIPES, "int8"), (), False,
                         "one transformer block: MultiHeadAttention, LayerNormalization, residual Add"),
    "savedmodel_tf": _Family(_savedmodel_tf, (*FLOAT_RECIPES, "int8", "int16x8"), ("int8",), True,
                             "tf.saved_model.save of a tf_keras CNN: a graph without Keras metadata (no QAT)"),
    "savedmodel_keras2": _Family(_savedmodel_keras2, CNN_RECIPES, ("int8", "qat"), True,
                                 "tf_keras model.save(dir): a SavedModel with keras_metadata.pb, so QAT applies"),
    "savedmodel_export": _Family(_savedmodel_export, (*FLOAT_RECIPES, "int8", "int16x8"), ("int8",), True,
                                 "Keras 3 model.export(): a serving-only SavedModel (no layers for QAT)"),
}


# -- using the zoo: the plain converter a user would write, and one way to score any .tflite -------------

def raw_convert(z: ZooModel, recipe: str, tmp: Path) -> bytes:
    """tf.lite.TFLiteConverter as a user writes it, for the recipe's equivalent settings (not qat).

    A Keras 3 model goes through ``model.export()`` and ``from_saved_model`` (``from_keras_model``
    does not work with Keras 3), a tf_keras model through ``from_keras_model``, a SavedModel through
    ``from_saved_model``. float16: DEFAULT + float16; dynamic: DEFAULT; int8: DEFAULT + a
    representative dataset of the family's calibration samples, default supported ops (float I/O);
    int16x8: that with EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8.
    """
    import tensorflow as tf

    if recipe not in ("float32", "float16", "dynamic", "int8", "int16x8"):
        raise ValueError(f"no plain-converter equivalent of recipe {recipe!r}")
    if z.source == "savedmodel":
        converter = tf.lite.TFLiteConverter.from_saved_model(str(z.path))
    elif z.source == "h5":
        import tf_keras

        converter = tf.lite.TFLiteConverter.from_keras_model(tf_keras.models.load_model(z.path, compile=False))
    else:
        import keras

        keras.saving.load_model(z.path, compile=False).export(str(tmp / "export"), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "export"))
    if recipe != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if recipe in ("int8", "int16x8"):
        calib = dict(np.load(z.calib))
        n = len(next(iter(calib.values())))

        def representative() -> Any:
            for i in range(n):
                if len(z.inputs) == 1:
                    yield [calib["x"][i : i + 1]]
                else:
                    yield {name: calib[name][i : i + 1] for name in z.inputs}

        converter.representative_dataset = representative
    if recipe == "int16x8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return bytes(converter.convert())


def accuracy(flatbuffer: bytes, z: ZooModel, output: str | None = None, data: Path | None = None) -> tuple[float, str]:
    """Top-1 of a .tflite on the test split with LiteRT, scoring an output found by name.

    ``output`` defaults to the source's first output; a plain converter's Keras 3 export names
    its outputs output_0, output_1, ... in the source's order, so that name stands in for it.
    Returns (accuracy, the output name scored).
    """
    from edgeship.device_agent.evaluate import evaluate, signature_io
    from edgeship.device_agent.runtime import load_runtime

    interpreter = load_runtime().interpreter(flatbuffer)
    _, outs = signature_io(interpreter)
    names = [n for n, _ in outs]
    wanted = output or z.outputs[0]
    fallback = f"output_{z.outputs.index(wanted)}" if wanted in z.outputs else None
    target = wanted if wanted in names else fallback if fallback in names else None
    if target is None:
        raise ValueError(f"{z.family}: the model has no output {wanted!r} (outputs: {', '.join(names)})")
    arrays = dict(np.load(data or z.test))
    features = {k: v for k, v in arrays.items() if not k.startswith("y")}
    labels = arrays[f"y:{wanted}"] if f"y:{wanted}" in arrays else arrays["y"]
    result = evaluate(interpreter, features, labels, output=target)
    return float(result.accuracy or 0.0), target


def build(family: str, out: Path, data: dict[str, np.ndarray] | None = None) -> ZooModel:
    """Train one family into out/<family>/ (or reuse what an earlier build left there)."""
    if family not in FAMILIES:
        raise KeyError(f"no zoo family {family!r}; have {', '.join(FAMILIES)}")
    folder = Path(out) / family
    meta = folder / "zoo.json"
    if meta.exists():
        return ZooModel.from_json(json.loads(meta.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    spec = FAMILIES[family]
    _seed()
    start = time.perf_counter()
    path, source, inputs, outputs, acc = spec.build(folder, data if data is not None else digits_split())
    entry = ZooModel(family=family, path=path, source=source, train=folder / "train.npz", test=folder / "test.npz",
                     calib=folder / "calib.npz", recipes=spec.recipes, fully_integer=spec.fully_integer,
                     int8_friendly=spec.int8_friendly, inputs=inputs, outputs=outputs, float_accuracy=acc,
                     train_seconds=round(time.perf_counter() - start, 2), probe=spec.probe, exercises=spec.exercises)
    meta.write_text(json.dumps(entry.to_json(), indent=2) + "\n")
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the model zoo (trains each family on digits).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args(argv)
    data = digits_split()
    start = time.perf_counter()
    for name in args.families:
        z = build(name, args.out, data)
        sys.stdout.write(f"{z.family:<18} {z.float_accuracy * 100:6.2f}%  {z.train_seconds:6.1f}s  {z.path}\n")
    sys.stdout.write(f"total {time.perf_counter() - start:.1f}s\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
