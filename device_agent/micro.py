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
* It does not run the flatbuffer verifier; only the file identifier and the structure this
  module reads are checked here.

The arena numbers are those of this 64-bit host build with reference kernels: a 32-bit
MCU build has smaller structs, and optimized kernels (CMSIS-NN, ...) ask for different
scratch buffers, so treat them as an estimate of a real board's need, not the figure itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

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
        want = f"needs {needed} bytes" if needed is not None else "needs more"
        super().__init__(f"the model does not fit a {arena_size}-byte tensor arena (it {want})"
                         + (f": {detail}" if detail else ""))


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


def _build(model: bytes, arena_size: int) -> Tuple[Any, Optional[int]]:
    """A TFLM interpreter for ``model`` with ``arena_size`` bytes, and the arena bytes it used (None if unreported)."""
    if arena_size < MIN_ARENA:
        raise ArenaTooSmall(arena_size, detail=f"arenas below {MIN_ARENA} bytes are not tried (they crash the TFLM wrapper)")
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
    """(whether ``model`` allocates in ``arena_size`` bytes, the bytes it needs).

    When the need exceeds the probe limit (``max(DEFAULT_ARENA_UPPER, arena_size)``) the
    second value is that limit + 1, a lower bound. Unsupported ops raise UnsupportedOpError.
    """
    upper = max(DEFAULT_ARENA_UPPER, int(arena_size))
    try:
        needed = arena_needed(model, upper)
    except ArenaTooSmall:
        return False, upper + 1
    return needed <= arena_size, needed


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
        """The arena error with the model's exact need filled in (a few extra allocations, only on failure)."""
        try:
            needed: Optional[int] = arena_needed(self._model)
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
