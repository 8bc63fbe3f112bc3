"""QAT on the model families users bring: BatchNormalization (folded), tf_keras files, two outputs, custom layers.

Every model here is tiny and trained for a few epochs on scikit-learn's digits (resized where
the family needs another input shape), once per module; every conversion is real.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.convert import ConversionResult, convert
from edgeship.converters.recipe import Recipe
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import DatasetError, UnsupportedLayerError
from tests.conftest import run_cli

pytestmark = pytest.mark.convert  # every test trains (QAT) a Keras model
FOLDED_BN_OPS = {"MUL", "ADD", "SUB"}  # what an unfolded BatchNormalization leaves in a TFLite graph


def _digits(shape: tuple[int, ...] = (8, 8, 1), limit: int | None = None) -> tuple[np.ndarray, ...]:
    """The digits split 80/20 (seeded), resized to `shape` (channels repeated) when it is not 8x8x1.

    `limit` keeps only that many training samples (the test split stays whole), for the costlier families.
    """
    import tensorflow as tf
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    if shape != (8, 8, 1):
        x = np.repeat(tf.image.resize(x, shape[:2]).numpy(), shape[2], axis=-1).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    train = order[:cut][:limit]
    return x[train], y[train], x[order[cut:]], y[order[cut:]]


def _save_data(folder: Path, shape: tuple[int, ...] = (8, 8, 1), limit: int | None = None) -> tuple[Path, Path]:
    xtr, ytr, xte, yte = _digits(shape, limit)
    np.savez(folder / "train.npz", x=xtr, y=ytr)
    np.savez(folder / "test.npz", x=xte, y=yte)
    return folder / "train.npz", folder / "test.npz"


def _train(k: Any, model: Any, epochs: int, shape: tuple[int, ...] = (8, 8, 1), limit: int | None = None) -> None:
    """Fit `model` with the Keras (keras or tf_keras) that built it."""
    xtr, ytr, _, _ = _digits(shape, limit)
    model.compile(k.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    model.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=0)


def _conv_bn_relu6(k: Any) -> Any:
    layers = k.layers
    return k.Sequential([
        k.Input(shape=(8, 8, 1), name="image"),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(6.0, name="relu6"),
        layers.Flatten(name="flat"),
        layers.Dense(10, activation="softmax", name="probs"),
    ], name="conv_bn")


def _depthwise_bn(k: Any) -> Any:
    layers = k.layers
    return k.Sequential([
        k.Input(shape=(8, 8, 1), name="image"),
        layers.Conv2D(8, 1, activation="relu", name="expand"),
        layers.DepthwiseConv2D(3, padding="same", name="dw"),
        layers.BatchNormalization(name="dw_bn"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(10, activation="softmax", name="probs"),
    ], name="depthwise_bn")


def _ds_cnn() -> Any:
    """A DS-CNN keyword-spotting model (49x10x1): Conv+BN+ReLU, two depthwise-separable blocks, pool, Dense."""
    import keras

    layers = keras.layers
    inp = keras.Input(shape=(49, 10, 1), name="mfcc")
    h = layers.Conv2D(16, (10, 4), strides=2, padding="same", use_bias=False, name="conv0")(inp)
    h = layers.ReLU(name="relu0")(layers.BatchNormalization(name="bn0")(h))
    for b in range(2):
        h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{b}")(h)
        h = layers.ReLU(name=f"dw_relu{b}")(layers.BatchNormalization(name=f"dw_bn{b}")(h))
        h = layers.Conv2D(16, 1, use_bias=False, name=f"pw{b}")(h)
        h = layers.ReLU(name=f"pw_relu{b}")(layers.BatchNormalization(name=f"pw_bn{b}")(h))
    out = layers.Dense(10, activation="softmax", name="probs")(layers.GlobalAveragePooling2D(name="gap")(h))
    return keras.Model(inp, out, name="ds_cnn")


def _mobilenet_v2() -> Any:
    import keras

    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    for layer in model.layers:  # keras.applications' 0.999 leaves the moving statistics unset after a short run
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A trained model file per name (built once per module), with train.npz/test.npz beside it."""
    import keras
    import tf_keras

    root = tmp_path_factory.mktemp("families")
    cache: dict[str, Path] = {}
    # name: (builder, file, epochs, input shape, training samples)
    builders: dict[str, tuple[Callable[[], Any], str, int, tuple[int, ...], int | None]] = {
        "conv_bn": (lambda: _conv_bn_relu6(keras), "m.keras", 3, (8, 8, 1), None),
        "depthwise_bn": (lambda: _depthwise_bn(keras), "m.keras", 3, (8, 8, 1), None),
        "tfk_h5": (lambda: _conv_bn_relu6(tf_keras), "m.h5", 3, (8, 8, 1), None),
        "tfk_savedmodel": (lambda: _conv_bn_relu6(tf_keras), "saved", 3, (8, 8, 1), None),
        "ds_cnn": (_ds_cnn, "m.keras", 15, (49, 10, 1), None),
        "mobilenet_v2": (_mobilenet_v2, "m.keras", 10, (32, 32, 3), 640),
    }

    def get(name: str) -> Path:
        if name not in cache:
            build, file, epochs, shape, limit = builders[name]
            folder = root / name
            folder.mkdir()
            k = tf_keras if file != "m.keras" else keras
            k.utils.set_random_seed(0)
            model = build()
            _train(k, model, epochs, shape, limit)
            model.save(folder / file)
            _save_data(folder, shape, limit)
            cache[name] = folder / file
        return cache[name]

    return get


def _convert(model: Path, recipe: Recipe, out: Path, **kw: Any) -> tuple[ConversionResult, TFLiteModel]:
    result = convert(model, recipe, out, eval_data=model.parent / "test.npz", **kw)
    return result, TFLiteModel.from_path(result.model_path)


def _ops(model: TFLiteModel) -> list[str]:
    return [u.name for u in model.op_uses]


@pytest.mark.parametrize("name", ["conv_bn", "depthwise_bn"])
def test_qat_takes_batchnorm_and_folds_it(made: Callable[[str], Path], tmp_path: Path, name: str) -> None:
    model = made(name)
    _, f32 = _convert(model, Recipe.float32(), tmp_path / "f32")
    result, qat = _convert(model, Recipe.quantization_aware(model.parent / "train.npz", epochs=1), tmp_path / "qat")
    assert not FOLDED_BN_OPS & set(_ops(f32)), _ops(f32)  # the float conversion folds BN into the conv ...
    assert _ops(qat) == _ops(f32)  # ... and so does QAT: the same ops, no MUL/ADD left behind
    assert qat.fully_integer
    acc = result.manifest.accuracy
    assert acc is not None and acc.model >= acc.float_model - 0.02, acc


def test_unsupported_layers_are_asked_after_the_layout_transform() -> None:
    import tf_keras

    from edgeship.converters import qat
    from edgeship.converters.optimize import qat_scheme

    layers = tf_keras.layers

    def model(shape: tuple[int, ...], *stack: Any) -> Any:
        inp = tf_keras.Input(shape)
        h = inp
        for layer in stack:
            h = layer(h)
        return tf_keras.Model(inp, h)

    conv_bn = model((8, 8, 1), layers.Conv2D(4, 3, name="c"), layers.BatchNormalization(name="bn"),
                    layers.ReLU(6.0, name="r"), layers.Flatten(), layers.Dense(3, name="d"),
                    layers.BatchNormalization(name="dense_bn"))
    for scheme in (None, qat_scheme(True, False), qat_scheme(False, True), qat_scheme(True, True)):
        assert qat.unsupported_layers(conv_bn, scheme) == []
    # Leaving the conv in float unpairs its BN, which then has no QuantizeConfig of its own.
    assert qat.unsupported_layers(conv_bn, None, keep_float={"c"}) == ["bn (BatchNormalization)"]
    lone_bn = model((8, 8, 1), layers.BatchNormalization(name="first_bn"), layers.Conv2D(4, 3), layers.Flatten())
    assert qat.unsupported_layers(lone_bn) == ["first_bn (BatchNormalization)"]
    c1d = model((16, 2), layers.Conv1D(4, 3, name="c1d"), layers.BatchNormalization(name="c1d_bn"), layers.Flatten())
    assert qat.unsupported_layers(c1d) == ["c1d (Conv1D)", "c1d_bn (BatchNormalization)"]
    lstm = model((8, 2), layers.LSTM(4, name="lstm"), layers.Dense(2))
    assert qat.unsupported_layers(lstm) == ["lstm (LSTM)"]


def test_leave_unsupported_keeps_conv1d_float_and_still_folds_bn_elsewhere(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    net = keras.Sequential([
        keras.Input(shape=(16, 2), name="signal"),
        layers.Conv1D(4, 3, activation="relu", name="c1d"),
        layers.Reshape((14, 4, 1), name="as_image"),
        layers.Conv2D(4, 3, use_bias=False, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
        layers.Flatten(name="flat"),
        layers.Dense(3, activation="softmax", name="probs"),
    ])
    net.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.normal(size=(96, 16, 2)).astype(np.float32), y=rng.integers(0, 3, 96))
    train = tmp_path / "train.npz"
    with pytest.raises(UnsupportedLayerError, match=r"^leave_unsupported_float: QAT cannot wrap these layers: c1d \(Conv1D\);") as err:
        convert(tmp_path / "m.keras", Recipe.quantization_aware(train, epochs=1), tmp_path / "b")
    assert err.value.layers == ["c1d (Conv1D)"]  # the BN after the Conv2D is no longer on the list
    result = convert(tmp_path / "m.keras", Recipe.quantization_aware(train, epochs=1, leave_unsupported_float=True),
                     tmp_path / "b")
    tfl = TFLiteModel.from_path(result.model_path)
    assert tfl.fully_integer
    assert not FOLDED_BN_OPS & set(_ops(tfl)), _ops(tfl)


@pytest.mark.parametrize("name", ["tfk_h5", "tfk_savedmodel"])
def test_qat_on_tf_keras_files(made: Callable[[str], Path], tmp_path: Path, name: str) -> None:
    model = made(name)
    result, tfl = _convert(model, Recipe.quantization_aware(model.parent / "train.npz", epochs=1), tmp_path / "b")
    assert tfl.fully_integer
    assert [n for n, _ in tfl.outputs] == ["probs"]
    assert not FOLDED_BN_OPS & set(_ops(tfl)), _ops(tfl)
    acc = result.manifest.accuracy
    assert acc is not None and acc.float_model > 0.5 and acc.model >= acc.float_model - 0.02, acc


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-output Keras 3 model: the digit (10-way) and its parity (2-way), with labels y:digit and y:parity."""
    import keras

    folder = tmp_path_factory.mktemp("two_heads")
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(8, 8, 1), name="image")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Flatten(name="flat")(inp))
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    parity = keras.layers.Dense(2, name="parity")(h)  # logits
    model = keras.Model(inp, [digit, parity])
    xtr, ytr, xte, yte = _digits()
    model.compile(keras.optimizers.Adam(2e-3), ["sparse_categorical_crossentropy",
                                                keras.losses.SparseCategoricalCrossentropy(from_logits=True)])
    model.fit(xtr, [ytr, ytr % 2], epochs=5, batch_size=32, verbose=0)
    model.save(folder / "m.keras")
    np.savez(folder / "train.npz", x=xtr, **{"y:digit": ytr, "y:parity": ytr % 2})
    np.savez(folder / "plain_y.npz", x=xtr, y=ytr)
    np.savez(folder / "test.npz", x=xte, y=yte, parity=yte % 2)
    return folder


def _head_accuracy(result: ConversionResult, folder: Path) -> dict[str, float]:
    from edgeship.device_agent.evaluate import evaluate
    from edgeship.device_agent.runtime import load_runtime

    test = np.load(folder / "test.npz")
    out = evaluate(load_runtime().interpreter(result.model_path.read_bytes()), {"image": test["x"]}).outputs
    return {"digit": float(np.mean(out["digit"].argmax(1) == test["y"])),
            "parity": float(np.mean(out["parity"].argmax(1) == test["parity"]))}


def test_two_outputs_train_each_head_on_its_labels(two_heads: Path, tmp_path: Path) -> None:
    import keras

    ref = keras.saving.load_model(two_heads / "m.keras")
    test = np.load(two_heads / "test.npz")
    digit, parity = ref.predict(test["x"], verbose=0)
    float_acc = {"digit": float(np.mean(digit.argmax(1) == test["y"])),
                 "parity": float(np.mean(parity.argmax(1) == test["parity"]))}
    result = convert(two_heads / "m.keras", Recipe.quantization_aware(two_heads / "train.npz", epochs=2),
                     tmp_path / "qat")
    assert TFLiteModel.from_path(result.model_path).fully_integer
    got = _head_accuracy(result, two_heads)
    for head in ("digit", "parity"):  # each head kept what it had: both were fine-tuned on their own labels
        assert got[head] >= float_acc[head] - 0.02, (head, got, float_acc)

    # Pruning shares the fine-tuning, so it takes the same per-output labels (and trains both heads on them).
    pruned = convert(two_heads / "m.keras", Recipe.from_name("float32", train=two_heads / "train.npz", sparsity=0.5,
                                                             prune_block=1, epochs=2), tmp_path / "pruned")
    heads = _head_accuracy(pruned, two_heads)
    assert heads["digit"] >= 0.6 and heads["parity"] >= 0.75, heads  # chance: 0.1 and 0.5


def test_two_outputs_without_their_labels_is_one_line(two_heads: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"2 outputs \(digit, parity\).*keys y:digit, y:parity"):
        convert(two_heads / "m.keras", Recipe.quantization_aware(two_heads / "plain_y.npz"), tmp_path / "b")
    proc = run_cli("convert", str(two_heads / "m.keras"), "-r", "qat", "--train", str(two_heads / "plain_y.npz"),
                   "-o", str(tmp_path / "c"), "-q")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode not in (0, 70) and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("edgeship: error: ") and "y:digit, y:parity" in lines[0]
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("name", "epochs"), [("ds_cnn", 2), ("mobilenet_v2", 1)])
def test_qat_is_within_half_a_point_of_float(made: Callable[[str], Path], tmp_path: Path, name: str,
                                             epochs: int) -> None:
    model = made(name)
    result, tfl = _convert(model, Recipe.quantization_aware(model.parent / "train.npz", epochs=epochs), tmp_path / "b")
    acc = result.manifest.accuracy
    assert acc is not None and acc.float_model >= 0.6, acc  # a float model worth quantizing
    assert acc.model >= acc.float_model - 0.005, f"{name}: qat {acc.model:.4f} vs float {acc.float_model:.4f}"
    assert tfl.fully_integer
    f32 = TFLiteModel.from_path(convert(model, Recipe.float32(), tmp_path / "f32").model_path)
    counts = {name: {u.name: u.count for u in m.op_uses} for name, m in (("qat", tfl), ("float32", f32))}
    assert "MUL" not in counts["qat"] and "SUB" not in counts["qat"], counts  # every BN folded ...
    assert counts["qat"].get("ADD") == counts["float32"].get("ADD"), counts  # ... MobileNetV2's ADDs are residuals
    assert counts["qat"]["CONV_2D"] == counts["float32"]["CONV_2D"], counts


def test_debug_quant_and_convert_agree_on_fully_integer(made: Callable[[str], Path], tmp_path: Path) -> None:
    from edgeship.converters.quantdebug import debug_quantization

    model = made("conv_bn")
    report = debug_quantization(model, model.parent / "train.npz", model.parent / "test.npz", trials=0)
    for recipe in (Recipe.int8(model.parent / "train.npz"), Recipe.int8(model.parent / "train.npz", io="float32"),
                   Recipe.quantization_aware(model.parent / "train.npz", epochs=1)):
        result = convert(model, recipe, tmp_path / recipe.name / recipe.io)
        facts = TFLiteModel.from_path(result.model_path).integer_facts()
        assert result.manifest.integer.model_dump() == facts
        if recipe.io == "int8":
            assert facts == report.integer == {"fully_integer": True, "float_ops": [], "io_float": False,
                                               "float_op_tensors": [], "activations": "int8"}
        else:
            assert facts == {"fully_integer": False, "float_ops": [], "io_float": True, "float_op_tensors": [],
                             "activations": "int8"}
    assert report.result_document()["result"]["integer"] == report.integer


CUSTOM_LAYER = '''
import keras


@keras.saving.register_keras_serializable(package="edgeship_test")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def test_custom_layers_need_their_module(tmp_path: Path) -> None:
    import importlib.util

    from edgeship.device_agent.evaluate import evaluate
    from edgeship.device_agent.runtime import load_runtime

    (tmp_path / "user_layers.py").write_text(CUSTOM_LAYER)
    spec = importlib.util.spec_from_file_location("user_layers_for_saving", tmp_path / "user_layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import keras

    model = keras.Sequential([keras.Input(shape=(4,), name="x"), module.Scale(3.0, name="scale"),
                              keras.layers.Dense(2, name="out")])
    model.save(tmp_path / "custom.keras")
    # Saving registered the class in this process; the CLI runs in a fresh one, as a user's would.
    proc = run_cli("convert", str(tmp_path / "custom.keras"), "-r", "float32", "-o", str(tmp_path / "b"), "-q")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode not in (0, 70) and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: "), proc.stderr
    assert "Scale" in lines[0] and "--custom-objects" in lines[0]
    assert not (tmp_path / "b").exists()

    for spec_arg, cwd in ((str(tmp_path / "user_layers.py"), None), ("user_layers", tmp_path)):
        out = tmp_path / f"b-{cwd is not None}"
        proc = run_cli("convert", str(tmp_path / "custom.keras"), "-r", "float32", "-o", str(out), "-q",
                       "--custom-objects", spec_arg, "--json", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
        interp = load_runtime().interpreter((out / "model.tflite").read_bytes())
        got = evaluate(interp, {"x": x}).outputs["out"]
        np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
