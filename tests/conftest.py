"""Shared fixtures: the real digits example, the model zoo and a two-input/two-output SavedModel, built once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
EDGESHIP = Path(sys.executable).parent / "edgeship"


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example, trained by the same script `make demo` runs."""
    out = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def convert_digits(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., object]:
    """Convert the digits model with a recipe (cached per recipe/io/batch), evaluating on the test split."""
    from converters.convert import convert
    from converters.recipe import Recipe

    cache: dict[tuple[str, str, int], object] = {}
    root = tmp_path_factory.mktemp("bundles")

    def run(recipe: str, io: str | None = None, batch: int = 1) -> object:
        key = (recipe, io or "", batch)
        if key not in cache:
            r = Recipe.from_name(recipe, io=io, calibration=digits / "train.npz", train=digits / "train.npz")
            cache[key] = convert(digits / "digits.keras", r, root / f"{recipe}-{io}-{batch}", batch=batch,
                                 eval_data=digits / "test.npz")
        return cache[key]

    return run


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], object]:
    """family name -> tests.zoo.ZooModel, trained on first use (tests/zoo.py) and kept for the session."""
    from tests import zoo as zoo_module

    root = tmp_path_factory.mktemp("zoo")
    data: dict[str, np.ndarray] = {}

    def get(family: str) -> object:
        if not data:
            data.update(zoo_module.digits_split())
        return zoo_module.build(family, root, data)

    return get


@pytest.fixture(scope="session")
def two_io_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tf.Module SavedModel with a signature 'predict' of two inputs and two outputs."""
    import tensorflow as tf

    class TwoHeads(tf.Module):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.wa = tf.Variable(rng.normal(size=(16, 32)).astype(np.float32))
            self.wb = tf.Variable(rng.normal(size=(8, 32)).astype(np.float32))
            self.w1 = tf.Variable(rng.normal(size=(32, 10)).astype(np.float32))
            self.w2 = tf.Variable(rng.normal(size=(32, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="features"),
                                      tf.TensorSpec([None, 8], tf.float32, name="context")])
        def predict(self, features: tf.Tensor, context: tf.Tensor) -> dict[str, tf.Tensor]:
            hidden = tf.nn.relu(tf.matmul(features, self.wa) + tf.matmul(context, self.wb))
            return {"scores": tf.nn.softmax(tf.matmul(hidden, self.w1)), "embedding": tf.matmul(hidden, self.w2)}

    module = TwoHeads()
    path = tmp_path_factory.mktemp("savedmodel") / "two_heads"
    tf.saved_model.save(module, str(path), signatures={"predict": module.predict})
    rng = np.random.default_rng(1)
    np.savez(path.parent / "calib.npz", features=rng.normal(size=(100, 16)).astype(np.float32),
             context=rng.normal(size=(100, 8)).astype(np.float32))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `edgeship` command, as a user runs it (`env`: variables added to this process's)."""
    return subprocess.run([str(EDGESHIP), *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, **env} if env else None)
