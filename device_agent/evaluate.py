"""Run a model over a dataset: the evaluation both the host reference and the board use.

Inputs are quantized with the model's own scale/zero-point, outputs dequantized, and
one output's argmax (chosen by name, never by position: the converter may reorder
outputs) is compared with the labels. Timing is taken around
``invoke()`` only, with ``perf_counter_ns``, on the machine that runs the model.

The metrics are here once for both sides: top-1, latency statistics, agreement of two
models' outputs (`compare`: a board's with the host's, or int8 with float) and the
confusion matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from edgeship.device_agent.options import STATES
from edgeship.device_agent.quant import dequantize, quantize


class EvalInputError(ValueError):
    """The dataset does not fit the model's inputs; the message names the input and the mismatch."""


def pick_output(names: "list[str]", requested: Optional[str]) -> str:
    """The output that labels score: `requested` when given (it must be one of `names`), else the first."""
    if not names:
        raise EvalInputError("the model has no outputs")
    if requested is None:
        return names[0]
    if requested not in names:
        raise EvalInputError(f"the model has no output {requested!r}; its outputs: {', '.join(names)}")
    return requested


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: the argmax of each sample's scores against integer class labels."""
    n = len(labels)
    return float(np.mean(np.asarray(scores).reshape(n, -1).argmax(axis=1) == np.asarray(labels).reshape(n)))


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_ns(cls, samples_ns: List[int]) -> "LatencyStats":
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p = np.percentile(ms, [50, 90, 95, 99])
        return cls(len(ms), float(ms.mean()), float(ms.std()), float(ms.min()), float(p[0]), float(p[1]),
                   float(p[2]), float(p[3]), float(ms.max()))

    def to_json(self) -> Dict[str, Any]:
        """The result documents' latency_ms: count, then mean/std/min/percentiles/max in milliseconds."""
        return {"count": self.count, "mean": self.mean_ms, "std": self.std_ms, "min": self.min_ms,
                "p50": self.p50_ms, "p90": self.p90_ms, "p95": self.p95_ms, "p99": self.p99_ms, "max": self.max_ms}


def confusion(predicted: Any, labels: Any, max_classes: int = 64) -> Optional[List[List[int]]]:
    """Confusion matrix (rows: true class, columns: predicted), for up to max_classes classes."""
    n = int(max(predicted.max(initial=0), labels.max(initial=0))) + 1
    if n > max_classes or labels.min(initial=0) < 0:
        return None
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (labels.reshape(-1), predicted.reshape(-1)), 1)
    return matrix.tolist()


def compare(outputs: Any, reference: Any) -> Dict[str, Any]:
    """Agreement of a model's (dequantized) outputs with reference outputs: a board's with the host's, int8 with float.

    argmax agreement, RMSE, max abs error and cosine (mean, min) over samples; an "error"
    entry instead when the shapes differ or either side has NaN or infinity.
    """
    a = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if a.shape != b.shape:
        return {"error": f"reference has shape {b.shape[1:]} per sample, outputs {a.shape[1:]}"}
    for what, values in (("the model's outputs", a), ("the host's reference outputs", b)):
        if not np.all(np.isfinite(values)):  # a model can make NaN from finite inputs (LOG of a negative, say)
            return {"error": f"{what} contain NaN or infinity in {int(np.sum(~np.isfinite(values).all(1)))} of "
                             f"{len(values)} samples; no agreement is computed"}
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1), 1.0)
    return {"argmax_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "rmse": float(np.sqrt(np.mean((a - b) ** 2))), "max_abs_error": float(np.max(np.abs(a - b))),
            "cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos))}


@dataclass(frozen=True)
class EvalResult:
    samples: int
    accuracy: Optional[float]  # top-1, as a fraction; None without labels
    latency: LatencyStats
    outputs: Dict[str, np.ndarray] = field(repr=False)  # dequantized, one row per sample
    times_ns: List[int] = field(default_factory=list, repr=False)  # per invoke, in order
    output: str = ""  # the output that `accuracy` scored
    state: str = "reset"  # how variable tensors were treated between samples (STATES)


def signature_io(interpreter: Any) -> "tuple[list[tuple[str, dict]], list[tuple[str, dict]]]":
    """(name, detail) for inputs and outputs, named by the model's first signature when it has one."""
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    try:
        sigs = interpreter._get_full_signature_list()
    except AttributeError:
        sigs = {}
    if sigs:
        sig = next(iter(sigs.values()))
        in_names = {idx: name for name, idx in sig.get("inputs", {}).items()}
        out_names = {idx: name for name, idx in sig.get("outputs", {}).items()}
    else:
        in_names, out_names = {}, {}
    return ([(in_names.get(d["index"], d["name"]), d) for d in ins],
            [(out_names.get(d["index"], d["name"]), d) for d in outs])


def match_inputs(features: Mapping[str, np.ndarray], inputs: "list[tuple[str, dict]]") -> Dict[str, np.ndarray]:
    """Pair dataset arrays with model inputs: key 'x' for a one-input model, else one key per input name."""
    if len(inputs) == 1 and inputs[0][0] not in features and "x" in features:
        arrays = {inputs[0][0]: features["x"]}
    else:
        missing = [name for name, _ in inputs if name not in features]
        if missing:
            raise EvalInputError(
                f"dataset has no array for input(s) {', '.join(missing)}; "
                f"it has {', '.join(sorted(features)) or 'nothing'} (use key 'x' for a one-input model)")
        arrays = {name: features[name] for name, _ in inputs}
    if not inputs:
        raise EvalInputError("the model has no inputs")
    n = None
    for name, detail in inputs:
        arr = arrays[name]
        want = tuple(int(d) for d in detail["shape"][1:])
        if arr.ndim == 0 or tuple(arr.shape[1:]) != want:
            raise EvalInputError(
                f"input {name!r}: dataset samples have shape {tuple(arr.shape[1:])}, the model expects {want}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise EvalInputError(f"input {name!r}: dataset dtype {arr.dtype} is not numeric (integer or float)")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise EvalInputError(f"input {name!r}: the dataset contains NaN or infinity")
        if n is not None and len(arr) != n:
            raise EvalInputError(f"inputs have different sample counts ({n} and {len(arr)})")
        n = len(arr)
    return arrays


def check_labels(labels: np.ndarray, samples: int) -> None:
    """Labels top-1 can score: integer class indices, one per sample (shape (n,) or (n, 1))."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise EvalInputError(f"labels 'y' are {labels.dtype}; they must be integer class indices (e.g. int64), "
                             f"one per sample")
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
        raise EvalInputError(f"labels 'y' have shape {labels.shape}; give one class index per sample, shape (n,)")
    if len(labels) != samples:
        raise EvalInputError(f"dataset has {samples} samples but {len(labels)} labels")


def check_reference(reference: np.ndarray, samples: int) -> None:
    """Host reference outputs agreement can use: real numbers, one row per sample (NaN: see compare)."""
    reference = np.asarray(reference)
    if not (np.issubdtype(reference.dtype, np.floating) or np.issubdtype(reference.dtype, np.integer)):
        raise EvalInputError(f"reference outputs are {reference.dtype}; they must be real numbers")
    if reference.ndim == 0 or len(reference) != samples:
        raise EvalInputError(f"reference outputs have shape {reference.shape}; the dataset has {samples} samples")


def evaluate(interpreter: Any, features: Mapping[str, np.ndarray], labels: Optional[np.ndarray] = None,
             output: Optional[str] = None, state: str = "reset") -> EvalResult:
    """Run every sample through an allocated interpreter; batches follow the model's static batch size.

    `output` names the output the labels score (default: the model's first output as the
    interpreter lists it; callers that know the source model's order pass its first output).
    `state` "reset" returns variable tensors (a fused LSTM's state, say) to their initial values
    before every batch, so each sample is scored alone, as it was in training; "keep" carries
    them over, for streaming models fed a sequence in order. The reset is not timed.
    """
    if state not in STATES:
        raise EvalInputError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    reset = getattr(interpreter, "reset_all_variables", None) if state == "reset" else None
    inputs, outputs = signature_io(interpreter)
    target = pick_output([name for name, _ in outputs], output)
    arrays = match_inputs(features, inputs)
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise EvalInputError("dataset has no samples")
    if labels is not None:
        check_labels(labels, n)
    batch = int(inputs[0][1]["shape"][0]) or 1
    collected: Dict[str, List[np.ndarray]] = {name: [] for name, _ in outputs}
    times: List[int] = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        if reset is not None:
            reset()
        for name, detail in inputs:
            chunk = arrays[name][start:stop]
            if len(chunk) < batch:  # pad the last batch by repeating its final sample
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            interpreter.set_tensor(detail["index"], quantize(chunk, detail))
        t0 = time.perf_counter_ns()
        interpreter.invoke()
        times.append(time.perf_counter_ns() - t0)
        for name, detail in outputs:
            collected[name].append(dequantize(interpreter.get_tensor(detail["index"]), detail)[: stop - start])
    results = {name: np.concatenate(parts) for name, parts in collected.items()}
    accuracy = top1(results[target], labels) if labels is not None else None
    return EvalResult(n, accuracy, LatencyStats.from_ns(times), results, times, target, state)
