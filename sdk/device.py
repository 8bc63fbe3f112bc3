"""push / bench / eval on a board: the library calls behind `edgeship push|bench|eval`.

`target` is a catalogue ``Board`` or a ``Transport`` (sdk/transport/base.py: an SSH, serial,
local or in-memory link); the catalogue's compatibility checks run only for a Board, the
ones on what the agent reports for both. Results are one versioned ``RunResult``
(sdk/results.py) that carries what makes numbers comparable: board, agent, runtime and
version, threads, delegate, model sha256.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from edgeship.converters.data import load_npz
from edgeship.converters.manifest import MODEL_FILE, Manifest
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.device_agent.options import DelegateSpec, RunOptions
from edgeship.sdk.boards import Board, open_session
from edgeship.sdk.client import Session, UploadResult, cannot_run
from edgeship.sdk.compat import ensure_compatible
from edgeship.sdk.errors import BoardNotReadyError, BundleError, DatasetError, GateError, UsageError
from edgeship.sdk.hosteval import scored_output
from edgeship.sdk.progress import OnPhase, Phase, board_label
from edgeship.sdk.results import RESULT_SCHEMA_VERSION, RunResult, gate_message, gate_misses

if TYPE_CHECKING:
    from edgeship.sdk.transport.base import Transport

Target = Union[Board, "Transport"]
UploadProgress = Callable[[str, int, int], None]
RunProgress = Callable[[dict[str, Any]], None]


def load_bundle(bundle: Path) -> tuple[Manifest, bytes]:
    """A bundle's manifest and model bytes, checked against each other."""
    import hashlib

    manifest = Manifest.load(bundle)
    path = Path(bundle) / MODEL_FILE
    if not path.exists():
        raise BundleError(f"{bundle}: no {MODEL_FILE}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise BundleError(f"{bundle}: {MODEL_FILE} does not match the sha256 in manifest.json (edited or corrupt); "
                          f"convert again")
    TFLiteModel.from_bytes(data, source=str(path))  # a crafted flatbuffer stops here, as one CorruptModelError
    return manifest, data


def _upload(session: Session, what: str, data: bytes, progress: UploadProgress | None) -> UploadResult:
    return session.upload(data, (lambda done, total: progress(what, done, total)) if progress else None)


def _uploading(phase: OnPhase | None, board: str, blobs: dict[str, bytes | None]) -> None:
    """The "uploading" phase: what goes to the board (the bars count its bytes; a blob the board holds is skipped)."""
    if phase is not None:
        phase(Phase("uploading", board, f"uploading the {' and '.join(n for n, b in blobs.items() if b is not None)} "
                                        f"to {board_label(board)}"))


def push(bundle: Path, target: Target, *, accept_new_host: bool = False,
         progress: UploadProgress | None = None, phase: OnPhase | None = None) -> dict[str, Any]:
    """Place a bundle's model on a board (resumable; a no-op when it is already there).

    ``phase`` hears each phase a person waits through (sdk.progress): connecting, placing the
    agent (SSH), uploading; ``progress`` the upload's bytes.
    """
    manifest, model = load_bundle(bundle)
    board = target if isinstance(target, Board) else None
    if board is not None:
        ensure_compatible(manifest, board, model=model)
    session = open_session(target, accept_new_host=accept_new_host, phase=phase)
    try:
        ensure_compatible(manifest, board, _runtime(session))
        _uploading(phase, target.name, {"model": model})
        up = _upload(session, "model", model, progress)
        return {"schema_version": RESULT_SCHEMA_VERSION, "board": target.name, "agent": _agent(session),
                "model_sha256": manifest.sha256, "upload": asdict(up)}
    except (KeyboardInterrupt, SystemExit):
        session.abort()  # mid-request: no goodbye; the agent keeps the partial upload for the next push
        raise
    finally:
        session.close()


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _runtime(session: Session) -> dict[str, Any] | None:
    """The runtime the board's agent reported in hello (name, version, tflite_level, custom_ops), if it has one."""
    rt = session.info.get("runtime") or {}
    return dict(rt) if rt.get("name") else None


def _agent(session: Session) -> dict[str, Any]:
    i = session.info
    return {"version": i.get("agent_version"), "runtime": i.get("runtime"), "python": i.get("python"),
            "cpu": i.get("cpu"), "delegates": i.get("delegates"), "rtt_ms": i.get("rtt_ms")}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def host_reference(model: bytes, data: dict[str, np.ndarray], labels: np.ndarray | None,
                   runtime: str | None = None, output: str | None = None, state: str = "reset") -> dict[str, Any]:
    """What the host's interpreter says on the same data (the `output` labels score): what a board is compared with."""
    from edgeship.sdk.hosteval import evaluate_on_host

    run = evaluate_on_host(model, data, labels, output=output, state=state, runtime=runtime)
    result = run.result
    return {"outputs": result.outputs[result.output], "output": result.output, "accuracy": result.accuracy,
            "runtime": run.runtime}


def parse_delegates(delegate: Iterable[str], *, required: bool = False) -> tuple[DelegateSpec, ...]:
    """``NAME[:k=v,...]`` values as a run's delegates: names from the board's allow-list, never paths."""
    from edgeship.device_agent.delegates import NAME

    out: list[DelegateSpec] = []
    for d in delegate:
        name, _, raw = d.partition(":")
        if not NAME.match(name):
            raise UsageError(f"{d!r}: give the name of a delegate the board allows (boards.yaml `delegates`, "
                             f"`edgeship boards ping`), not a library path; the board's agent loads only the "
                             f"libraries its operator allowed, by name", option="delegate")
        options: dict[str, str] = {}
        for kv in filter(None, raw.split(",")):
            key, sep, value = kv.partition("=")
            if not sep or not key:
                raise UsageError(f"{d!r}: options are key=value pairs separated by commas", option="delegate")
            options[key] = value
        out.append(DelegateSpec(name, options, required))
    return tuple(out)


def bench(bundle: Path, target: Target, *, options: RunOptions | None = None, data: Path | None = None,
          accept_new_host: bool = False, upload_progress: UploadProgress | None = None,
          run_progress: RunProgress | None = None, phase: OnPhase | None = None) -> RunResult:
    """Latency of a bundle's model on a board: push it (and `data`, else generated inputs), then bench it.

    ``phase`` hears each phase a person waits through (sdk.progress: starting an emulated board,
    connecting, placing the agent, uploading, running); ``upload_progress`` the bytes of each
    upload, ``run_progress`` the agent's progress messages (runs done of at least `runs`, for at
    least `min_seconds`).
    """
    return _run("bench", bundle, target, data, options or RunOptions(), accept_new_host, upload_progress, run_progress,
                phase)


def evaluate(bundle: Path, target: Target, data: Path, *, options: RunOptions | None = None,
             accept_new_host: bool = False, upload_progress: UploadProgress | None = None,
             run_progress: RunProgress | None = None, phase: OnPhase | None = None) -> RunResult:
    """Accuracy of a bundle's model on a board over `data` (x, y), and agreement with the host's outputs on it.

    ``options.output`` names the output that y scores (default: the source model's first, from
    the manifest); the board is told the name, so it scores the same output. The callbacks are
    bench's.
    """
    return _run("eval", bundle, target, data, options or RunOptions(), accept_new_host, upload_progress, run_progress,
                phase)


def run(kind: str, bundle: Path, target: Target, *, data: Path | None = None, options: RunOptions | None = None,
        accept_new_host: bool = False, upload_progress: UploadProgress | None = None,
        run_progress: RunProgress | None = None, phase: OnPhase | None = None) -> RunResult:
    """`bench` or `evaluate` by name (what a fleet run calls for each board)."""
    if kind not in ("bench", "eval"):
        raise UsageError(f"a run is bench or eval, not {kind!r}", option="kind")
    return _run(kind, bundle, target, data, options or RunOptions(), accept_new_host, upload_progress, run_progress,
                phase)


def _run(kind: str, bundle: Path, target: Target, data: Path | None, options: RunOptions, accept_new_host: bool,
         upload_progress: UploadProgress | None, run_progress: RunProgress | None,
         phase: OnPhase | None = None) -> RunResult:
    """Push the bundle (and data), then bench or eval it on the board; one result."""
    manifest, model = load_bundle(bundle)
    dataset_bytes = None
    reference = None
    if kind == "eval":
        options = replace(options, output=scored_output(TFLiteModel.from_bytes(model, source=str(bundle)), manifest,
                                                        options.output))
    if data is not None:
        arrays = load_npz(data)
        labels = arrays.pop("y", None)
        arrays.pop("reference", None)
        if kind == "eval":
            if labels is None:
                raise DatasetError(f"{data}: eval needs labels (array 'y')")
            reference = host_reference(model, arrays, labels, output=options.output, state=options.state)
            arrays["y"] = labels
            arrays["reference"] = reference["outputs"]
        dataset_bytes = _npz_bytes(arrays)
    elif kind == "eval":
        raise DatasetError("eval needs a test data file (.npz with x and y)", option="data")
    wire = options.to_json()
    delegates = wire.get("delegates")
    board = target if isinstance(target, Board) else None
    if board is not None:
        ensure_compatible(manifest, board, model=model, delegates=delegates)
    session = open_session(target, accept_new_host=accept_new_host, phase=phase)
    try:
        problem = cannot_run(session.info, target.name)
        if problem:  # before any upload: one line that names what is missing and `boards setup`
            raise BoardNotReadyError(problem)
        ensure_compatible(manifest, board, _runtime(session), delegates=delegates,
                          board_delegates=session.info.get("external_delegates"))
        _uploading(phase, target.name, {"model": model, "data": dataset_bytes})
        up_model = _upload(session, "model", model, upload_progress)
        up_data = _upload(session, "data", dataset_bytes, upload_progress) if dataset_bytes is not None else None
        if phase is not None:
            rt = _runtime(session) or {}
            on = " ".join(str(v) for v in (rt.get("name"), rt.get("version")) if v)
            phase(Phase("running", target.name, f"{kind} of {Path(bundle).resolve().name} ({manifest.sha256[:12]}) on "
                                                f"{board_label(target.name)}" + (f" with {on}" if on else "")))
        result = session.run(kind, manifest.sha256, up_data.sha256 if up_data else None, wire, progress=run_progress)
        return RunResult(
            kind=kind, board=target.name, agent=_agent(session), bundle=str(bundle), model_sha256=manifest.sha256,
            model_size=manifest.size, recipe=manifest.recipe.get("name"), io=manifest.recipe.get("io"),
            dataset_sha256=up_data.sha256 if up_data else None, options=wire,
            data_file_sha256=_file_sha256(data) if data is not None else None,
            upload={"model": asdict(up_model), "data": asdict(up_data) if up_data else None}, result=result,
            host={"accuracy": reference["accuracy"], "runtime": reference["runtime"]} if reference is not None else None)
    except (KeyboardInterrupt, SystemExit):
        session.abort()  # mid-request: no goodbye; the agent keeps partial uploads for the next command
        raise
    finally:
        session.close()


def check_gates(result: RunResult, *, min_accuracy: float | None = None, max_p90_ms: float | None = None,
                min_agreement: float | None = None) -> None:
    """Raise RunError if the run failed, GateError naming every gate the result missed (CI exits non-zero on it)."""
    failed = result.run_error()
    if failed is not None:
        raise failed
    missed = gate_misses(result, min_accuracy=min_accuracy, max_p90_ms=max_p90_ms, min_agreement=min_agreement)
    if missed:
        raise GateError(gate_message(result.board, missed))
