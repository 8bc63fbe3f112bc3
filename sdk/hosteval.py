"""Host-side evaluation of a .tflite: the reference accuracy every board result is compared with.

`evaluate_on_host` is the one way the host runs a model over data (convert's accuracy, the
quantization debugger, the reference outputs sent with an eval, `edgeship eval-host`); it
runs device_agent.evaluate, the board's own code, on the host's TFLite runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeship.converters.data import load_npz
from edgeship.converters.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import BundleError, CorruptModelError, DatasetError, EdgeshipError, UsageError

if TYPE_CHECKING:
    from edgeship.device_agent.evaluate import EvalResult
    from edgeship.device_agent.runtime import Runtime


@dataclass(frozen=True)
class HostEval:
    """One model run over a dataset on the host: the evaluation, and the runtime that ran it."""

    result: EvalResult
    runtime_name: str
    runtime_version: str

    @property
    def runtime(self) -> dict[str, str]:
        return {"name": self.runtime_name, "version": self.runtime_version}

    @property
    def runtime_text(self) -> str:
        return f"{self.runtime_name} {self.runtime_version}"


def host_runtime(prefer: str | None = None) -> Runtime:
    """The host's TFLite runtime (`prefer`red when given); an EdgeshipError saying what to install when there is none."""
    from edgeship.device_agent.runtime import RuntimeNotFound, load_runtime

    try:
        return load_runtime(prefer)
    except RuntimeNotFound as exc:
        from edgeship.sdk.extras import RUNTIME_EXTRA

        raise EdgeshipError(f"{exc}; on this host: pip install 'edgeship[{RUNTIME_EXTRA}]'") from exc


def evaluate_on_host(model: bytes, features: Mapping[str, np.ndarray], labels: np.ndarray | None = None, *,
                     output: str | None = None, state: str = "reset", runtime: str | None = None,
                     threads: int | None = None, model_name: str = "the model",
                     data_name: str | None = None) -> HostEval:
    """Run `model` over `features` with the host's TFLite runtime (`runtime` preferred), as a board would.

    The runtime's and the evaluation's failures become edgeship errors: no runtime installed,
    a model the runtime refuses (CorruptModelError naming `model_name`), data that does not fit
    the model (DatasetError, prefixed with `data_name` when given).
    """
    from edgeship.device_agent.evaluate import EvalInputError, evaluate

    rt = host_runtime(runtime)
    try:
        interpreter = rt.interpreter(model, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        if not str(exc).strip():  # LiteRT's allocate_tensors fails without a reason when its arena cannot be had
            raise CorruptModelError(f"{model_name}: the TFLite runtime could not allocate the model's tensors (they "
                                    f"claim more memory than this machine gives it)") from exc
        raise CorruptModelError(f"{model_name}: the TFLite runtime rejected the model ({exc})") from exc
    try:
        result = evaluate(interpreter, features, labels, output=output, state=state)
    except EvalInputError as exc:
        raise DatasetError(f"{data_name}: {exc}" if data_name else str(exc)) from exc
    return HostEval(result, rt.name, rt.version)


def scored_output(model: TFLiteModel, manifest: Manifest | None, requested: str | None) -> str:
    """The output that labels score, by name: `requested` if the model has it, else the default.

    The default is the source model's first output as the bundle's manifest records it; for a
    bare .tflite, the first output of its signature (TFLite lists those by name). Never a
    position in the flatbuffer's output list, which the converter may reorder.
    """
    names = [name for name, _ in model.outputs]
    if requested is not None:
        if requested not in names:
            raise UsageError(f"{requested!r}: the model has no such output; its outputs: {', '.join(names)}",
                             option="output")
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
    model_path = Path(model_path)
    if model_path.is_dir():
        model_path = model_path / MODEL_FILE
    model = TFLiteModel.from_path(model_path)  # clear errors for missing/corrupt files before the runtime sees them
    output = scored_output(model, manifest_beside(model_path, model), output)
    data = load_npz(Path(data_path))
    if "y" not in data:
        raise DatasetError(f"{data_path}: no label array 'y'; it has {', '.join(data) or 'none'}")
    labels = data.pop("y")
    run = evaluate_on_host(model_path.read_bytes(), data, labels, output=output, state=state, runtime=runtime,
                           threads=threads, model_name=str(model_path), data_name=str(data_path))
    result = run.result
    lat = result.latency
    return {
        "model": str(model_path),
        "sha256": model.sha256,
        "data": str(data_path),
        "samples": result.samples,
        "output": result.output,
        "state": result.state,
        "accuracy": result.accuracy,
        "runtime": run.runtime_text,
        "threads": threads,
        "latency_ms": {"count": lat.count, "mean": lat.mean_ms, "std": lat.std_ms, "min": lat.min_ms,
                       "p50": lat.p50_ms, "p90": lat.p90_ms, "p95": lat.p95_ms, "p99": lat.p99_ms, "max": lat.max_ms},
    }
