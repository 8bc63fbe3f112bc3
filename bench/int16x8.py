"""int16x8 next to int8 on a model whose wide-range activation int8 cannot resolve, side by side, one run.

Run from the repository root as::

    .venv/bin/python bench/int16x8.py [--json] [--outlier 1000]

The model is a digits MLP (flatten -> fc1 Dense(32, relu) -> probs Dense(10, softmax)),
trained here for a few seconds, then given a wide-range activation: fc1 gets one more unit
with zero input weights and a bias of `--outlier` (always that value after the ReLU) and
probs gives it zero weights, so the float model is unchanged. fc1's output is one tensor
with one per-tensor activation scale: in int8 that scale comes from the outlier
(outlier/255 per step), so the real activations, a few units wide, keep only a handful of
levels; int16 has 256 times finer steps. This is the pattern (a few huge channels next
to many small ones) that makes int8 lose accuracy in practice, built on purpose.

Both conversions run through `edgeship convert` (each in its own process, as a user runs
it) with the same calibration data; for each the script reports size, host accuracy on
the test split against the float model's, and the mean host latency of one invoke with
the default runtime (XNNPACK takes the int8 model, not the int16x8 one).

This is a measurement, not a test: the exit code is always 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # bench/_machine.py: the script's own directory is on sys.path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EDGESHIP = str(Path(sys.executable).parent / "edgeship")
RECIPES = ("float32", "int8", "int16x8")


def build(out: Path, outlier: float) -> None:
    """outlier.keras and train.npz/test.npz in `out` (the digits example's own split)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from edgeship.converters._tf import tensorflow

    tensorflow()
    import importlib.util

    import keras

    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x_train, x_test, y_train, y_test = module.load_split()
    np.savez(out / "train.npz", x=x_train, y=y_train)
    np.savez(out / "test.npz", x=x_test, y=y_test)
    keras.utils.set_random_seed(0)

    def mlp(hidden: int) -> Any:
        return keras.Sequential([keras.Input(shape=x_train.shape[1:], name="image"), keras.layers.Flatten(name="flatten"),
                                 keras.layers.Dense(hidden, activation="relu", name="fc1"),
                                 keras.layers.Dense(10, activation="softmax", name="probs")], name="outlier")

    base = mlp(32)
    base.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    base.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    wide = mlp(33)
    (k1, b1), (k2, b2) = base.get_layer("fc1").get_weights(), base.get_layer("probs").get_weights()
    wide.get_layer("fc1").set_weights([np.concatenate([k1, np.zeros((k1.shape[0], 1), np.float32)], axis=1),
                                       np.concatenate([b1, [outlier]]).astype(np.float32)])
    wide.get_layer("probs").set_weights([np.concatenate([k2, np.zeros((1, k2.shape[1]), np.float32)]), b2])
    wide.save(out / "outlier.keras")


def convert(work: Path, recipe: str) -> dict[str, Any]:
    cmd = [EDGESHIP, "convert", str(work / "outlier.keras"), "-r", recipe, "-o", str(work / recipe), "--json",
           "--eval", str(work / "test.npz"), *(["--calib", str(work / "train.npz")] if recipe != "float32" else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr}")
    manifest: dict[str, Any] = json.loads(done.stdout)["manifest"]
    return manifest


def latency_us(model: Path, x: np.ndarray) -> float:
    """Mean wall time of one invoke over the test samples, after 20 warm-up runs (default delegates)."""
    from edgeship.device_agent.quant import quantize
    from edgeship.device_agent.runtime import load_runtime

    it = load_runtime().interpreter(model.read_bytes(), num_threads=1)
    inp = it.get_input_details()[0]
    samples = [quantize(s[None], inp) for s in x]
    for s in samples[:20]:
        it.set_tensor(inp["index"], s)
        it.invoke()
    start = time.perf_counter()
    for s in samples:
        it.set_tensor(inp["index"], s)
        it.invoke()
    return (time.perf_counter() - start) / len(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--outlier", type=float, default=1000.0, help="the always-on fc1 unit's value [1000]")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-int16x8-") as tmp:
        work = Path(tmp)
        build(work, args.outlier)
        x = np.load(work / "test.npz")["x"]
        rows = []
        for recipe in RECIPES:
            m = convert(work, recipe)
            rows.append({"recipe": recipe, "size": m["size"], "activations": m["integer"]["activations"],
                         "io": m["inputs"][0]["dtype"], "accuracy": m["accuracy"]["model"],
                         "float_accuracy": m["accuracy"]["float_model"],
                         "points_vs_float": round((m["accuracy"]["model"] - m["accuracy"]["float_model"]) * 100, 2),
                         "latency_us": round(latency_us(work / recipe / "model.tflite", x), 1)})
    doc = {"machine": _machine.machine("tensorflow", "ai-edge-litert"), "outlier": args.outlier, "rows": rows,
           "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    sys.stdout.write(f"outlier activation {args.outlier:g}; {len(x)} test samples; {doc['seconds']} s\n")
    sys.stdout.write(f"{'recipe':<9} {'I/O':<8} {'activ.':<7} {'size':>7} {'accuracy':>9} {'vs float':>9} "
                     f"{'invoke us':>10}\n")
    for r in rows:
        sys.stdout.write(f"{r['recipe']:<9} {r['io']:<8} {r['activations']:<7} {r['size']:>7} {r['accuracy']:>9.2%} "
                         f"{r['points_vs_float']:>+9.2f} {r['latency_us']:>10.1f}\n")


if __name__ == "__main__":
    main()
