"""TFLite's converter in a child process: a crash of its C++ becomes one error line, not edgeship's death.

Quantizing a recurrent model (a Keras 3 LSTM or GRU with --recipe int8) segfaults
TensorFlow's converter, the raw one too. `convert` therefore runs the conversion
(converters.convert.convert_here: from_saved_model, the recipe's flags and convert, or the
quantization debugger for --keep-float) in a fresh Python started with subprocess, never
forked: TensorFlow's thread pools do not survive a fork. Parent and child talk through
files in a private temporary directory; the child starts early (ConverterProcess), imports
TensorFlow while the parent loads and exports the model, and waits for "go" on its stdin:

    job.pickle        parent -> child: SavedModel path, signature key, Recipe, input names, batch
    calibration.npz   parent -> child: the representative samples, one array per input
    model.tflite      child -> parent: the flatbuffer
    result.json       child -> parent: what --keep-float left float and why a model is mixed,
                      or the error the child raised
    child.log         the child's stdout and stderr (the converter's C++ chatter)

The child's output never reaches edgeship's stdout, so `--json` stays one document; it is
replayed on stderr when the converter reports an error (as the in-process converter's was),
shown live with EDGESHIP_DEBUG=1, and dropped when the child crashes: the crash is one line.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters.manifest import FloatFallback
from converters.recipe import Recipe
from sdk import errors
from sdk.errors import ConversionError, ConverterCrashError, EdgeshipError

log = logging.getLogger(__name__)

JOB_FILE = "job.pickle"
DATA_FILE = "calibration.npz"
MODEL_FILE = "model.tflite"
RESULT_FILE = "result.json"
LOG_FILE = "child.log"


class ConverterProcess:
    """A child Python that imports TensorFlow as soon as it starts, then runs one conversion when given it.

    Started before the parent loads and exports the model, the child's TensorFlow import
    (most of its cost) overlaps that work. Used as a context manager: leaving it kills a
    child that was never given a job and removes the job directory.
    """

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="edgeship-convert-"))
        self._debug = bool(os.environ.get("EDGESHIP_DEBUG"))
        self._log = (self.work / LOG_FILE).open("wb")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # where `converters` is importable from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.pop("TF_CONFIG", None)  # the converter is no worker of a --strategy multiworker cluster
        out: Any = 2 if self._debug else self._log  # with --debug the chatter goes to our stderr, never our stdout
        self._proc = subprocess.Popen([sys.executable, "-m", "converters.isolated", str(self.work)],
                                      stdin=subprocess.PIPE, stdout=out, stderr=None if self._debug else self._log,
                                      env=env)
        self._used = False

    def __enter__(self) -> ConverterProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:  # never given a job, or interrupted mid-conversion: nothing to keep
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        self._log.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def convert(self, saved_model: Path, key: str, recipe: Recipe,
                representative: Callable[[], Iterator[Any]] | None, model_name: str) -> Any:
        """converters.convert.convert_here(...) in the child; returns its Converted."""
        from converters.convert import Converted

        if self._used:
            raise RuntimeError("a ConverterProcess converts once")
        self._used = True
        names: list[str] = []
        batch = 1
        if representative is not None:  # the samples themselves cross the process boundary, in the order given
            chunks = list(representative())
            if chunks:
                names = list(chunks[0])
                batch = len(next(iter(chunks[0].values())))
                np.savez(self.work / DATA_FILE, *[np.concatenate([np.asarray(c[n]) for c in chunks]) for n in names])
        job = {"saved_model": str(saved_model), "key": key, "recipe": recipe, "names": names, "batch": batch,
               "representative": representative is not None}
        (self.work / JOB_FILE).write_bytes(pickle.dumps(job))
        assert self._proc.stdin is not None  # Popen(stdin=PIPE)
        try:
            self._proc.stdin.write(b"go\n")
            self._proc.stdin.close()
        except BrokenPipeError:  # the child is already gone (it crashed importing TensorFlow, say)
            pass
        try:
            rc = self._proc.wait()
        except BaseException:  # Ctrl-C: the child goes too
            self._proc.kill()
            self._proc.wait()
            raise
        self._log.flush()
        chatter = (self.work / LOG_FILE).read_bytes()
        if rc < 0:
            log.debug("converter child output before signal %d:\n%s", -rc, chatter.decode("utf-8", "replace"))
            raise ConverterCrashError(crash_message(-rc, recipe, model_name), -rc)
        result = self.work / RESULT_FILE
        if not result.exists():
            raise ConversionError(f"the TFLite converter process exited with status {rc} while converting "
                                  f"{model_name} with recipe {recipe.name}, without a result; rerun with --debug "
                                  f"to see its output")
        doc = json.loads(result.read_text())
        if "error" in doc:
            if chatter:
                os.write(2, chatter)  # what the converter printed before it refused, as it always was shown
            raise _error(doc["error"])
        fallback = doc.get("fallback")
        return Converted((self.work / MODEL_FILE).read_bytes(), FloatFallback(**fallback) if fallback else None,
                         doc.get("mixed_reason"))


def convert(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
            model_name: str) -> Any:
    """converters.convert.convert_here(...) run in a new child process; returns its Converted."""
    with ConverterProcess() as child:
        return child.convert(saved_model, key, recipe, representative, model_name)


def crash_message(signal: int, recipe: Recipe, model_name: str) -> str:
    """One line for a converter that died of a signal: what it was doing, and which recipe to try instead."""
    verb = "converting" if recipe.name == "float32" else "quantizing"
    hint = {
        "float32": "this TensorFlow cannot convert the model; simplify the layer that crashes it (unroll=True for a "
                   "recurrent layer) or try another TensorFlow version",
        "float16": "try --recipe float32",
        "dynamic": "try --recipe float16 or float32",
    }.get(recipe.name, "try --recipe dynamic or float32")
    return f"the TFLite converter crashed (signal {signal}) while {verb} {model_name} with recipe {recipe.name}; {hint}"


def _error(err: dict[str, str]) -> Exception:
    """The child's error as the same edgeship error type (ConversionError for types that need more than a message)."""
    cls = getattr(errors, err.get("type", ""), None)
    if err.get("type") == "internal":
        return RuntimeError(f"the converter process failed: {err['message']}")
    if isinstance(cls, type) and issubclass(cls, EdgeshipError) and cls.__init__ is EdgeshipError.__init__:
        return cls(err["message"])
    return ConversionError(err["message"])


# --- the child -------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """Child entry point: run the job in directory argv[0], write the model and result.json there."""
    from converters._tf import tensorflow
    from converters.convert import _representative, convert_here

    work = Path(argv[0])
    tensorflow()  # while the parent loads and exports the model
    if not sys.stdin.readline():  # the parent closed the pipe without a job: nothing to do
        return 0
    try:
        job = pickle.loads((work / JOB_FILE).read_bytes())  # written by our parent, in a private directory
        representative = None
        if job["representative"]:
            with np.load(work / DATA_FILE, allow_pickle=False) as data:
                arrays = {name: data[f"arr_{i}"] for i, name in enumerate(job["names"])}
            representative = _representative(arrays, job["names"], job["batch"])
        converted = convert_here(Path(job["saved_model"]), job["key"], job["recipe"], representative)
        (work / MODEL_FILE).write_bytes(converted.flatbuffer)
        doc: dict[str, Any] = {"fallback": converted.fallback.model_dump() if converted.fallback else None,
                               "mixed_reason": converted.mixed_reason}
    except EdgeshipError as exc:
        doc = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    except Exception as exc:  # a bug: the parent reports it as an internal error
        traceback.print_exc()
        doc = {"error": {"type": "internal", "message": f"{type(exc).__name__}: {exc}"}}
    partial = work / (RESULT_FILE + ".tmp")
    partial.write_text(json.dumps(doc))
    partial.rename(work / RESULT_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
