"""Shared fixtures: the real digits example, the model zoo and its conversions, a two-input/two-output SavedModel."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite never reads the developer's own settings: their boards file, default board and ssh config
# (tests of those features give their own). Set here, before any test, so subprocesses inherit it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="edgeship-tests-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], True)
os.environ["EDGESHIP_SSH_CONFIG"] = "none"
for _name in ("EDGESHIP_BOARD", "EDGESHIP_BOARDS", "SSH_AUTH_SOCK"):  # an ssh-agent must not log tests in
    os.environ.pop(_name, None)
ROOT = Path(__file__).resolve().parent.parent
EDGESHIP = Path(sys.executable).parent / "edgeship"

# The test tiers (docs/testing.md). These session fixtures train or convert a model with TensorFlow, so a
# test that uses one, even through another fixture, is in the `convert` tier. A tier marks its tests `slow`
# too: `pytest -m "not slow"` runs the fast tier, `make test` everything.
CONVERT_FIXTURES = frozenset({"digits", "convert_digits", "zoo", "converted", "two_io_saved_model"})
SLOW_TIERS = ("convert", "emulated", "install")


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CONVERT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.convert)
        if any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker(pytest.mark.slow)


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
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

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


# Zoo cells converted with the `edgeship` command instead of the library function (test_zoo.py).
CLI_CELLS = {("dscnn", "qat"), ("mobilenetv2", "int8"), ("lstm_h5", "float32"), ("savedmodel_tf", "int8"),
             ("two_io", "int8")}
QAT_GOAL = ("mobilenetv2", "dscnn")  # the QAT goal: within 0.5 point of float
QAT_QUICK_EPOCHS = 1  # QAT on the other families checks that it works, not the goal: one epoch keeps the suite short


class Converted:
    """One zoo cell's bundle: the manifest as edgeship wrote it and the flatbuffer's own account."""

    def __init__(self, z: Any, bundle: Path) -> None:
        from edgeship.converters.manifest import Manifest
        from edgeship.converters.tflite_model import TFLiteModel

        self.zoo = z
        self.bundle = bundle
        self.manifest = Manifest.load(bundle)
        self.raw_manifest = json.loads((bundle / "manifest.json").read_text())
        self.flatbuffer = (bundle / "model.tflite").read_bytes()
        self.model = TFLiteModel.from_bytes(self.flatbuffer)


@pytest.fixture(scope="session")
def converted(zoo: Callable[[str], Any], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Converted]:
    """(family, recipe) -> its bundle, converted once per session (test_zoo.py and test_zoo_boards.py share them);
    a failed conversion fails every test that asks for it."""
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

    root = tmp_path_factory.mktemp("zoo-bundles")
    cache: dict[tuple[str, str], Converted | BaseException] = {}

    def get(family: str, recipe: str) -> Converted:
        key = (family, recipe)
        if key not in cache:
            z = zoo(family)
            out = root / f"{family}-{recipe}"
            try:
                if key in CLI_CELLS:
                    data = (["--calib", str(z.calib)] if recipe in ("int8", "int16x8") else
                            ["--train", str(z.train)] if recipe == "qat" else [])
                    done = run_cli("convert", str(z.path), "-r", recipe, "-o", str(out), *data, "--eval", str(z.test), "-q")
                    if done.returncode != 0:
                        raise AssertionError(f"edgeship convert {family} -r {recipe} exited {done.returncode}: "
                                             f"{done.stderr.strip()[-600:]}")
                    assert done.stderr.count("Traceback") == 0
                else:
                    epochs = QAT_QUICK_EPOCHS if recipe == "qat" and family not in QAT_GOAL else None
                    convert(z.path, Recipe.from_name(recipe, calibration=z.calib, train=z.train, epochs=epochs), out,
                            eval_data=z.test)
                cache[key] = Converted(z, out)
            except Exception as exc:  # kept, so the other tests of this cell fail with the same error, fast
                cache[key] = exc
        found = cache[key]
        if isinstance(found, BaseException):
            raise found
        return found

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


def in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    """Run fn in a daemon thread; fail (not hang) if it does not finish within timeout; re-raise its error."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still blocked after {timeout} s (deadlock?)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def one_error_line(stderr: str) -> str:
    """The CLI's stderr holds exactly one `edgeship: error:` line and no traceback; other lines are warnings."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("edgeship: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert all(line.startswith(("edgeship: error:", "edgeship: WARNING:")) for line in lines), stderr
    return errors[0]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `edgeship` command, as a user runs it (`env`: variables added to this process's)."""
    return subprocess.run([str(EDGESHIP), *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, **env} if env else None)


def invoke_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `edgeship` command run in this process by click's CliRunner; returns what run_cli returns, without
    a process start and its imports (seconds each). For error paths where nothing about the process matters.

    A user's view still: the exit code, and stdout and stderr kept apart, each with what native code and child
    processes wrote to fd 1 and 2 (capture="fd"); the CLI's own logging set-up is applied, not pytest's. An
    exception the CLI lets through is raised here. The root logger, the CLI's paramiko level and os.environ are
    restored after. Tests of the process boundary (signals, import-time behaviour, startup speed, a missing
    extra) keep run_cli.
    """
    from click.testing import CliRunner

    from edgeship.sdk.cli import main

    root, paramiko = logging.getLogger(), logging.getLogger("paramiko")
    handlers, levels, environ = root.handlers[:], (root.level, paramiko.level), dict(os.environ)
    root.handlers.clear()  # so the CLI's logging.basicConfig applies, writing to the captured stderr
    try:
        result = CliRunner(capture="fd").invoke(main, list(args), env=env, prog_name="edgeship", catch_exceptions=False)
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        paramiko.setLevel(levels[1])
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess(["edgeship", *args], result.exit_code, result.stdout, result.stderr)
