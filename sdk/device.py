"""push / bench / eval on a board: the library calls behind `edgeship push|bench|eval`.

Results are one versioned JSON document that carries what makes numbers comparable:
board, agent, runtime and version, threads, delegate, model sha256.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.converters.data import load_npz
from edgeship.converters.manifest import MODEL_FILE, Manifest
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.boards import Board, open_session
from edgeship.sdk.client import Session, UploadResult, cannot_run
from edgeship.sdk.compat import ensure_compatible
from edgeship.sdk.errors import BoardNotReadyError, BundleError, DatasetError, GateError, RunError
from edgeship.sdk.hosteval import scored_output

RESULT_SCHEMA_VERSION = 1
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


def push(bundle: Path, board: Board, *, accept_new_host: bool = False,
         progress: UploadProgress | None = None) -> dict[str, Any]:
    """Place a bundle's model on a board (resumable; a no-op when it is already there)."""
    manifest, model = load_bundle(bundle)
    ensure_compatible(manifest, board, model=model)
    session = open_session(board, accept_new_host=accept_new_host)
    try:
        ensure_compatible(manifest, board, _runtime(session))
        up = _upload(session, "model", model, progress)
        return {"schema_version": RESULT_SCHEMA_VERSION, "board": board.name, "agent": _agent(session),
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


def run_on_board(kind: str, bundle: Path, board: Board, *, data: Path | None = None,
                 options: dict[str, Any] | None = None, accept_new_host: bool = False,
                 upload_progress: UploadProgress | None = None, run_progress: RunProgress | None = None) -> dict[str, Any]:
    """Push the bundle (and data), then bench or eval it on the board; one result document.

    For eval, `options["output"]` names the output that y scores (default: the source model's
    first, from the manifest); the board is told the name, so it scores the same output.
    """
    manifest, model = load_bundle(bundle)
    dataset_bytes = None
    reference = None
    options = dict(options or {})
    if kind == "eval":
        options["output"] = scored_output(TFLiteModel.from_bytes(model, source=str(bundle)), manifest,
                                          options.get("output"))
    if data is not None:
        arrays = load_npz(data)
        labels = arrays.pop("y", None)
        arrays.pop("reference", None)
        if kind == "eval":
            if labels is None:
                raise DatasetError(f"{data}: eval needs labels (array 'y')")
            reference = host_reference(model, arrays, labels, output=options["output"],
                                       state=options.get("state") or "reset")
            arrays["y"] = labels
            arrays["reference"] = reference["outputs"]
        dataset_bytes = _npz_bytes(arrays)
    elif kind == "eval":
        raise DatasetError("eval needs --data TEST.npz (x and y)")
    ensure_compatible(manifest, board, model=model, delegates=options.get("delegates"))
    session = open_session(board, accept_new_host=accept_new_host)
    try:
        problem = cannot_run(session.info, board.name)
        if problem:  # before any upload: one line that names what is missing and `boards setup`
            raise BoardNotReadyError(problem)
        ensure_compatible(manifest, board, _runtime(session), delegates=options.get("delegates"),
                          board_delegates=session.info.get("external_delegates"))
        up_model = _upload(session, "model", model, upload_progress)
        up_data = _upload(session, "data", dataset_bytes, upload_progress) if dataset_bytes is not None else None
        result = session.run(kind, manifest.sha256, up_data.sha256 if up_data else None, options,
                             progress=run_progress)
        doc = {"schema_version": RESULT_SCHEMA_VERSION, "kind": kind, "board": board.name, "agent": _agent(session),
               "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "bundle": str(bundle), "model_sha256": manifest.sha256, "model_size": manifest.size,
               "recipe": manifest.recipe.get("name"), "io": manifest.recipe.get("io"),
               "dataset_sha256": up_data.sha256 if up_data else None, "options": options,
               "data_file_sha256": _file_sha256(data) if data is not None else None,
               "upload": {"model": asdict(up_model), "data": asdict(up_data) if up_data else None},
               "result": result}
        if reference is not None:
            doc["host"] = {"accuracy": reference["accuracy"], "runtime": reference["runtime"]}
        return doc
    except (KeyboardInterrupt, SystemExit):
        session.abort()  # mid-request: no goodbye; the agent keeps partial uploads for the next command
        raise
    finally:
        session.close()


def check_gates(doc: dict[str, Any], *, min_accuracy: float | None = None, max_p90_ms: float | None = None,
                min_agreement: float | None = None) -> None:
    """Raise GateError naming every gate the result missed (CI exits non-zero on it)."""
    result = doc["result"]
    if result.get("status") != "ok":
        raise RunError(str(result.get("status")), f"the run failed on {doc['board']}: {result.get('status')}: "
                                                  f"{result.get('message', '')}")
    missed = []
    if min_accuracy is not None:
        acc = result.get("accuracy")
        if acc is None or acc * 100 < min_accuracy:
            missed.append(f"accuracy {'n/a' if acc is None else f'{acc * 100:.2f}%'} < --min-accuracy {min_accuracy}%")
    if max_p90_ms is not None:
        p90 = result.get("latency_ms", {}).get("p90")
        if p90 is None or p90 > max_p90_ms:
            missed.append(f"p90 latency {p90:.3f} ms > --max-p90-ms {max_p90_ms}" if p90 is not None else "no latency")
    if min_agreement is not None:
        agr = (result.get("agreement") or {}).get("argmax_agreement")
        if agr is None or agr * 100 < min_agreement:
            missed.append(f"argmax agreement {'n/a' if agr is None else f'{agr * 100:.2f}%'} < --min-agreement {min_agreement}%")
    if missed:
        raise GateError(f"{doc['board']} missed its gates: " + "; ".join(missed))
