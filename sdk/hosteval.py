"""Host-side evaluation of a .tflite: the reference accuracy every board result is compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.converters.data import load_npz
from edgeship.converters.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import BundleError, CorruptModelError, DatasetError, EdgeshipError, UsageError


def scored_output(model: TFLiteModel, manifest: Manifest | None, requested: str | None) -> str:
    """The output that labels score, by name: `requested` (--output) if the model has it, else the default.

    The default is the source model's first output as the bundle's manifest records it; for a
    bare .tflite, the first output of its signature (TFLite lists those by name). Never a
    position in the flatbuffer's output list, which the converter may reorder.
    """
    names = [name for name, _ in model.outputs]
    if requested is not None:
        if requested not in names:
            raise UsageError(f"--output {requested!r}: the model has no such output; its outputs: {', '.join(names)}")
        return requested
    if manifest is not None:
        return manifest.first_output()
    sig = next((s for s in model.signatures if s.subgraph_index == 0), None)
    if sig is not None and sig.outputs:
        return sig.outputs[0][0]
    if not names:
        raise CorruptModelError("the model has no outputs")
    return names[0]


def manifest_beside(model_path: Path, model: TFLiteModel) -> Manifest | None:
    """The manifest of the bundle a model file sits in, if it is this model's (same sha256)."""
    path = Path(model_path).parent / MANIFEST_FILE
    if Path(model_path).name != MODEL_FILE or not path.exists():
        return None
    manifest = Manifest.load(path.parent)
    if manifest.sha256 != model.sha256:
        raise BundleError(f"{path.parent}: {MODEL_FILE} does not match the sha256 in {MANIFEST_FILE} "
                          f"(edited or corrupt); convert again")
    return manifest


def eval_host(model_path: Path, data_path: Path, *, output: str | None = None, threads: int | None = None,
              runtime: str | None = None, state: str = "reset") -> dict[str, Any]:
    """Accuracy and per-invoke latency of a model (.tflite or bundle) over an .npz dataset (x or per-input arrays, y).

    `output` names the output that y scores (see `scored_output` for the default); `state`
    says whether variable tensors are reset before every sample (device_agent.evaluate).
    """
    from edgeship.device_agent.evaluate import EvalInputError, evaluate
    from edgeship.device_agent.runtime import RuntimeNotFound, load_runtime

    model_path = Path(model_path)
    if model_path.is_dir():
        model_path = model_path / MODEL_FILE
    model = TFLiteModel.from_path(model_path)  # clear errors for missing/corrupt files before the runtime sees them
    output = scored_output(model, manifest_beside(model_path, model), output)
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
        if not str(exc).strip():  # LiteRT's allocate_tensors fails without a reason when its arena cannot be had
            raise CorruptModelError(f"{model_path}: the TFLite runtime could not allocate the model's tensors (they "
                                    f"claim more memory than this machine gives it)") from exc
        raise CorruptModelError(f"{model_path}: the TFLite runtime rejected the model ({exc})") from exc
    try:
        result = evaluate(interpreter, data, labels, output=output, state=state)
    except EvalInputError as exc:
        raise DatasetError(f"{data_path}: {exc}") from exc
    lat = result.latency
    return {
        "model": str(model_path),
        "sha256": model.sha256,
        "data": str(data_path),
        "samples": result.samples,
        "output": result.output,
        "state": result.state,
        "accuracy": result.accuracy,
        "runtime": f"{rt.name} {rt.version}",
        "threads": threads,
        "latency_ms": {"count": lat.count, "mean": lat.mean_ms, "std": lat.std_ms, "min": lat.min_ms,
                       "p50": lat.p50_ms, "p90": lat.p90_ms, "p95": lat.p95_ms, "p99": lat.p99_ms, "max": lat.max_ms},
    }
