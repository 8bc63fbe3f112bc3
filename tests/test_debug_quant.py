"""The quantization debugger (issue 5) on a model built to have one badly quantizable layer; real TFLite, no mocks.

The model is a small digits MLP (flatten -> fc1 -> fc2 -> probs) trained here, then given
an outlier: fc1 gets one extra unit that is always 0 (zero weights, bias -1, ReLU), and
fc2 gives that unit a weight of 1000 in every output column. The float model is unchanged
(1000 x 0), but int8 weight quantization sets fc2's weight scale from the 1000, so its real
weights round to zero: fc2 is the one layer whose int8 output is far worse than rounding.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.manifest import Manifest
from tests.conftest import ROOT, run_cli
from tests.test_report import rendered_images

pytestmark = pytest.mark.convert  # outlier trains a digits MLP; every test converts or debugs it

BAD = "fc2"  # the layer built to quantize badly
OUTLIER_WEIGHT = 1000.0


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits example's own split (examples/digits/train.py), without training its CNN."""
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_split()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def outlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with outlier.keras, train.npz and test.npz."""
    from edgeship.converters._tf import tensorflow

    tensorflow()
    import keras

    out = tmp_path_factory.mktemp("outlier")
    x_train, x_test, y_train, y_test = _digits_split()
    keras.utils.set_random_seed(0)

    def mlp(hidden1: int) -> Any:
        return keras.Sequential([
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(hidden1, activation="relu", name="fc1"),
            keras.layers.Dense(32, activation="relu", name=BAD),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ], name="outlier")

    base = mlp(32)
    base.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    base.fit(x_train, y_train, epochs=12, batch_size=32, verbose=0)
    model = mlp(33)
    w1, b1 = base.get_layer("fc1").get_weights()
    model.get_layer("fc1").set_weights([np.concatenate([w1, np.zeros((w1.shape[0], 1), np.float32)], axis=1),
                                        np.append(b1, np.float32(-1.0))])  # the extra unit: always ReLU(-1) = 0
    w2, b2 = base.get_layer(BAD).get_weights()
    model.get_layer(BAD).set_weights([np.concatenate([w2, np.full((1, w2.shape[1]), OUTLIER_WEIGHT, np.float32)]), b2])
    model.get_layer("probs").set_weights(base.get_layer("probs").get_weights())
    same = np.abs(model.predict(x_test, verbose=0) - base.predict(x_test, verbose=0)).max()
    assert same < 1e-4, f"the outlier must not change the float model (max diff {same})"
    model.save(out / "outlier.keras")
    np.savez(out / "train.npz", x=x_train, y=y_train)
    np.savez(out / "test.npz", x=x_test, y=y_test)
    return out


@pytest.fixture(scope="module")
def debug_doc(outlier: Path) -> dict[str, Any]:
    """`edgeship debug-quant --json`, with its result document written to outlier/debug.json."""
    proc = run_cli("debug-quant", str(outlier / "outlier.keras"), "--calib", str(outlier / "train.npz"),
                   "--eval", str(outlier / "test.npz"), "--try-float", "2", "--out", str(outlier / "debug.json"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.fixture(scope="module")
def plain_int8(outlier: Path) -> Manifest:
    """The same model through the ordinary int8 recipe: the accuracy --keep-float must win back."""
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

    recipe = Recipe.int8(outlier / "train.npz")
    return convert(outlier / "outlier.keras", recipe, outlier / "plain-int8", eval_data=outlier / "test.npz").manifest


def _convert_keep_float(outlier: Path, name: str, keep: str, *extra: str) -> Manifest:
    proc = run_cli("convert", str(outlier / "outlier.keras"), "--recipe", "int8", "--calib", str(outlier / "train.npz"),
                   "--keep-float", keep, "--eval", str(outlier / "test.npz"), "--out", str(outlier / name), *extra,
                   "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = Manifest.load(outlier / name)
    assert json.loads(proc.stdout)["manifest"] == manifest.model_dump(mode="json")
    return manifest


@pytest.fixture(scope="module")
def kept_auto(outlier: Path) -> Manifest:
    return _convert_keep_float(outlier, "keep-auto", "auto:1")


def test_debugger_ranks_the_outlier_layer_worst(debug_doc: dict[str, Any], outlier: Path) -> None:
    assert debug_doc["kind"] == "debug-quant" and debug_doc["schema_version"] == 1
    assert json.loads((outlier / "debug.json").read_text()) == debug_doc  # --out holds the document --json printed
    layers = debug_doc["result"]["layers"]
    ratios = [la["rmse_over_scale"] for la in layers]
    assert ratios == sorted(ratios, reverse=True), "layers must come worst first"
    worst, rest = layers[0], layers[1:]
    assert worst["layer"] == BAD and f"/{BAD}" in worst["node"] and worst["op"] == "FULLY_CONNECTED", worst
    assert worst["rmse_over_scale"] > 10 * max(la["rmse_over_scale"] for la in rest), ratios
    # RMSE/scale as the TFLite guide defines it: sqrt(MSE) / scale, ~1/sqrt(12) for a layer that only rounds.
    for la in layers:
        assert la["rmse_over_scale"] == pytest.approx(la["rmse"] / la["scale"], rel=1e-6)
    fc1 = next(la for la in layers if la["layer"] == "fc1")
    assert 0.15 < fc1["rmse_over_scale"] < 0.6, fc1
    assert worst["max_abs_error"] >= worst["mean_abs_error"] > 0


def test_int8_loses_accuracy_that_keeping_the_worst_layer_float_wins_back(debug_doc: dict[str, Any]) -> None:
    result = debug_doc["result"]
    assert result["float_accuracy"] > 0.9, result["float_accuracy"]
    assert result["accuracy"] < result["float_accuracy"] - 0.3, "int8 should lose a lot on this model"
    assert result["agreement"]["argmax_agreement"] < 0.7
    first = result["trials"][0]
    assert first["kept"] == 1 and first["layers"] == [result["layers"][0]["node"]]
    assert first["size"] > debug_doc["model_size"]
    assert first["accuracy"] - result["accuracy"] >= 0.5 * (result["float_accuracy"] - result["accuracy"])


def test_debugger_measures_the_model_convert_makes(debug_doc: dict[str, Any], plain_int8: Manifest) -> None:
    acc = plain_int8.accuracy
    assert acc is not None and plain_int8.float_fallback is None and plain_int8.integer.fully_integer
    assert debug_doc["result"]["accuracy"] == pytest.approx(acc.model)
    assert debug_doc["result"]["float_accuracy"] == pytest.approx(acc.float_model)


def test_keep_float_auto_recovers_at_least_half_the_lost_accuracy(kept_auto: Manifest, plain_int8: Manifest,
                                                                   debug_doc: dict[str, Any]) -> None:
    fallback = kept_auto.float_fallback
    assert fallback is not None and fallback.requested == "auto:1"
    assert fallback.layers == [debug_doc["result"]["layers"][0]["node"]]
    assert fallback.size_cost > 0 and fallback.size_cost == kept_auto.size - fallback.int8_size
    assert not kept_auto.integer.fully_integer and "FULLY_CONNECTED" in " ".join(kept_auto.integer.float_ops)
    assert [t.dtype for t in kept_auto.inputs + kept_auto.outputs] == ["int8", "int8"]  # --io int8 still holds
    kept, base = kept_auto.accuracy, plain_int8.accuracy
    assert kept is not None and base is not None
    lost = base.float_model - base.model
    assert lost > 0.3, f"the plain int8 model should lose accuracy (lost {lost:.3f})"
    assert kept.model - base.model >= 0.5 * lost, f"keep-float {kept.model:.3f}, int8 {base.model:.3f}, float {base.float_model:.3f}"


def test_keep_float_by_layer_name_with_uint8_io(outlier: Path, kept_auto: Manifest) -> None:
    named = _convert_keep_float(outlier, "keep-named", BAD, "--io", "uint8")
    assert named.float_fallback is not None and kept_auto.float_fallback is not None
    assert named.float_fallback.requested == BAD and named.float_fallback.layers == kept_auto.float_fallback.layers
    assert [t.dtype for t in named.inputs + named.outputs] == ["uint8", "uint8"]
    assert named.accuracy is not None and named.accuracy.model >= named.accuracy.float_model - 0.02


def test_unknown_layer_is_a_one_line_usage_error_listing_the_layers(outlier: Path, tmp_path: Path) -> None:
    proc = run_cli("convert", str(outlier / "outlier.keras"), "--recipe", "int8", "--calib", str(outlier / "train.npz"),
                   "--keep-float", "nosuchlayer", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgeship: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'nosuchlayer'" in lines[0] and all(name in lines[0] for name in ("fc1", BAD, "probs"))
    assert not (tmp_path / "b").exists()


def test_int8_only_board_refuses_a_keep_float_bundle(outlier: Path, kept_auto: Manifest, plain_int8: Manifest) -> None:
    from edgeship.sdk.catalogue import resolve
    from edgeship.sdk.compat import check

    spec = resolve("emu-mcu").spec
    assert spec.constraints.int8_only
    problems = check(kept_auto, spec)
    assert [p.code for p in problems].count("not_int8") == 1
    message = next(p.message for p in problems if p.code == "not_int8")
    assert "keep_float auto:1" in message and BAD in message and "keeps 1 layer" in message
    assert "not_int8" not in [p.code for p in check(plain_int8, spec)]  # the fully int8 model is fine
    proc = run_cli("check", str(outlier / "keep-auto"), "--board", "emu-mcu")
    assert proc.returncode == 1 and "int8-only" in proc.stderr and "without keep_float" in proc.stderr, proc.stderr
    ok = run_cli("check", str(outlier / "plain-int8"), "--board", "emu-mcu", "--json")
    assert "not_int8" not in [p["code"] for p in json.loads(ok.stdout)["problems"]], ok.stdout


def test_report_renders_the_debug_result_with_its_per_layer_plot(debug_doc: dict[str, Any], outlier: Path,
                                                                  tmp_path: Path) -> None:
    html, md = tmp_path / "report.html", tmp_path / "report.md"
    proc = run_cli("report", str(outlier / "debug.json"), "--html", str(html), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "## Quantization debugger" in text and f"| 1 | {BAD} | FULLY_CONNECTED |" in text
    assert "| host | int8 | debug-quant |" in text
    assert "Per-layer int8 error" in html.read_text()
    images, loaded = rendered_images(html, tmp_path)
    assert images == 1 and loaded == 1, (images, loaded)  # the per-layer error plot (no latency or confusion data)
