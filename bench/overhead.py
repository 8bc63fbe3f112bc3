"""Measurement overhead: the agent's bench p50 next to a bare ``interpreter.invoke()`` loop.

Run from the repository root as::

    .venv/bin/python bench/overhead.py [--model PATH.tflite ...] [--rounds 7] [--seconds 2] [--runs 2000]
                                       [--threads 1] [--no-large] [--json]

For each model it measures, in one run and interleaved, two ways of timing the same
inference on this machine, with the same runtime (ai_edge_litert) and the same threads:

    agent  the real `local` board: sdk.boards.open_session(Board(..., store=<temp>)),
           session.upload(model), session.run("bench", sha, None, {runs, min_seconds,
           threads}); its p50 is the agent worker's own latency_ms.p50
    bare   a fresh `python -c` process that builds ai_edge_litert's Interpreter from the
           same bytes with num_threads=T, allocate_tensors(), and times invoke() only

The bare loop mirrors the agent's bench (device_agent/worker.py, no dataset) exactly: 16
random feeds from numpy.random.default_rng(0) (integers over the dtype's full range,
floats uniform in [-1, 1)), feed i % 16 set with set_tensor() before each run,
perf_counter_ns() around invoke() only, one first inference and 5 warm-up runs untimed,
then at least --runs runs and at least --seconds seconds.

A round runs both once; the order alternates from round to round (agent first in even
rounds, bare first in odd ones), so drift in the machine's load hits both alike. The
result per model is the median over rounds of each side's p50, the difference (agent -
bare) in microseconds and percent, and PASS when |difference| <= max(3 % of the bare p50,
20 us), MISS otherwise. Alongside, for judging noise: the median of the per-round
differences (a drift-robust estimate) and each side's round-to-round spread of p50s; when
that spread is wider than the tolerance, the report says the verdict is within noise.

Models: the digits example (examples/digits/train.py, then `edgeship convert --recipe
int8`) and, unless --no-large, a larger int8 CNN (Keras MobileNetV2, alpha 0.5, 128x128x3,
random weights, 10 classes, calibrated on 32 random images), both built into a temporary
directory before any timing. --model PATH (repeatable) measures given .tflite files
instead and builds nothing.

This is a measurement, not a test: the exit code is always 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # bench/_machine.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
EDGESHIP = str(Path(sys.executable).parent / "edgeship")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
TARGET_PCT = 3.0
TARGET_FLOOR_US = 20.0

# The bare loop: the same steps as device_agent/worker.py's bench with no dataset, nothing else.
BARE = r"""
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter

path, threads, runs, min_seconds, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
model = open(path, "rb").read()
interpreter = Interpreter(model_content=model, num_threads=threads)
interpreter.allocate_tensors()
rng = np.random.default_rng(0)
details = interpreter.get_input_details()  # the agent's order too (device_agent.evaluate.signature_io)
feeds = []
for _ in range(16):
    feed = {}
    for d in details:
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            feed[d["index"]] = rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(dtype)
        else:
            feed[d["index"]] = rng.uniform(-1, 1, size=d["shape"]).astype(dtype)
    feeds.append(feed)

def once(i):
    for idx, value in feeds[i % len(feeds)].items():
        interpreter.set_tensor(idx, value)
    t = time.perf_counter_ns()
    interpreter.invoke()
    return time.perf_counter_ns() - t

once(0)
for i in range(warmup):
    once(i)
samples = []
start = time.perf_counter()
while len(samples) < runs or time.perf_counter() - start < min_seconds:
    samples.append(once(len(samples)))
ms = np.asarray(samples, dtype=np.float64) / 1e6
print(json.dumps({"count": len(samples), "p50": float(np.percentile(ms, 50)), "mean": float(ms.mean()),
                  "min": float(ms.min()), "p90": float(np.percentile(ms, 90))}))
"""

# A larger model: MobileNetV2 (alpha 0.5, 128x128x3, random weights) saved as .keras, plus calibration data.
BUILD_LARGE = r"""
import os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np
import keras
keras.utils.set_random_seed(0)
out = sys.argv[1]
model = keras.applications.MobileNetV2(input_shape=(128, 128, 3), alpha=0.5, weights=None, classes=10)
model.save(os.path.join(out, "mobilenet_v2.keras"))
x = np.random.default_rng(0).uniform(-1, 1, size=(32, 128, 128, 3)).astype(np.float32)
np.savez(os.path.join(out, "calib.npz"), x=x)
"""


def _run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]


def build_digits(tmp: Path) -> Path:
    digits = tmp / "digits"
    proc = _run([PYTHON, str(ROOT / "examples/digits/train.py"), "--out", str(digits)])
    if proc.returncode != 0:
        raise RuntimeError(f"examples/digits/train.py failed: {_tail(proc)}")
    bundle = tmp / "digits-int8"
    proc = _run([EDGESHIP, "convert", str(digits / "digits.keras"), "--recipe", "int8", "--calib",
                 str(digits / "train.npz"), "--out", str(bundle), "-q"])
    if proc.returncode != 0:
        raise RuntimeError(f"edgeship convert (digits) failed: {_tail(proc)}")
    return bundle / "model.tflite"


def build_large(tmp: Path) -> Path:
    src = tmp / "mobilenet"
    src.mkdir()
    proc = _run([PYTHON, "-c", BUILD_LARGE, str(src)])
    if proc.returncode != 0:
        raise RuntimeError(f"building MobileNetV2 failed: {_tail(proc)}")
    bundle = tmp / "mobilenet-int8"
    proc = _run([EDGESHIP, "convert", str(src / "mobilenet_v2.keras"), "--recipe", "int8", "--calib",
                 str(src / "calib.npz"), "--calib-samples", "32", "--out", str(bundle), "-q"])
    if proc.returncode != 0:
        raise RuntimeError(f"edgeship convert (MobileNetV2) failed: {_tail(proc)}")
    return bundle / "model.tflite"


def bare_round(model: Path, threads: int, runs: int, seconds: float, warmup: int) -> dict[str, Any]:
    proc = _run([PYTHON, "-c", BARE, str(model), str(threads), str(runs), str(seconds), str(warmup)], timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed: {_tail(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agent_round(session: Any, sha: str, threads: int, runs: int, seconds: float, warmup: int) -> dict[str, Any]:
    result = session.run("bench", sha, None, {"runs": runs, "min_seconds": seconds, "threads": threads,
                                              "warmup": warmup}, timeout=600)
    if result.get("status") != "ok":
        raise RuntimeError(f"agent bench: {result.get('status')}: {result.get('message')}")
    lat = result["latency_ms"]
    return {"count": lat["count"], "p50": lat["p50"], "mean": lat["mean"], "min": lat["min"], "p90": lat["p90"],
            "runtime": result.get("runtime"), "threads": result.get("threads"),
            "delegate": (result.get("delegate") or {}).get("applied")}


def measure(name: str, model: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from edgeship.sdk.boards import Board, open_session

    store = tmp / f"store-{name}"
    session = open_session(Board("local", "local", store=store))
    try:
        up = session.upload(model.read_bytes())
        rounds: list[dict[str, Any]] = []
        warmup = 5  # the agent's default; the bare loop does the same
        for r in range(args.rounds):
            order = ("agent", "bare") if r % 2 == 0 else ("bare", "agent")
            row: dict[str, Any] = {"round": r + 1, "order": list(order)}
            for side in order:
                if side == "agent":
                    row["agent"] = agent_round(session, up.sha256, args.threads, args.runs, args.seconds, warmup)
                else:
                    row["bare"] = bare_round(model, args.threads, args.runs, args.seconds, warmup)
            rounds.append(row)
    finally:
        session.close()
    agent_p50 = statistics.median(r["agent"]["p50"] for r in rounds)
    bare_p50 = statistics.median(r["bare"]["p50"] for r in rounds)
    paired_us = statistics.median((r["agent"]["p50"] - r["bare"]["p50"]) * 1e3 for r in rounds)

    def spread(side: str) -> float:  # (max - min) of the round p50s, relative to their median, in %
        values = [r[side]["p50"] for r in rounds]
        return 100 * (max(values) - min(values)) / statistics.median(values)
    diff_us = (agent_p50 - bare_p50) * 1e3
    tolerance_us = max(TARGET_PCT / 100 * bare_p50 * 1e3, TARGET_FLOOR_US)
    return {
        "model": name, "path": str(model), "size": model.stat().st_size, "sha256": up.sha256,
        "runtime": rounds[0]["agent"]["runtime"], "threads": args.threads,
        "delegate": rounds[0]["agent"]["delegate"], "rounds": rounds,
        "agent_p50_ms": agent_p50, "bare_p50_ms": bare_p50,
        "diff_us": diff_us, "diff_pct": 100 * (agent_p50 - bare_p50) / bare_p50,
        "ratio": agent_p50 / bare_p50, "tolerance_us": tolerance_us, "paired_diff_median_us": paired_us,
        "round_spread_pct": {"agent": spread("agent"), "bare": spread("bare")},
        "verdict": "PASS" if abs(diff_us) <= tolerance_us else "MISS",
    }


def machine() -> dict[str, Any]:
    return _machine.machine("ai-edge-litert", "numpy")


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "rounds": args.rounds, "min_seconds": args.seconds,
                               "min_runs": args.runs, "threads": args.threads,
                               "target": {"pct": TARGET_PCT, "floor_us": TARGET_FLOOR_US}, "models": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="edgeship-overhead-") as tmpdir:
        tmp = Path(tmpdir)
        models: list[tuple[str, Path]] = []
        t0 = time.perf_counter()
        if args.model:
            models = [(Path(p).stem if Path(p).stem != "model" else Path(p).parent.name, Path(p)) for p in args.model]
        else:
            try:
                models.append(("digits-int8", build_digits(tmp)))
            except Exception as exc:
                results["errors"].append(f"digits model: {exc}")
            if not args.no_large:
                try:
                    models.append(("mobilenet_v2-0.5-128-int8", build_large(tmp)))
                except Exception as exc:
                    results["errors"].append(f"large model: {exc}")
        results["build_s"] = round(time.perf_counter() - t0, 1)
        for name, path in models:
            try:
                results["models"].append(measure(name, path, args, tmp))
            except Exception as exc:
                results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
    results["machine"]["loadavg_1m_end"] = _machine.loadavg()
    return results


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    t = results["target"]
    out = [f"edgeship measurement overhead: agent bench p50 vs a bare invoke() loop, {results['rounds']} interleaved "
           f"rounds of >= {results['min_seconds']:g} s and >= {results['min_runs']} runs, threads {results['threads']}",
           f"{m['date']}; nproc {m['nproc']}; {m['cpu'] or 'cpu unknown'}; Python {m['python']}; "
           f"ai-edge-litert {m['ai_edge_litert']}; {m['platform']}",
           f"1-minute load average: {m['loadavg_1m_start']} at start, {m['loadavg_1m_end']} at end; "
           f"model build {results.get('build_s', 0):.0f} s",
           f"target: |agent p50 - bare p50| <= max({t['pct']:g} % of bare, {t['floor_us']:g} us)", ""]
    for r in results["models"]:
        rt = r["runtime"] or {}
        out.append(f"{r['model']} ({r['size']} bytes, {rt.get('name')} {rt.get('version')}, "
                   f"delegate {','.join(r['delegate'] or []) or 'none'})")
        header = f"  {'round':>5} {'order':<11} {'agent p50 ms':>13} {'runs':>7} {'bare p50 ms':>12} {'runs':>7} {'diff us':>8}"
        out += [header, "  " + "-" * (len(header) - 2)]
        for row in r["rounds"]:
            a, b = row["agent"], row["bare"]
            out.append(f"  {row['round']:>5} {'/'.join(row['order']):<11} {a['p50']:>13.4f} {a['count']:>7} "
                       f"{b['p50']:>12.4f} {b['count']:>7} {(a['p50'] - b['p50']) * 1e3:>8.1f}")
        out.append(f"  median of round p50s: agent {r['agent_p50_ms']:.4f} ms, bare {r['bare_p50_ms']:.4f} ms; "
                   f"difference {r['diff_us']:+.1f} us ({r['diff_pct']:+.2f} %, ratio {r['ratio']:.4f}); "
                   f"tolerance {r['tolerance_us']:.1f} us -> {r['verdict']}")
        sp = r["round_spread_pct"]
        out.append(f"  median of the per-round differences {r['paired_diff_median_us']:+.1f} us; round-to-round spread "
                   f"of the p50s (max - min) / median: agent {sp['agent']:.1f} %, bare {sp['bare']:.1f} %")
        if max(sp.values()) > TARGET_PCT and r["tolerance_us"] < r["bare_p50_ms"] * 1e3 * max(sp.values()) / 100:
            out.append("  note: rounds of the same side differ by more than the tolerance, so this verdict is within "
                       "the machine's noise; rerun on a quiet machine or with more --rounds")
        out.append("")
    for e in results["errors"]:
        out.append(f"error: {e}")
    return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="a .tflite to measure (repeatable); skips building models")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--seconds", type=float, default=2.0, help="each side runs at least this long per round (2)")
    parser.add_argument("--runs", type=int, default=2000, help="... and at least this many runs (2000)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads on both sides (1)")
    parser.add_argument("--no-large", action="store_true", help="only the digits model")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args(argv)
    args.rounds = max(1, args.rounds)
    try:
        results = run(args)
    except Exception as exc:  # a measurement: say what broke, never fail the caller
        print(f"overhead bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
