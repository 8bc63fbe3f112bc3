"""What the converter's child process costs, fresh per conversion or kept for the next one, side by side.

Run from the repository root as::

    .venv/bin/python bench/converter_child.py [--rounds 4] [--json]

The TFLite converter runs in a child process (converters/isolated.py) so that a crash of
its C++ is an error line, not edgeship's death. Most of a child's cost is importing
TensorFlow. A child that converted cleanly is kept for the process's next conversion;
this script converts the digits example (int8, then dynamic) several rounds in one
process, alternating two ways:

    fresh    the pool is emptied before each conversion, so each one starts its own child
             (what every conversion paid before children were kept; still what one
             `edgeship convert` command pays)
    kept     the child of the previous conversion takes the next one

and prints the median wall time of a conversion each way and their ratio. This is a
measurement, not a test: the exit code is always 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _machine  # bench/_machine.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="conversions per way and recipe")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from edgeship.converters import isolated
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

    with tempfile.TemporaryDirectory(prefix="edgeship-bench-child-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(work / "digits")],
                       check=True, capture_output=True)
        model, calib = work / "digits" / "digits.keras", work / "digits" / "train.npz"
        recipes = {"int8": Recipe.int8(calib), "dynamic": Recipe.dynamic()}
        convert(model, recipes["dynamic"], work / "warm", force=True)  # TensorFlow's first-use costs, paid by neither
        times: dict[str, dict[str, list[float]]] = {way: {r: [] for r in recipes} for way in ("fresh", "kept")}
        for i in range(args.rounds):
            for way in ("fresh", "kept") if i % 2 == 0 else ("kept", "fresh"):
                for name, recipe in recipes.items():
                    if way == "fresh":
                        isolated._close_idle()
                    start = time.perf_counter()
                    convert(model, recipe, work / f"{way}-{name}", force=True)
                    times[way][name].append(time.perf_counter() - start)
    median = {way: {r: statistics.median(v) for r, v in per.items()} for way, per in times.items()}
    doc: dict[str, Any] = {
        "machine": _machine.machine("tensorflow"),
        "rounds": args.rounds,
        "median_s": median,
        "kept_over_fresh": {r: median["kept"][r] / median["fresh"][r] for r in recipes},
    }
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    lines = [f"digits example, {args.rounds} conversions per way and recipe, alternating; median wall time",
             "", "| recipe | fresh child | kept child | kept / fresh |", "|---|---:|---:|---:|"]
    for r in recipes:
        lines.append(f"| {r} | {median['fresh'][r]:.2f} s | {median['kept'][r]:.2f} s | {doc['kept_over_fresh'][r]:.2f} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
