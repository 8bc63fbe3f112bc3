"""Start-up time of the `edgeship` command, next to the interpreter and TensorFlow.

Run from the repository root as::

    .venv/bin/python bench/startup.py [--runs N] [--json]

It measures, in one run and interleaved (one round = each command once, N rounds), the
wall time of ``subprocess.run`` (time.perf_counter before and after) for:

    baseline  python -c pass                  the interpreter on its own
    help      edgeship --help                 the CLI's import cost
    inspect   edgeship inspect tiny.tflite    a real command on a small model
    import_tf python -c "import tensorflow"   what a TensorFlow import would add

The .tflite is built once, before any timing, by TensorFlow in a separate process (a
one-layer Dense model through tf.lite.TFLiteConverter.from_concrete_functions) into a
temporary directory. One untimed warm-up round runs first so that every command starts
from a warm file cache. It reports median and min per command, each median relative to
the baseline and to ``import tensorflow``, whether ``edgeship --help`` and ``inspect``
are under the 1 s target, and whether TensorFlow/Keras modules are loaded after running
each of those two commands in-process.

This is a measurement, not a test: the exit code is always 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # bench/_machine.py: the script's own directory is on sys.path

TARGET_S = 1.0
HEAVY = ("tensorflow", "keras", "tf_keras")
PYTHON = sys.executable
EDGESHIP = str(Path(sys.executable).parent / "edgeship")
QUIET_TF = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# A one-layer Dense model (4 -> 3, ReLU), with variables frozen into constants by the converter.
BUILD_TFLITE = r"""
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
"""

# Runs one CLI invocation inside the process, then lists the heavy modules it left loaded.
IN_PROCESS = r"""
import contextlib, io, json, sys
from edgeship.sdk.cli import main
args = json.loads(sys.argv[1])
code = 0
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"exit_code": code, "heavy_modules": heavy}))
"""


def build_tflite(directory: Path) -> tuple[Path | None, float, str | None]:
    """The tiny model, the seconds it took to build, and an error line if building failed."""
    path = directory / "tiny_dense.tflite"
    start = time.perf_counter()
    try:
        proc = subprocess.run([PYTHON, "-c", BUILD_TFLITE, str(path)], capture_output=True, text=True,
                              env=QUIET_TF, timeout=600)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "building the .tflite timed out"
    took = time.perf_counter() - start
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, took, f"building the .tflite failed (exit {proc.returncode}): {tail}"
    return path, took, None


def time_once(argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - start, proc.returncode


def modules_after(args: list[str]) -> dict[str, Any]:
    """Run main(args) in a fresh interpreter and report which heavy modules it imported."""
    proc = subprocess.run([PYTHON, "-c", IN_PROCESS, json.dumps(args)], capture_output=True, text=True,
                          timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"exit_code": None, "heavy_modules": None,
                "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def machine() -> dict[str, Any]:
    return _machine.machine("tensorflow", "click")


def run(runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "runs": runs, "warmup_rounds": 1, "target_s": TARGET_S}
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-") as tmp:
        tflite, build_s, build_error = build_tflite(Path(tmp))
        results["tflite"] = {"built": tflite is not None, "build_s": round(build_s, 3), "error": build_error,
                             "size": tflite.stat().st_size if tflite else None}
        commands: dict[str, list[str]] = {
            "baseline": [PYTHON, "-c", "pass"],
            "help": [EDGESHIP, "--help"],
        }
        if tflite is not None:
            commands["inspect"] = [EDGESHIP, "inspect", str(tflite)]
        commands["import_tf"] = [PYTHON, "-c", "import tensorflow"]

        for argv in commands.values():  # warm-up round, not timed
            time_once(argv)
        times: dict[str, list[float]] = {name: [] for name in commands}
        codes: dict[str, set[int]] = {name: set() for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                seconds, code = time_once(argv)
                times[name].append(seconds)
                codes[name].add(code)

        in_process = {"help": modules_after(["--help"])}
        if tflite is not None:
            in_process["inspect"] = modules_after(["inspect", str(tflite)])

    display = {name: shlex.join([Path(argv[0]).name, *argv[1:]]) for name, argv in commands.items()}
    if tflite is not None:
        display["inspect"] = f"edgeship inspect {tflite.name}"
    base = statistics.median(times["baseline"])
    tf_median = statistics.median(times["import_tf"])
    rows: dict[str, Any] = {}
    for name in commands:
        med = statistics.median(times[name])
        rows[name] = {
            "command": display[name],
            "median_s": round(med, 4),
            "min_s": round(min(times[name]), 4),
            "max_s": round(max(times[name]), 4),
            "median_vs_baseline": round(med / base, 2),
            "median_vs_import_tf": round(med / tf_median, 3),
            "exit_codes": sorted(codes[name]),
        }
    for name in ("help", "inspect"):
        if name in rows:
            rows[name]["under_target"] = rows[name]["median_s"] < TARGET_S
            rows[name]["in_process"] = in_process[name]
    results["commands"] = rows
    results["machine"]["loadavg_1m_end"] = _machine.loadavg()
    return results


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [f"edgeship start-up, {results['runs']} interleaved runs (+{results['warmup_rounds']} warm-up)",
           f"{m['date']}; nproc {m['nproc']}; {m['cpu'] or 'cpu unknown'}; Python {m['python']}; "
           f"tensorflow {m['tensorflow']}; {m['platform']}",
           f"1-minute load average: {m['loadavg_1m_start']} at start, {m['loadavg_1m_end']} at end"]
    t = results["tflite"]
    out.append(f"tiny .tflite: {t['size']} bytes, built in {t['build_s']:.1f} s" if t["built"] else
               f"tiny .tflite: not built ({t['error']}); inspect skipped")
    out.append("")
    header = f"{'command':<36} {'median s':>9} {'min s':>8} {'x pass':>8} {'x import tf':>12} {'exit':>5}"
    out += [header, "-" * len(header)]
    for row in results["commands"].values():
        out.append(f"{row['command']:<36} {row['median_s']:>9.3f} {row['min_s']:>8.3f} "
                   f"{row['median_vs_baseline']:>8.2f} {row['median_vs_import_tf']:>12.3f} "
                   f"{','.join(map(str, row['exit_codes'])):>5}")
    out.append("")
    for name in ("help", "inspect"):
        row = results["commands"].get(name)
        if row is None:
            continue
        verdict = "under" if row["under_target"] else "OVER"
        ip = row["in_process"]
        heavy = ip.get("heavy_modules")
        loaded = (f"error: {ip.get('error')}" if heavy is None else
                  "none" if not heavy else f"{len(heavy)} ({', '.join(heavy[:5])}{', ...' if len(heavy) > 5 else ''})")
        out.append(f"{row['command']}: median {row['median_s']:.3f} s, {verdict} the {results['target_s']:g} s target; "
                   f"tensorflow/keras/tf_keras modules after running it in-process: {loaded}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args(argv)
    try:
        results = run(max(1, args.runs))
    except Exception as exc:  # a measurement: say what broke, never fail the caller
        print(f"startup bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
