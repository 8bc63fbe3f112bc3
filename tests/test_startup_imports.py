"""`edgeship --help` and `edgeship inspect x.tflite` must not import TensorFlow or Keras.

Each check runs the CLI in a fresh interpreter (``sys.executable -c ...``) and then reads
that interpreter's sys.modules, so nothing this test process has imported can hide or
fake a TensorFlow import. The .tflite is built once per module by TensorFlow in a
separate process, so this process never imports TensorFlow either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "keras", "tf_keras")

BUILD = textwrap.dedent("""
    import sys
    import tensorflow as tf

    class Dense(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([4, 3], seed=[1, 2]), name="w")
            self.b = tf.Variable(tf.fill([3], 0.5), name="b")

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def __call__(self, x):
            return tf.nn.relu(tf.matmul(x, self.w) + self.b)

    model = Dense()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.__call__.get_concrete_function()], model)
    with open(sys.argv[1], "wb") as f:
        f.write(converter.convert())
""")

# Runs main(args) the way the console script does, minus sys.exit, then reports what got imported.
PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from edgeship.sdk.cli import main

    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            result = main(json.loads(sys.argv[1]), standalone_mode=False)
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code
    print(json.dumps({"exit_code": code, "stdout": out.getvalue(), "modules": sorted(sys.modules)}))
""")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_DEBUG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 -> 3 Dense+ReLU model (one FULLY_CONNECTED), converted by TensorFlow in its own process."""
    path = tmp_path_factory.mktemp("startup") / "tiny_dense.tflite"
    proc = subprocess.run([sys.executable, "-c", BUILD, str(path)], capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert proc.returncode == 0 and path.exists(), proc.stderr[-2000:]
    return path


def _run_in_fresh_interpreter(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_help_does_not_import_tensorflow() -> None:
    report = _run_in_fresh_interpreter("--help")
    assert report["exit_code"] == 0
    assert "Usage:" in report["stdout"] and "inspect" in report["stdout"]
    modules = report["modules"]
    assert "edgeship.sdk.cli" in modules  # the probe really ran the CLI
    for name in HEAVY:
        assert name not in modules, f"edgeship --help imported {name}"
    assert _heavy(modules) == []


def test_inspect_tflite_does_not_import_tensorflow(tiny_tflite: Path) -> None:
    report = _run_in_fresh_interpreter("inspect", str(tiny_tflite))
    assert report["exit_code"] == 0
    assert "TFLite model" in report["stdout"] and "FULLY_CONNECTED" in report["stdout"]
    modules = report["modules"]
    assert "edgeship.converters.inspect" in modules and "edgeship.converters.tflite_model" in modules
    for name in HEAVY:
        assert name not in modules, f"edgeship inspect x.tflite imported {name}"
    assert _heavy(modules) == []


def test_inspect_json_of_tiny_tflite(tiny_tflite: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeship.sdk.cli", "inspect", "--json", str(tiny_tflite)],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    info = json.loads(proc.stdout)
    assert info["kind"] == "tflite"
    assert info["path"] == str(tiny_tflite)
    assert info["size"] == tiny_tflite.stat().st_size
    assert [(t["name"], t["shape"], t["dtype"]) for t in info["inputs"]] == [("x", [1, 4], "float32")]
    assert [(t["shape"], t["dtype"]) for t in info["outputs"]] == [([1, 3], "float32")]
    assert [op["name"] for op in info["operators"]] == ["FULLY_CONNECTED"]


def test_bundle_tflite_does_not_import_tensorflow(tiny_tflite: Path, tmp_path: Path) -> None:
    report = _run_in_fresh_interpreter("bundle", str(tiny_tflite), "--out", str(tmp_path / "b"), "--quiet")
    assert report["exit_code"] == 0
    assert "prebuilt, float32" in report["stdout"] and (tmp_path / "b" / "manifest.json").exists()
    assert "edgeship.converters.bundle" in report["modules"]
    assert _heavy(report["modules"]) == []
