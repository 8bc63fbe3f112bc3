"""A tf.Module SavedModel with a named two-input/two-output signature, through every recipe and inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeship.converters.convert import convert
from edgeship.converters.recipe import Recipe
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import SignatureNotFoundError, UnsupportedLayerError
from tests.conftest import run_cli

RECIPES = {
    "float32": lambda calib: Recipe.float32(),
    "float16": lambda calib: Recipe.float16(),
    "dynamic": lambda calib: Recipe.dynamic(),
    "int8": lambda calib: Recipe.int8(calib),
    "int8-float-io": lambda calib: Recipe.int8(calib, io="float32"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_two_io_signature_converts_with_every_recipe(two_io_saved_model: Path, tmp_path: Path, name: str) -> None:
    calib = two_io_saved_model.parent / "calib.npz"
    result = convert(two_io_saved_model, RECIPES[name](calib), tmp_path / "b", signature="predict")
    model = TFLiteModel.from_path(result.model_path)
    assert sorted(n for n, _ in model.inputs) == ["context", "features"]
    assert sorted(n for n, _ in model.outputs) == ["embedding", "scores"]
    shapes = {n: t.shape for n, t in model.inputs}
    assert shapes == {"features": (1, 16), "context": (1, 8)}
    assert model.dynamic_tensors() == []
    if name == "int8":
        assert model.fully_integer

    # The converted model computes what the SavedModel computes.
    import tensorflow as tf

    from edgeship.device_agent.evaluate import evaluate
    from edgeship.device_agent.runtime import load_runtime

    data = dict(np.load(calib))
    ref = tf.saved_model.load(str(two_io_saved_model)).signatures["predict"](
        features=tf.constant(data["features"][:20]), context=tf.constant(data["context"][:20]))
    interp = load_runtime().interpreter(result.model_path.read_bytes())
    got = evaluate(interp, {k: v[:20] for k, v in data.items()}).outputs
    scores_ref = ref["scores"].numpy()
    error = np.abs(got["scores"] - scores_ref)
    if name in ("float32", "float16", "dynamic"):
        assert error.max() <= {"float32": 1e-4, "float16": 0.05, "dynamic": 0.1}[name]
    else:  # int8 activations: judge the typical error and the decisions, not the worst probability
        assert error.mean() <= 0.05
    assert np.mean(got["scores"].argmax(1) == scores_ref.argmax(1)) >= 0.8


def test_qat_on_a_graph_only_saved_model_says_what_it_needs(two_io_saved_model: Path, tmp_path: Path) -> None:
    calib = two_io_saved_model.parent / "calib.npz"
    np.savez(tmp_path / "train.npz", **dict(np.load(calib)), y=np.zeros(100, dtype=np.int64))
    with pytest.raises(UnsupportedLayerError, match=r"fine-tuning \(QAT, pruning, clustering\) needs Keras layers"):
        convert(two_io_saved_model, Recipe.quantization_aware(tmp_path / "train.npz"), tmp_path / "b",
                signature="predict")
    assert not (tmp_path / "b").exists()


def test_missing_signature_lists_the_ones_there(two_io_saved_model: Path, tmp_path: Path) -> None:
    with pytest.raises(SignatureNotFoundError, match="it has: predict"):
        convert(two_io_saved_model, Recipe.float32(), tmp_path / "b")


def test_inspect_shows_both_inputs_and_outputs(two_io_saved_model: Path, tmp_path: Path) -> None:
    proc = run_cli("inspect", str(two_io_saved_model), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    sig = next(s for mg in info["meta_graphs"] for s in mg["signatures"] if s["key"] == "predict")
    assert [(t["name"], t["shape"], t["dtype"]) for t in sig["inputs"]] == [
        ("context", [None, 8], "float32"), ("features", [None, 16], "float32")]
    assert [t["name"] for t in sig["outputs"]] == ["embedding", "scores"]
    assert info["variables_bytes"] > 4 * (16 * 32 + 8 * 32 + 32 * 10 + 32 * 4)

    human = run_cli("inspect", str(two_io_saved_model))
    assert human.returncode == 0
    for name in ("features", "context", "scores", "embedding", "predict"):
        assert name in human.stdout

    result = convert(two_io_saved_model, Recipe.float32(), tmp_path / "b", signature="predict")
    tfl = json.loads(run_cli("inspect", str(result.model_path), "--json").stdout)
    assert sorted(t["name"] for t in tfl["inputs"]) == ["context", "features"]
    assert sorted(t["name"] for t in tfl["outputs"]) == ["embedding", "scores"]
