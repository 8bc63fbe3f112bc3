"""TFLite Micro as an agent runtime: the board class "emu-mcu", a microcontroller emulated on the host.

``MicroRuntime`` puts the subset of the ``tf.lite.Interpreter`` API that the agent uses
(``get_input_details``, ``get_output_details``, ``set_tensor``, ``invoke``, ``get_tensor``,
``allocate_tensors``, ``_get_full_signature_list``, ``_get_ops_details``) over the
``tflite_micro`` Python package, so ``device_agent.evaluate.evaluate`` runs unchanged on it.

What the TFLM Python wrapper gives and what this module adds:

* Its details carry dtype, shape and ``quantization_parameters`` but neither the tensor
  index nor the name, so those (and the signature) are read from the model with the
  flatbuffer schema module that ships inside ``tflite_micro``. Indices are the model's
  tensor indices, as with ``tf.lite``.
* It allocates in its constructor and reports failures only as ``RuntimeError("TFLM failed
  to allocate tensors")``; the reason is printed by the C++ side on fd 2. This module
  captures fd 2 around construction and raises ``UnsupportedOpError`` (naming the op) or
  ``ArenaTooSmall`` (with the bytes needed) instead.
* It has no ``arena_used_bytes()``; its recording allocator prints "Arena allocation total
  N bytes", which ``arena_needed`` reads and then checks by allocating with N and N-1 bytes
  (a binary search is the fallback when the line is absent).
* An arena smaller than about 464 bytes crashes the process (the wrapper does not check
  that the allocator could be created); this module never builds one below ``MIN_ARENA``.
  Some models also crash it (SIGSEGV) for arenas a little below their need (the test
  conv net of tests/helpers_models.py at 2232..2263 bytes, needing 2808), so the host never
  builds a TFLM interpreter in its own process: ``probe`` runs the arena search in a child
  process (a fresh interpreter of the same Python), says which size crashed, and goes on
  with that size counted as "does not fit"; ``ArenaProbeCrashed`` is the result when the
  crash leaves nothing to conclude (the board's own arena, or the probe limit, crashed).
* It does not run the flatbuffer verifier; only the file identifier and the structure this
  module reads are checked here.

The arena numbers are those of this 64-bit host build with reference kernels: a 32-bit
MCU build has smaller structs, and optimized kernels (CMSIS-NN, ...) ask for different
scratch buffers, so treat them as an estimate of a real board's need, not the figure itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import tflite_micro
from tflite_micro import runtime as _tflm

#: The largest arena ``arena_needed`` tries, and the arena ``MicroRuntime`` uses when given none.
DEFAULT_ARENA_UPPER = 1 << 24
#: No interpreter is ever built with a smaller arena: below ~464 bytes the TFLM wrapper segfaults.
MIN_ARENA = 1024

_schema = _tflm.schema_fb
_OP_NAMES: Dict[int, str] = {v: k for k, v in vars(_schema.BuiltinOperator).items() if k.isupper() and isinstance(v, int)}
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_MISSING_OP = re.compile(r"Didn't find op for (builtin|custom) opcode '([^']*)'")
_MEMORY_HINTS = ("Failed to allocate", "Failed to resize buffer", "missing:")


class MicroError(RuntimeError):
    """TFLite Micro could not load or run the model; the message says why."""


class UnsupportedOpError(MicroError):
    """The model uses an op TFLite Micro has no kernel for (TFLM names the first one it meets)."""

    def __init__(self, op: str, kind: str = "builtin") -> None:
        self.op = op
        self.kind = kind
        super().__init__(f"TFLite Micro has no kernel for {kind} op {op}; the model cannot run on this board "
                         "(TFLM stops at the first missing op, so others may follow)")


class ArenaTooSmall(MicroError):
    """The tensor arena cannot hold the model; ``needed`` is the exact need when known, else None."""

    def __init__(self, arena_size: int, needed: Optional[int] = None, detail: str = "") -> None:
        self.arena_size = arena_size
        self.needed = needed
        self.detail = detail
        want = f"needs {needed} bytes" if needed is not None else "needs more"
        super().__init__(f"the model does not fit a {arena_size}-byte tensor arena (it {want})"
                         + (f": {detail}" if detail else ""))


class ArenaProbeCrashed(MicroError):
    """The TFLM runtime crashed (a signal, in the probe's child process) while planning the arena at ``arena_size`` bytes."""

    def __init__(self, arena_size: int, signal_name: str, hint: str = "") -> None:
        self.arena_size = arena_size
        self.signal_name = signal_name
        super().__init__(f"the TFLM runtime crashed ({signal_name}) while planning the arena at {arena_size} bytes "
                         f"(in a child process; this process is unaffected)" + (f"; {hint}" if hint else ""))


def version() -> str:
    """The installed tflite_micro version (a dated dev build: the package has no releases)."""
    return str(getattr(tflite_micro, "__version__", "unknown"))


def load_delegate(library: str, options: Optional[Dict[str, Any]] = None) -> Any:
    """TFLite Micro has no delegates; the worker reports the fallback (or the failure if the request requires one)."""
    raise ValueError("tflite_micro has no delegates")


# ------------------------------------------------------------------------------ stderr capture
@contextlib.contextmanager
def _native_stderr(lines: List[str]) -> Iterator[None]:
    """Send fd 2 to a temporary file for the block and append what the C++ side printed to ``lines``.

    EDGESHIP_DEBUG=1 also echoes it to the real stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            text = buf.read().decode("utf-8", "replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            if text and os.environ.get("EDGESHIP_DEBUG"):
                os.write(2, text.encode())


def _classify(lines: List[str], arena_size: int) -> MicroError:
    """Turn the lines TFLM printed while failing to allocate into the error that says why."""
    for line in lines:
        m = _MISSING_OP.search(line)
        if m:
            return UnsupportedOpError(m.group(2), m.group(1))
    memory = [line for line in lines if any(h in line for h in _MEMORY_HINTS)]
    if memory:
        return ArenaTooSmall(arena_size, detail=memory[0].strip())
    detail = "; ".join(line.strip() for line in lines[-3:])
    return MicroError(f"TFLite Micro could not allocate the model: {detail or 'no reason given'}")


#: Called with the arena size just before each TFLM interpreter is built (the probe child announces it).
_before_build: Optional[Callable[[int], None]] = None
#: Arena sizes known to crash TFLM for the model being probed: counted as "does not fit", never built again.
_crashing: Set[int] = set()


def _build(model: bytes, arena_size: int) -> Tuple[Any, Optional[int]]:
    """A TFLM interpreter for ``model`` with ``arena_size`` bytes, and the arena bytes it used (None if unreported)."""
    if arena_size < MIN_ARENA:
        raise ArenaTooSmall(arena_size, detail=f"arenas below {MIN_ARENA} bytes are not tried (they crash the TFLM wrapper)")
    if arena_size in _crashing:
        raise ArenaTooSmall(arena_size, detail="TFLM crashed at this size in an earlier probe")
    if _before_build is not None:
        _before_build(arena_size)
    lines: List[str] = []
    try:
        with _native_stderr(lines):
            interp = _tflm.Interpreter.from_bytes(model, arena_size=arena_size)
            interp.print_allocations()
    except RuntimeError as exc:
        raise _classify(lines, arena_size) from exc
    used = None
    for line in lines:
        m = _ARENA_TOTAL.search(line)
        if m:
            used = int(m.group(1))
    return interp, used


def _allocates(model: bytes, arena_size: int) -> bool:
    try:
        _build(model, arena_size)
    except MicroError:
        return False
    return True


# ------------------------------------------------------------------------------ model reading
def _check_model(model: bytes) -> Any:
    """The flatbuffer root of a TFLite model, after the checks TFLM itself skips."""
    if len(model) < 8 or not _schema.Model.ModelBufferHasIdentifier(model, 0):
        raise ValueError("not a TFLite model: the flatbuffer identifier 'TFL3' is missing")
    try:
        root = _schema.Model.GetRootAsModel(model, 0)
        if root.SubgraphsLength() < 1:
            raise ValueError("the model has no subgraph")
        graph = root.Subgraphs(0)
        n = graph.TensorsLength()
        for i in list(graph.InputsAsNumpy()) + list(graph.OutputsAsNumpy()):
            if not 0 <= int(i) < n:
                raise ValueError(f"input/output tensor index {int(i)} is out of range")
    except ValueError:
        raise
    except Exception as exc:  # flatbuffers raises struct.error/IndexError on a damaged buffer
        raise ValueError(f"the model flatbuffer is damaged ({type(exc).__name__}: {exc})") from exc
    return root


def _op_name(root: Any, opcode_index: int) -> Tuple[str, str]:
    code = root.OperatorCodes(opcode_index)
    builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
    if builtin == _schema.BuiltinOperator.CUSTOM:
        return (code.CustomCode() or b"").decode("utf-8", "replace"), "custom"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}"), "builtin"


# ------------------------------------------------------------------------------ public API
def arena_needed(model: bytes, upper: int = DEFAULT_ARENA_UPPER) -> int:
    """The smallest tensor arena (bytes) with which TFLM allocates ``model``, exact to the byte.

    Raises UnsupportedOpError for a model TFLM cannot run at all, ArenaTooSmall when even
    ``upper`` bytes are not enough, ValueError for a file that is not a TFLite model.
    """
    _check_model(model)
    if upper < MIN_ARENA:
        raise ValueError(f"upper must be at least {MIN_ARENA} bytes")
    try:
        _, used = _build(model, upper)
    except ArenaTooSmall as exc:
        raise ArenaTooSmall(upper, None, f"not even the probe limit of {upper} bytes is enough") from exc
    hi = upper
    if used is not None and MIN_ARENA <= used <= upper and _allocates(model, used):
        if used - 1 < MIN_ARENA or not _allocates(model, used - 1):
            return used
        hi = used  # the recorded total overstated the need: search below it
    lo = MIN_ARENA - 1  # never built; taken as failing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _allocates(model, mid):
            hi = mid
        else:
            lo = mid
    return hi


def fits(model: bytes, arena_size: int) -> Tuple[bool, int]:
    """(whether ``model`` allocates in ``arena_size`` bytes, the bytes it needs), probed in a child process.

    When the need exceeds the probe limit (``max(DEFAULT_ARENA_UPPER, arena_size)``) the
    second value is that limit + 1, a lower bound. Unsupported ops raise UnsupportedOpError;
    a crash of TFLM at ``arena_size`` raises ArenaProbeCrashed.
    """
    upper = max(DEFAULT_ARENA_UPPER, int(arena_size))
    try:
        found = probe(model, arena_size=int(arena_size), upper=upper)
    except ArenaTooSmall:
        return False, upper + 1
    return bool(found.fits), found.needed


# ------------------------------------------------------------------------------ the probe in a child process
#: How long one probe child may take (a search is ~30 TFLM allocations; a hang is not a result).
PROBE_TIMEOUT = 120.0
#: Crashes after which the search gives up (each one costs a new child process).
MAX_CRASHES = 8


@dataclass(frozen=True)
class ArenaProbe:
    """What the arena search found: the exact need, whether the asked arena allocates, the probes that crashed TFLM."""

    needed: int
    fits: Optional[bool] = None  # at the asked arena_size; None when none was asked
    crashes: Tuple[Tuple[int, str], ...] = field(default_factory=tuple)  # (arena bytes, signal name)


def probe(model: bytes, arena_size: Optional[int] = None, upper: int = DEFAULT_ARENA_UPPER,
          timeout: float = PROBE_TIMEOUT) -> ArenaProbe:
    """``arena_needed`` (and, given ``arena_size``, whether exactly that arena allocates), run in a child process.

    A TFLM crash kills the child, not the caller: the size being planned is recorded and the
    search goes on in a new child with that size counted as "does not fit". It raises
    ArenaProbeCrashed when a crash leaves nothing to conclude: at ``arena_size`` itself (a
    board with that arena would crash the same way), at ``upper``, or after MAX_CRASHES.
    Otherwise it raises what ``arena_needed`` raises, and MicroError for a hung probe.
    """
    _check_model(model)
    upper = max(int(upper), int(arena_size or 0))
    crashes: List[Tuple[int, str]] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-tflm-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        while True:
            request = {"model": str(path), "arena_size": arena_size, "upper": upper,
                       "crashing": [n for n, _ in crashes]}
            outcome, planning, sig = _probe_once(request, timeout)
            if outcome is not None:
                break
            if planning is None:
                raise MicroError(f"the TFLM arena probe crashed ({sig}) before planning any arena; "
                                 f"run with EDGESHIP_DEBUG=1 to see TFLM's output")
            crashes.append((planning, sig))
            if planning == arena_size:
                raise ArenaProbeCrashed(planning, sig, "that is the board's own arena, so the board would crash the "
                                                       "same way; give it a larger arena (constraints.arena_bytes in "
                                                       "boards.yaml) or change the model")
            if planning == upper or len(crashes) >= MAX_CRASHES:
                raise ArenaProbeCrashed(planning, sig, "the arena this model needs cannot be found on this host; try "
                                                       "it on the board itself, or change the model")
    error = outcome.get("error")
    if error == "unsupported_op":
        raise UnsupportedOpError(str(outcome["op"]), str(outcome["kind"]))
    if error == "arena_too_small":
        raise ArenaTooSmall(int(outcome["arena_size"]), outcome.get("needed"), str(outcome.get("detail") or ""))
    if error == "not_a_model":
        raise ValueError(str(outcome["message"]))
    if error is not None:
        raise MicroError(str(outcome["message"]))
    return ArenaProbe(int(outcome["needed"]), outcome.get("fits"), tuple(crashes))


def _probe_once(request: Dict[str, Any], timeout: float) -> Tuple[Optional[Dict[str, Any]], Optional[int], str]:
    """One probe child: (its answer, None, "") or, if it died, (None, the arena it was planning, the signal)."""
    from edgeship.device_agent.child import child_command

    env = dict(os.environ)
    proc = subprocess.Popen(child_command("edgeship.device_agent.micro", "_probe_child"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise MicroError(f"the TFLM arena probe did not finish within {timeout:.0f} s; it was stopped") from None
    planning: Optional[int] = None
    answer: Optional[Dict[str, Any]] = None
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "planning" in msg:
            planning = int(msg["planning"])
        elif "answer" in msg:
            answer = dict(msg["answer"])
    if answer is not None and proc.returncode == 0:
        return answer, None, ""
    if proc.returncode < 0:
        sig = -proc.returncode
        return None, planning, signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    tail = " | ".join(err.decode("utf-8", "replace").strip().splitlines()[-3:])
    raise MicroError(f"the TFLM arena probe exited with status {proc.returncode}: {tail[:300] or 'no output'}")


def _probe_child() -> None:
    """Entry point of the probe child: one JSON request on stdin; JSON lines on stdout (each arena planned, the answer)."""
    global _before_build
    request = json.loads(sys.stdin.read())
    model = Path(request["model"]).read_bytes()
    _crashing.update(int(n) for n in request.get("crashing") or [])

    def announce(arena: int) -> None:
        sys.stdout.write(json.dumps({"planning": arena}) + "\n")
        sys.stdout.flush()

    _before_build = announce
    answer: Dict[str, Any]
    try:
        asked = request.get("arena_size")
        fits_asked = _allocates(model, int(asked)) if asked else None
        answer = {"needed": arena_needed(model, int(request["upper"])), "fits": fits_asked}
    except UnsupportedOpError as exc:
        answer = {"error": "unsupported_op", "op": exc.op, "kind": exc.kind}
    except ArenaTooSmall as exc:
        answer = {"error": "arena_too_small", "arena_size": exc.arena_size, "needed": exc.needed, "detail": exc.detail}
    except MicroError as exc:
        answer = {"error": "micro", "message": str(exc)}
    except ValueError as exc:
        answer = {"error": "not_a_model", "message": str(exc)}
    sys.stdout.write(json.dumps({"answer": answer}) + "\n")
    sys.stdout.flush()


class MicroRuntime:
    """A TFLM interpreter with the tf.lite Interpreter surface the agent uses.

    Built like ``tf.lite.Interpreter(model_content=..., num_threads=...)`` so
    ``device_agent.runtime.Runtime.interpreter`` can construct it; ``arena_size`` is the
    board's tensor arena in bytes (default: ``DEFAULT_ARENA_UPPER``, i.e. "whatever it needs").
    TFLM is single-threaded and has no delegates: ``num_threads`` is recorded, not used, and
    asking for delegates is an error.
    """

    def __init__(self, model_content: Optional[bytes] = None, model_path: Optional[str] = None,
                 num_threads: Optional[int] = None, arena_size: Optional[int] = None,
                 experimental_delegates: Optional[List[Any]] = None, **_ignored: Any) -> None:
        if (model_content is None) == (model_path is None):
            raise ValueError("give exactly one of model_content or model_path")
        if model_content is None:
            with open(str(model_path), "rb") as f:
                model_content = f.read()
        if experimental_delegates:
            raise ValueError("tflite_micro has no delegates")
        self._model = bytes(model_content)
        self._root = _check_model(self._model)
        self.num_threads = num_threads
        self.arena_size = int(arena_size) if arena_size is not None else DEFAULT_ARENA_UPPER
        try:
            self._interp, used = _build(self._model, self.arena_size)
        except ArenaTooSmall as exc:
            raise self._explain(exc) from exc
        #: Arena bytes TFLM's recording allocator reported (None if it printed nothing).
        self.arena_used: Optional[int] = used
        graph = self._root.Subgraphs(0)
        self._inputs = [int(i) for i in graph.InputsAsNumpy()]
        self._outputs = [int(i) for i in graph.OutputsAsNumpy()]
        self._names = {i: graph.Tensors(i).Name().decode("utf-8", "replace") for i in self._inputs + self._outputs}
        self._input_details = [self._details(i, self._interp.get_input_details(p)) for p, i in enumerate(self._inputs)]
        self._output_details = [self._details(i, self._interp.get_output_details(p)) for p, i in enumerate(self._outputs)]
        self._last_inputs: Dict[int, np.ndarray] = {}

    def _explain(self, exc: ArenaTooSmall) -> ArenaTooSmall:
        """The arena error with the model's exact need filled in (a probe in a child process, only on failure)."""
        try:
            needed: Optional[int] = probe(self._model).needed
        except MicroError:
            needed = None
        detail = "" if needed is not None else str(exc)
        return ArenaTooSmall(self.arena_size, needed, detail)

    def _details(self, index: int, raw: Dict[str, Any]) -> Dict[str, Any]:
        qp = raw.get("quantization_parameters") or {}
        scales = np.asarray(qp.get("scales", []), dtype=np.float32)
        zero_points = np.asarray(qp.get("zero_points", []), dtype=np.int32)
        if scales.size == 1 and zero_points.size == 1:
            quantization: Tuple[float, int] = (float(scales[0]), int(zero_points[0]))
        else:  # not quantized, or per-axis: tf.lite reports (0.0, 0) too
            quantization = (0.0, 0)
        shape = np.asarray(raw["shape"], dtype=np.int32)
        return {
            "name": self._names[index],
            "index": index,
            "shape": shape,
            "shape_signature": shape.copy(),
            "dtype": np.dtype(raw["dtype"]).type,
            "quantization": quantization,
            "quantization_parameters": {"scales": scales, "zero_points": zero_points,
                                        "quantized_dimension": int(qp.get("quantized_dimension", 0))},
            "sparsity_parameters": {},
        }

    # -- the tf.lite Interpreter surface
    def allocate_tensors(self) -> None:
        """No-op: TFLM allocates the arena when the interpreter is built."""

    def get_input_details(self) -> List[Dict[str, Any]]:
        """One dict per model input: name, index (tensor index), shape, dtype, quantization (scale, zero point)."""
        return [dict(d) for d in self._input_details]

    def get_output_details(self) -> List[Dict[str, Any]]:
        """One dict per model output, as ``get_input_details``."""
        return [dict(d) for d in self._output_details]

    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None:
        """Copy ``value`` into a model input; its dtype and shape must match the input exactly."""
        try:
            position = self._inputs.index(int(tensor_index))
        except ValueError:
            raise ValueError(f"tensor {tensor_index} is not a model input; TFLM can only set inputs "
                             f"({', '.join(map(str, self._inputs))})") from None
        array = np.ascontiguousarray(value)
        want = self._input_details[position]
        if array.dtype != np.dtype(want["dtype"]) or tuple(array.shape) != tuple(int(d) for d in want["shape"]):
            raise ValueError(f"input {want['name']!r} wants {np.dtype(want['dtype']).name} {tuple(int(d) for d in want['shape'])}, "
                             f"got {array.dtype.name} {tuple(array.shape)}")
        self._interp.set_input(array, position)
        self._last_inputs[position] = array.copy()

    def invoke(self) -> None:
        """Run the model once on the inputs last set."""
        try:
            self._interp.invoke()
        except RuntimeError as exc:
            raise MicroError(f"TFLite Micro failed to run the model ({exc})") from exc

    def get_tensor(self, tensor_index: int) -> np.ndarray:
        """A copy of a model output (or of the input last set); TFLM keeps no other tensor readable."""
        index = int(tensor_index)
        if index in self._outputs:
            return np.asarray(self._interp.get_output(self._outputs.index(index)))
        if index in self._inputs and self._inputs.index(index) in self._last_inputs:
            return self._last_inputs[self._inputs.index(index)].copy()
        raise ValueError(f"tensor {tensor_index} is not readable: TFLM exposes only model inputs and outputs")

    def reset(self) -> None:
        """Return stateful ops (variables, LSTM state) to their initial values."""
        self._interp.reset()

    def reset_all_variables(self) -> None:
        """tf.lite's name for `reset`, so the evaluator resets state the same way on every runtime."""
        self.reset()

    def _get_full_signature_list(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """The model's signatures as tf.lite gives them: {key: {'inputs': {name: index}, 'outputs': {...}}}."""
        out: Dict[str, Dict[str, Dict[str, int]]] = {}
        for s in range(self._root.SignatureDefsLength()):
            sig = self._root.SignatureDefs(s)
            if sig.SubgraphIndex() != 0:
                continue
            key = (sig.SignatureKey() or b"").decode("utf-8", "replace")
            out[key] = {
                "inputs": {sig.Inputs(i).Name().decode("utf-8", "replace"): int(sig.Inputs(i).TensorIndex())
                           for i in range(sig.InputsLength())},
                "outputs": {sig.Outputs(i).Name().decode("utf-8", "replace"): int(sig.Outputs(i).TensorIndex())
                            for i in range(sig.OutputsLength())},
            }
        return out

    def _get_ops_details(self) -> List[Dict[str, Any]]:
        """The first subgraph's operators, as tf.lite lists them (op_name, index, inputs, outputs)."""
        graph = self._root.Subgraphs(0)
        ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            name, _ = _op_name(self._root, int(op.OpcodeIndex()))
            ops.append({"index": i, "op_name": name,
                        "inputs": np.asarray(op.InputsAsNumpy() if op.InputsLength() else [], dtype=np.int32),
                        "outputs": np.asarray(op.OutputsAsNumpy() if op.OutputsLength() else [], dtype=np.int32)})
        return ops
