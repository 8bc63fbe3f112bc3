"""The model zoo through edgeship and through a plain tf.lite.TFLiteConverter, side by side.

Run from the repository root as::

    .venv/bin/python bench/zoo.py [--zoo DIR] [--families a,b] [--recipes int8,...]
                                  [--markdown FILE] [--json FILE]

It builds the zoo (tests/zoo.py, into --zoo or a temporary directory; an existing build is
reused), then for every family and every recipe that applies to it (plus the recipes the
zoo lists as probes, known not to work yet) it converts the model twice:

- edgeship: ``converters.convert.convert`` with ``Recipe.from_name`` (what ``edgeship convert
  MODEL -r RECIPE --calib calib.npz --train train.npz --eval test.npz`` runs);
- raw: ``tf.lite.TFLiteConverter`` as a user would write it: a Keras 3 model through
  ``model.export()`` and ``from_saved_model``, a tf_keras model through ``from_keras_model``,
  a SavedModel through ``from_saved_model``; float16 = DEFAULT + supported_types float16,
  dynamic = DEFAULT, int8 = DEFAULT + a representative dataset of the same 200 calibration
  samples (default supported ops, float I/O), int16x8 = that with
  EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8. QAT has no raw equivalent.

Both models are evaluated the same way on the family's test split: LiteRT on the host,
``device_agent.evaluate.evaluate`` (inputs quantized, outputs dequantized with the model's
own parameters), scoring the source model's first output found by name. Conversions run
in a worker process, so a converter crash (a segfault) is one failed cell and the next
cell runs in a fresh worker. This is a measurement, not a test: the exit code is 0
whatever the cells do.
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

ROOT = Path(__file__).resolve().parent.parent
INTEGER_RECIPES = ("int8", "qat", "int16x8")
STATUS_WIDTH = 160  # characters of an error kept in the Markdown table (the JSON has them whole)
CELL_TIMEOUT = 1200.0  # seconds a worker may spend on one cell before it is killed


# -- the worker: one process converts cells until it finishes or crashes -------------------------

def _strip_location(msg: str) -> str:
    """MLIR messages start with loc(callsite(...)): drop that (balanced parentheses) to keep the reason."""
    if not msg.startswith("loc("):
        return msg
    depth = 0
    for i, ch in enumerate(msg):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and i > 3:
            return msg[i + 1 :].lstrip(": ")
    return msg


def _first_line(exc: BaseException) -> str:
    """The one line of an exception worth a table cell (the 'error:' line of a converter error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return _strip_location(line.split("error:", 1)[1].strip())[:300]
    return _strip_location(lines[0])[:300] if lines else "(no message)"


def _describe(flatbuffer: bytes) -> dict[str, Any]:
    from edgeship.converters.tflite_model import TFLiteModel

    model = TFLiteModel.from_bytes(flatbuffer, source="converted model")
    float_ops = model.float_ops()
    return {"size": len(flatbuffer), "fully_integer": model.fully_integer, "io_float": model.io_is_float,
            "float_ops": float_ops, "float_op_names": sorted({op.split(":")[-1].split("#")[0] for op in float_ops}),
            "ops": sorted(u.name for u in model.op_uses),
            "io": [t.dtype for _, t in model.inputs + model.outputs]}


def _edgeship_cell(z: Any, recipe: str, out: Path) -> dict[str, Any]:
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe
    from tests.zoo import accuracy

    r = Recipe.from_name(recipe, calibration=z.calib, train=z.train)
    start = time.perf_counter()
    result = convert(z.path, r, out, eval_data=z.test, force=True)
    seconds = time.perf_counter() - start
    flatbuffer = result.model_path.read_bytes()
    acc, scored = accuracy(flatbuffer, z)
    m = result.manifest
    return {**_describe(flatbuffer), "seconds": round(seconds, 2), "accuracy": acc, "scored_output": scored,
            "manifest_accuracy": m.accuracy.model if m.accuracy else None,
            "manifest_float_accuracy": m.accuracy.float_model if m.accuracy else None,
            "manifest_fully_integer": m.integer.fully_integer}


def _raw_cell(z: Any, recipe: str, tmp: Path) -> dict[str, Any]:
    from tests.zoo import accuracy, raw_convert

    start = time.perf_counter()
    flatbuffer = raw_convert(z, recipe, tmp)
    seconds = time.perf_counter() - start
    acc, scored = accuracy(flatbuffer, z)
    return {**_describe(flatbuffer), "seconds": round(seconds, 2), "accuracy": acc, "scored_output": scored}


def worker(zoo_dir: Path, cells_file: Path, results_file: Path, bundles: Path) -> None:
    """Run each cell, appending a 'start' line before it and its result after it (fsynced)."""
    sys.path.insert(0, str(ROOT))
    from tests import zoo

    cells = json.loads(cells_file.read_text())
    with results_file.open("a") as log:
        def write(doc: dict[str, Any]) -> None:
            log.write(json.dumps(doc) + "\n")
            log.flush()
            os.fsync(log.fileno())

        for cell in cells:
            write({"id": cell["id"], "state": "start"})
            try:
                z = zoo.build(cell["family"], zoo_dir)
                with tempfile.TemporaryDirectory(prefix="raw-", dir=bundles) as tmp:
                    if cell["tool"] == "edgeship":
                        doc = _edgeship_cell(z, cell["recipe"], bundles / f"{cell['family']}-{cell['recipe']}")
                    else:
                        doc = _raw_cell(z, cell["recipe"], Path(tmp))
                doc["status"] = "ok"
            except Exception as exc:  # a measurement: every failure is a result, shown in the table
                doc = {"status": f"{type(exc).__name__}: {_first_line(exc)}"}
            write({"id": cell["id"], "state": "done", **doc})


# -- the parent: plans cells, keeps a worker running, survives its crashes ---------------------------

def plan(entries: list[Any], recipes: set[str] | None) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    for z in entries:
        for recipe in (*z.recipes, *z.probe):
            if recipes is not None and recipe not in recipes:
                continue
            for tool in ("edgeship", "raw") if recipe != "qat" else ("edgeship",):
                cells.append({"id": len(cells), "family": z.family, "recipe": recipe, "tool": tool,
                              "probe": recipe in z.probe})
    return cells


def _read(results_file: Path) -> list[dict[str, Any]]:
    if not results_file.exists():
        return []
    return [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]


def _collect(lines: list[dict[str, Any]], done: dict[int, dict[str, Any]], cells: list[dict[str, Any]], say: Any) -> None:
    for doc in lines:
        if doc["state"] == "done" and doc["id"] not in done:
            done[doc["id"]] = doc
            c = cells[doc["id"]]
            say(f"{c['family']:<18} {c['recipe']:<8} {c['tool']:<8} {doc['status'][:100]}")


def _pending(lines: list[dict[str, Any]], done: dict[int, dict[str, Any]]) -> list[int]:
    """Cells a worker started and never finished (at most one: the one it was on)."""
    return [doc["id"] for doc in lines if doc["state"] == "start" and doc["id"] not in done]


def run_cells(cells: list[dict[str, Any]], zoo_dir: Path, work: Path, say: Any) -> dict[int, dict[str, Any]]:
    """Results by cell id; a worker that dies marks its current cell crashed and a new one takes the rest."""
    results_file = work / "results.jsonl"
    done: dict[int, dict[str, Any]] = {}
    bundles = work / "bundles"
    bundles.mkdir(exist_ok=True)
    round_no = 0
    log = (work / "worker.log").open("ab")  # TensorFlow's chatter, and a crash's last words
    while len(done) < len(cells):
        todo = [c for c in cells if c["id"] not in done]
        cells_file = work / f"cells-{round_no}.json"
        cells_file.write_text(json.dumps(todo))
        round_no += 1
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--zoo", str(zoo_dir), "--cells", str(cells_file),
                                 "--results", str(results_file), "--bundles", str(bundles)],
                                stdout=subprocess.DEVNULL, stderr=log)
        seen, last_change = 0, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            lines = _read(results_file)
            if len(lines) != seen:
                seen, last_change = len(lines), time.monotonic()
                _collect(lines, done, cells, say)
            elif time.monotonic() - last_change > CELL_TIMEOUT:
                proc.kill()
                proc.wait()
                for i in _pending(lines, done):
                    done[i] = {"id": i, "state": "done", "status": f"timeout after {CELL_TIMEOUT:.0f} s"}
        lines = _read(results_file)
        _collect(lines, done, cells, say)
        rc = proc.returncode
        why = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
        for i in _pending(lines, done):
            done[i] = {"id": i, "state": "done", "status": f"the converter process crashed ({why})"}
            c = cells[i]
            say(f"{c['family']:<18} {c['recipe']:<8} {c['tool']:<8} crashed ({why})")
        if rc != 0 and not any(doc["state"] == "start" and doc["id"] in {t["id"] for t in todo} for doc in lines):
            for c in todo:  # the worker died before its first cell: do not start it again and again
                done.setdefault(c["id"], {"id": c["id"], "state": "done", "status": f"worker failed ({why})"})
    log.close()
    return done


# -- the table --------------------------------------------------------------------------------------

def _pct(v: Any) -> str:
    return "—" if v is None else f"{v * 100:.2f} %"


def _kib(v: Any) -> str:
    return "—" if v is None else f"{v / 1024:,.1f} KiB"


def _secs(v: Any) -> str:
    return "—" if v is None else f"{v:.1f} s"


def _integer(doc: dict[str, Any] | None, recipe: str) -> str:
    if doc is None or doc.get("status") != "ok":
        return "—"
    if recipe not in INTEGER_RECIPES:
        return "float"
    if doc["fully_integer"]:
        return "yes"
    if not doc["float_ops"]:
        return "integer ops, float I/O"
    return f"no: {len(doc['float_ops'])} float ({', '.join(doc['float_op_names'][:4])})"


def rows(cells: list[dict[str, Any]], results: dict[int, dict[str, Any]], entries: dict[str, Any]) -> list[dict[str, Any]]:
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cells:
        key = (c["family"], c["recipe"])
        row = table.setdefault(key, {"family": c["family"], "recipe": c["recipe"], "probe": c["probe"],
                                     "float_accuracy": entries[c["family"]].float_accuracy, "edgeship": None, "raw": None})
        row[c["tool"]] = {k: v for k, v in results[c["id"]].items() if k not in ("id", "state")}
    return list(table.values())


def _status(row: dict[str, Any]) -> str:
    parts = []
    for tool in ("edgeship", "raw"):
        doc = row[tool]
        if doc is not None and doc["status"] != "ok":
            parts.append(f"{tool}: {doc['status']}")
    text = "; ".join(p if len(p) <= STATUS_WIDTH else p[: STATUS_WIDTH - 1] + "…" for p in parts)
    return text.replace("|", "\\|") or "ok"


def markdown(table: list[dict[str, Any]], machine: dict[str, Any], command: str, seconds: float) -> str:
    lines = [f"`{command}` — {machine['date']}, {machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, "
             f"tensorflow {machine['tensorflow']}, ai-edge-litert {machine['ai-edge-litert']}; load average "
             f"{machine['loadavg_1m_start']} at the start; {seconds / 60:.1f} min in all.", "",
             "| family | recipe | edgeship acc. | raw acc. | float acc. | edgeship size | raw size | edgeship time "
             "| raw time | edgeship integer | raw integer | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in table:
        e, w = r["edgeship"] or {}, r["raw"] or {}
        recipe = f"{r['recipe']} (probe)" if r["probe"] else r["recipe"]
        raw_na = r["raw"] is None
        lines.append(" | ".join([
            f"| {r['family']}", recipe, _pct(e.get("accuracy")), "n/a" if raw_na else _pct(w.get("accuracy")),
            _pct(r["float_accuracy"]), _kib(e.get("size")), "n/a" if raw_na else _kib(w.get("size")),
            _secs(e.get("seconds")), "n/a" if raw_na else _secs(w.get("seconds")), _integer(r["edgeship"], r["recipe"]),
            "n/a" if raw_na else _integer(r["raw"], r["recipe"]), _status(r)]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None, help="build (or reuse) the zoo here [a temporary directory]")
    parser.add_argument("--families", default=None, help="comma-separated families [all]")
    parser.add_argument("--recipes", default=None, help="comma-separated recipes [every one that applies]")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table as Markdown to this file")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement as JSON to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cells", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bundles", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.zoo, args.cells, args.results, args.bundles)
        return

    def say(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    command = "python bench/zoo.py " + " ".join(sys.argv[1:])
    machine = _machine.machine("tensorflow", "keras", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-zoo-") as tmp:
        zoo_dir = args.zoo or Path(tmp) / "zoo"
        families = args.families.split(",") if args.families else None
        say(f"building the zoo in {zoo_dir}")
        built = subprocess.run([sys.executable, str(ROOT / "tests/zoo.py"), "--out", str(zoo_dir), *(families or [])],
                               capture_output=True, text=True, check=False, cwd=ROOT)
        if built.returncode != 0:
            raise SystemExit(f"building the zoo failed:\n{built.stderr[-3000:]}")
        sys.path.insert(0, str(ROOT))
        from tests.zoo import FAMILIES, ZooModel

        names = families or list(FAMILIES)
        entries = {n: ZooModel.from_json(json.loads((zoo_dir / n / "zoo.json").read_text())) for n in names}
        cells = plan(list(entries.values()), set(args.recipes.split(",")) if args.recipes else None)
        results = run_cells(cells, zoo_dir, Path(tmp), say)
    seconds = time.perf_counter() - start
    table = rows(cells, results, entries)
    machine["loadavg_1m_end"] = _machine.loadavg()
    text = markdown(table, machine, command, seconds)
    sys.stdout.write(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        doc = {"machine": machine, "command": command, "seconds": round(seconds, 1),
               "zoo": {n: {"float_accuracy": z.float_accuracy, "train_seconds": z.train_seconds, "source": z.source,
                           "recipes": list(z.recipes), "probe": list(z.probe)} for n, z in entries.items()},
               "rows": table}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
