"""Host-side evaluation of a .tflite: the reference accuracy every board result is compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converters.data import load_npz
from converters.tflite_model import TFLiteModel
from sdk.errors import CorruptModelError, DatasetError, EdgeshipError


def eval_host(model_path: Path, data_path: Path, *, output: str | None = None, threads: int | None = None,
              runtime: str | None = None) -> dict[str, Any]:
    """Accuracy and per-invoke latency of a model over an .npz dataset (x or per-input arrays, and y)."""
    from device_agent.evaluate import EvalInputError, evaluate
    from device_agent.runtime import RuntimeNotFound, load_runtime

    model_path = Path(model_path)
    model = TFLiteModel.from_path(model_path)  # clear errors for missing/corrupt files before the runtime sees them
    data = load_npz(Path(data_path))
    if "y" not in data:
        raise DatasetError(f"{data_path}: no label array 'y'; it has {', '.join(data) or 'none'}")
    labels = data.pop("y")
    try:
        rt = load_runtime(runtime)
    except RuntimeNotFound as exc:
        raise EdgeshipError(str(exc)) from exc
    try:
        interpreter = rt.interpreter(model_path.read_bytes(), num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise CorruptModelError(f"{model_path}: the TFLite runtime rejected the model ({exc})") from exc
    try:
        result = evaluate(interpreter, data, labels, output=output)
    except EvalInputError as exc:
        raise DatasetError(f"{data_path}: {exc}") from exc
    lat = result.latency
    return {
        "model": str(model_path),
        "sha256": model.sha256,
        "data": str(data_path),
        "samples": result.samples,
        "accuracy": result.accuracy,
        "runtime": f"{rt.name} {rt.version}",
        "threads": threads,
        "latency_ms": {"count": lat.count, "mean": lat.mean_ms, "std": lat.std_ms, "min": lat.min_ms,
                       "p50": lat.p50_ms, "p90": lat.p90_ms, "p95": lat.p95_ms, "p99": lat.p99_ms, "max": lat.max_ms},


    }
