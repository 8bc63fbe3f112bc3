"""TFLite's converter in a child process: a crash of its C++ becomes one error line, not edgeship's death.

Quantizing a recurrent model (a Keras 3 LSTM or GRU with --recipe int8) segfaults
TensorFlow's converter, the raw one too. `convert` therefore runs the conversion
(`convert_here`: from_saved_model, the recipe's flags and convert, or the
quantization debugger for --keep-float) in a fresh Python started with subprocess, never
forked: TensorFlow's thread pools do not survive a fork. Parent and child talk through
files in a private temporary directory; the child starts early (ConverterProcess), imports
TensorFlow while the parent loads and exports the model, and waits for a job directory on
its stdin; it answers "done" on a pipe of its own when the job's files are written:

    job.pickle        parent -> child: SavedModel path, signature key, Recipe, input names, batch
    calibration.npz   parent -> child: the representative samples, one array per input
    model.tflite      child -> parent: the flatbuffer
    result.json       child -> parent: what --keep-float left float and why a model is mixed,
                      or the error the child raised
    child.log         the child's stdout and stderr (the converter's C++ chatter)

The child's output never reaches edgeship's stdout, so `--json` stays one document; it is
replayed on stderr when the converter reports an error (as the in-process converter's was),
shown live with EDGESHIP_DEBUG=1, and dropped when the child crashes: the crash is one line.

A child that finished a job cleanly is kept (one idle child per process, `acquire` and
`release`) and takes the next conversion of the same process, so a notebook, a test
session or bench/zoo.py pays TensorFlow's import once rather than per model. A child that
crashed, or was interrupted, is never reused; one is retired after MAX_JOBS jobs, and the
idle one is ended when the process exits (or, if the parent dies, when its stdin closes).
"""

from __future__ import annotations

import atexit
import contextlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship import import_root
from edgeship.converters import tflite_converter
from edgeship.converters.manifest import FloatFallback, named_float_ops
from edgeship.converters.recipe import Recipe
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.device_agent import npzfile
from edgeship.sdk import errors
from edgeship.sdk.errors import ConversionError, ConverterCrashError, EdgeshipError

log = logging.getLogger(__name__)

JOB_FILE = "job.pickle"
DATA_FILE = "calibration.npz"
MODEL_FILE = "model.tflite"
RESULT_FILE = "result.json"
LOG_FILE = "child.log"
MAX_JOBS = 25  # a child's memory grows with each converted graph: retire it after this many


@dataclass(frozen=True)
class Converted:
    """What the TFLite converter made: the flatbuffer, what --keep-float left in float, and for an
    integer recipe that could not stay all-integer, why (the model is then the raw converter's mixed one)."""

    flatbuffer: bytes
    fallback: FloatFallback | None = None
    mixed_reason: str | None = None


class ConverterProcess:
    """A child Python that imports TensorFlow as soon as it starts, then runs conversions when given them.

    Started before the parent loads and exports the model, the child's TensorFlow import
    (most of its cost) overlaps that work. Used through `converter()`: leaving it hands a
    healthy child back to the pool, and ends one that crashed or was interrupted.
    """

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="edgeship-convert-"))
        self.debug = bool(os.environ.get("EDGESHIP_DEBUG"))
        self.jobs = 0
        self.healthy = True
        self._log = (self.work / LOG_FILE).open("wb")
        env = dict(os.environ)
        root = import_root()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.pop("TF_CONFIG", None)  # the converter is no worker of a --strategy multiworker cluster
        out: Any = 2 if self.debug else self._log  # with --debug the chatter goes to our stderr, never our stdout
        done_read, done_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edgeship.converters.isolated", str(self.work), str(done_write)],
                stdin=subprocess.PIPE, stdout=out, stderr=None if self.debug else self._log, env=env,
                pass_fds=(done_write,))
        finally:
            os.close(done_write)
        self._done = os.fdopen(done_read, "rb")

    @property
    def alive(self) -> bool:
        """Can this child take another job (it finished its last one cleanly and is still running)?"""
        return self.healthy and self._proc.poll() is None

    def close(self) -> None:
        """End the child and remove its directory: idle, it holds nothing; mid-job, it was interrupted."""
        self._proc.kill()  # not stdin's EOF: a child still importing TensorFlow would keep us waiting
        self._proc.wait()
        if self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        self._done.close()
        self._log.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def convert(self, saved_model: Path, key: str, recipe: Recipe,
                representative: Callable[[], Iterator[Any]] | None, model_name: str) -> Converted:
        """`convert_here(...)` in the child; returns its Converted."""
        if not self.alive:
            raise RuntimeError("this converter process cannot take another job")
        self.jobs += 1
        job_dir = self.work / f"job{self.jobs}"
        job_dir.mkdir()
        names: list[str] = []
        batch = 1
        if representative is not None:  # the samples themselves cross the process boundary, in the order given
            chunks = list(representative())
            if chunks:
                names = list(chunks[0])
                batch = len(next(iter(chunks[0].values())))
                np.savez(job_dir / DATA_FILE, *[np.concatenate([np.asarray(c[n]) for c in chunks]) for n in names])
        job = {"saved_model": str(saved_model), "key": key, "recipe": recipe, "names": names, "batch": batch,
               "representative": representative is not None}
        (job_dir / JOB_FILE).write_bytes(pickle.dumps(job))
        self._log.flush()
        log_start = (self.work / LOG_FILE).stat().st_size
        self.healthy = False  # until the child says this job is done
        assert self._proc.stdin is not None  # Popen(stdin=PIPE)
        with contextlib.suppress(BrokenPipeError):  # the child is already gone (it crashed importing TensorFlow, say)
            self._proc.stdin.write(f"{job_dir}\n".encode())
            self._proc.stdin.flush()
        done = self._done.readline()  # b"done\n", or b"" when the child died (Ctrl-C: close() kills it)
        rc = None if done else self._proc.wait()
        with (self.work / LOG_FILE).open("rb") as f:
            f.seek(log_start)
            chatter = f.read()
        if rc is not None and rc < 0:
            log.debug("converter child output before signal %d:\n%s", -rc, chatter.decode("utf-8", "replace"))
            raise ConverterCrashError(crash_message(-rc, recipe, model_name), -rc)
        result = job_dir / RESULT_FILE
        if rc is not None or not result.exists():
            raise ConversionError(f"the TFLite converter process exited with status {rc} while converting "
                                  f"{model_name} with recipe {recipe.name}, without a result; rerun with EDGESHIP_DEBUG=1 "
                                  f"to see its output")
        self.healthy = self.jobs < MAX_JOBS
        doc = json.loads(result.read_text())
        try:
            if "error" in doc:
                if chatter:
                    os.write(2, chatter)  # what the converter printed before it refused, as it always was shown
                raise _error(doc["error"])
            fallback = doc.get("fallback")
            return Converted((job_dir / MODEL_FILE).read_bytes(), FloatFallback(**fallback) if fallback else None,
                             doc.get("mixed_reason"))
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)


def convert_here(saved_model: Path, key: str, recipe: Recipe,
                 representative: Callable[[], Iterator[Any]] | None) -> Converted:
    """Run TFLiteConverter on a static SavedModel, in this process: the child of converters.isolated calls it.

    An integer recipe is converted strictly first (integer kernels only). When that fails or
    leaves ops in float, and --int8-strict is not set, the model is converted again as a plain
    TFLiteConverter would (optimizations and representative data only), which keeps float what it
    cannot quantize: edgeship never does worse than the raw converter.
    """
    if recipe.keeps_float:
        from edgeship.converters import quantdebug  # imports TensorFlow's debugger: only for --keep-float

        assert representative is not None  # int8 recipes always have one
        converter = tflite_converter.converter_for(saved_model, key, recipe, representative, strict=True)
        with tflite_converter.translated(_failed(recipe)):
            kept = quantdebug.quantize_selectively(converter, representative, recipe.keep_float, recipe.keep_float_auto)
        fallback = FloatFallback(layers=list(kept.layers), requested=recipe.keep_float_text,
                                 int8_size=kept.int8_size, size_cost=len(kept.flatbuffer) - kept.int8_size)
        return Converted(kept.flatbuffer, fallback)
    if not recipe.integer:
        return Converted(_convert_once(saved_model, key, recipe, representative, strict=False))
    try:
        flatbuffer = _convert_once(saved_model, key, recipe, representative, strict=True)
        model = TFLiteModel.from_bytes(flatbuffer, source="converted model")
        if not model.float_ops() or recipe.int8_strict:
            return Converted(flatbuffer)  # _check_result refuses float ops under --int8-strict, naming them
        reason = f"the converter left op(s) float: {named_float_ops(model.float_ops(), model.float_op_tensors())}"
    except ConversionError as exc:
        if recipe.int8_strict:
            raise
        reason = f"the strict integer conversion failed ({exc})"
    log.info("recipe %s: %s; converting as the plain TFLite converter does", recipe.name, reason)
    return Converted(_convert_once(saved_model, key, recipe, representative, strict=False), mixed_reason=reason)


def _convert_once(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
                  strict: bool) -> bytes:
    converter = tflite_converter.converter_for(saved_model, key, recipe, representative, strict)
    with tflite_converter.translated(_failed(recipe)):
        return bytes(converter.convert())


def _failed(recipe: Recipe) -> str:
    return f"TFLite converter failed for recipe {recipe.name}"


_idle: list[ConverterProcess] = []  # at most one healthy child waiting for this process's next conversion


def acquire() -> ConverterProcess:
    """The idle child of this process when there is a healthy one (with the same --debug routing), else a new one."""
    debug = bool(os.environ.get("EDGESHIP_DEBUG"))
    while _idle:
        child = _idle.pop()
        if child.alive and child.debug == debug:
            return child
        child.close()
    return ConverterProcess()


def release(child: ConverterProcess) -> None:
    """Keep a healthy child for the next conversion; end any other."""
    if child.alive and not _idle:
        _idle.append(child)
    else:
        child.close()


@atexit.register
def _close_idle() -> None:
    while _idle:
        _idle.pop().close()


@contextlib.contextmanager
def converter() -> Iterator[ConverterProcess]:
    """A converter child for the duration of the block, handed back to the pool after it."""
    child = acquire()
    try:
        yield child
    finally:
        release(child)


def convert(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
            model_name: str) -> Converted:
    """`convert_here(...)` run in a child process; returns its Converted."""
    with converter() as child:
        return child.convert(saved_model, key, recipe, representative, model_name)


def crash_message(signal: int, recipe: Recipe, model_name: str) -> str:
    """One line for a converter that died of a signal: what it was doing, and which recipe to try instead."""
    verb = "converting" if recipe.name == "float32" else "quantizing"
    hint = {
        "float32": "this TensorFlow cannot convert the model; simplify the layer that crashes it (unroll=True for a "
                   "recurrent layer) or try another TensorFlow version",
        "float16": "try recipe float32",
        "dynamic": "try recipe float16 or float32",
    }.get(recipe.name, "try recipe dynamic or float32")
    return f"the TFLite converter crashed (signal {signal}) while {verb} {model_name} with recipe {recipe.name}; {hint}"


def _error(err: dict[str, str]) -> Exception:
    """The child's error as the same edgeship error type (ConversionError for types that need more than a message)."""
    cls = getattr(errors, err.get("type", ""), None)
    if err.get("type") == "internal":
        return RuntimeError(f"the converter process failed: {err['message']}")
    option = err.get("option") or None
    detail = err.get("detail", err["message"]) if option else err["message"]
    if isinstance(cls, type) and issubclass(cls, EdgeshipError) and cls.__init__ is EdgeshipError.__init__:
        return cls(detail, option=option)
    return ConversionError(detail, option=option)


# --- the child -------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """Child entry point: run each job directory read from stdin, answering "done" on the fd argv[1]."""
    from edgeship.converters._tf import tensorflow

    done = os.fdopen(int(argv[1]), "wb", buffering=0)
    tensorflow()  # while the parent loads and exports the model
    for line in sys.stdin:  # until the parent closes the pipe
        _run_job(Path(line.strip()))
        done.write(b"done\n")
    return 0


def _run_job(work: Path) -> None:
    """One conversion: the job's files in, the model and result.json out."""
    try:
        job = pickle.loads((work / JOB_FILE).read_bytes())  # written by our parent, in a private directory
        representative = None
        if job["representative"]:
            data = npzfile.load(work / DATA_FILE)  # our parent's own file; read like any other npz all the same
            arrays = {name: data[f"arr_{i}"] for i, name in enumerate(job["names"])}
            representative = tflite_converter.representative_data(arrays, job["names"], job["batch"])
        converted = convert_here(Path(job["saved_model"]), job["key"], job["recipe"], representative)
        (work / MODEL_FILE).write_bytes(converted.flatbuffer)
        doc: dict[str, Any] = {"fallback": converted.fallback.model_dump() if converted.fallback else None,
                               "mixed_reason": converted.mixed_reason}
    except EdgeshipError as exc:
        doc = {"error": {"type": type(exc).__name__, "message": str(exc), "detail": exc.detail,
                         "option": exc.option}}
    except Exception as exc:  # a bug: the parent reports it as an internal error
        traceback.print_exc()
        doc = {"error": {"type": "internal", "message": f"{type(exc).__name__}: {exc}"}}
    sys.stdout.flush()
    sys.stderr.flush()
    partial = work / (RESULT_FILE + ".tmp")
    partial.write_text(json.dumps(doc))
    partial.rename(work / RESULT_FILE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
