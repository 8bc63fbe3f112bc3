"""Any .tflite -> bundle: the model a user brings from another tool, described like edgeship's own conversions.

`edgeship bundle MODEL.tflite --out DIR` needs no TensorFlow: everything in the manifest is
read from the flatbuffer with edgeship's own reader (converters.tflite_model), the same
facts `convert` records (converters.manifest.model_facts), and ops/ comes from the same
generator. The bundle is staged and installed atomically like a conversion's.

What the file *is* cannot come from a recipe, so the manifest's recipe is
``{"name": "prebuilt", "precision": ..., "io": ..., "producer": ...}``, inferred from the
tensors (see `precision_of`) and documented in docs/manifest.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeship.converters.convert import ConversionResult, _install, _prepare_output
from edgeship.converters.manifest import MODEL_FILE, OPS_DIR, Manifest, SourceInfo, model_facts
from edgeship.converters.opsgen import OpSet, write_ops_dir
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import CorruptModelError, ModelNotFoundError

Progress = Callable[[str], None]
PREBUILT = "prebuilt"


def precision_of(model: TFLiteModel) -> str:
    """What arithmetic the model does, read from its tensors (not from how it was made, which is unknown).

    ``int8``/``int16x8``/``uint8``: integer ops only (with integer or float I/O); ``dynamic``:
    float ops on int8 constant weights (dynamic-range quantization); ``float16``: float16
    constant weights dequantized at load; ``mixed``: integer and float ops together;
    ``float32``: everything else.
    """
    facts = model.integer_facts()
    tensors = [t for sg in model.subgraphs for t in sg.tensors]
    if not facts["float_ops"]:
        activations = {t.dtype for t in tensors if not t.is_constant and t.quantization is not None
                       and t.dtype in ("int8", "uint8", "int16")}
        if "int16" in activations:
            return "int16x8"
        if activations == {"uint8"}:
            return "uint8"
        if activations:
            return "int8"
    quantized_activations = any(not t.is_constant and t.quantization is not None and not t.is_float for t in tensors)
    int8_weights = any(t.is_constant and t.dtype == "int8" for t in tensors)
    if facts["float_ops"] and quantized_activations:
        return "mixed"
    if int8_weights and facts["float_ops"]:
        return "dynamic"
    if any(t.is_constant and t.dtype == "float16" for t in tensors):
        return "float16"
    return "float32"


def _io_type(model: TFLiteModel) -> str:
    dtypes = sorted({t.dtype for _, t in model.inputs + model.outputs})
    return dtypes[0] if len(dtypes) == 1 else "mixed"


def _signature_order(model: TFLiteModel, which: str) -> list[str]:
    """The names in the order of the model's SignatureDef (what a bare .tflite scores first), else the subgraph's."""
    sig = next((s for s in model.signatures if s.subgraph_index == 0), None)
    if sig is not None:
        return [name for name, _ in (sig.inputs if which == "inputs" else sig.outputs)]
    return [name for name, _ in (model.inputs if which == "inputs" else model.outputs)]


def describe_prebuilt(model: TFLiteModel) -> dict[str, Any]:
    """The manifest's `recipe` for a .tflite edgeship did not make: what it is, not how it was made."""
    return {"name": PREBUILT, "precision": precision_of(model), "io": _io_type(model),
            "producer": model.description or None}


def bundle_tflite(path: Path, out: Path, *, force: bool = False, progress: Progress | None = None) -> ConversionResult:
    """Write a bundle (model.tflite, manifest.json, ops/) in `out` from any .tflite file.

    The file is parsed and checked first: a missing, corrupt or truncated file is one
    CorruptModelError/ModelNotFoundError naming it, and nothing is written.
    """
    say = progress or (lambda _msg: None)
    path = Path(path)
    if path.is_dir():
        raise CorruptModelError(f"{path}: is a directory; `edgeship bundle` takes a .tflite file "
                                f"(convert a SavedModel directory with `edgeship convert`)")
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    say(f"reading {path}")
    model = TFLiteModel.from_bytes(data, source=str(path))
    if not model.subgraphs:
        raise CorruptModelError(f"{path}: the TFLite model has no subgraph; there is nothing to run")
    staging = _prepare_output(Path(out), force)
    try:
        manifest = _bundle_into(path, data, model, staging)
        _install(staging, Path(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return ConversionResult(Path(out), manifest)


def _bundle_into(path: Path, data: bytes, model: TFLiteModel, staging: Path) -> Manifest:
    from edgeship.device_agent import __version__

    (staging / MODEL_FILE).write_bytes(data)
    write_ops_dir(OpSet.of([(MODEL_FILE, model)]), staging / OPS_DIR)
    sig = next((s for s in model.signatures if s.subgraph_index == 0), None)
    batches = {t.shape[0] for _, t in model.inputs if t.shape}
    # model_facts reads every flatbuffer fact, the stateful flag included once the manifest has it.
    manifest = Manifest(
        **model_facts(model, data, _signature_order(model, "inputs"), _signature_order(model, "outputs")),
        recipe=describe_prebuilt(model),
        batch=batches.pop() if len(batches) == 1 else 1,
        source=SourceInfo(path=str(path), kind="tflite", sha256=model.sha256, signature=sig.key if sig else ""),
        tools={"edgeship": __version__},
    )
    manifest.write(staging)
    return manifest
