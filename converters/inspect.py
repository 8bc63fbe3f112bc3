"""`edgeship inspect`: what a SavedModel, a Keras file, a .tflite or a bundle holds, as plain JSON-able dicts.

A .tflite is read with converters.tflite_model only, so inspecting one never imports
TensorFlow. SavedModels are read the way ``saved_model_cli show --all`` reads them (the
MetaGraphDef's signature_defs); Keras files are loaded with Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.sdk.errors import BundleError, CorruptModelError, ModelNotFoundError


def inspect_path(path: Path) -> dict[str, Any]:
    """Describe the model at `path`; the 'kind' key says which of the four shapes the dict has."""
    from edgeship.converters.manifest import MANIFEST_FILE

    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or directory")
    if path.is_dir() and (path / MANIFEST_FILE).exists():
        return inspect_bundle(path)
    if path.is_dir():
        return inspect_saved_model(path)
    if path.suffix.lower() == ".tflite":
        return inspect_tflite(path)
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        return inspect_keras(path)
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return inspect_tflite(path)
    raise CorruptModelError(f"{path}: unknown model type; expected .tflite, .keras, .h5 or a SavedModel directory")


def inspect_tflite(path: Path) -> dict[str, Any]:
    from edgeship.converters.manifest import compression_facts, tensor_entry
    from edgeship.converters.tflite_model import TFLiteModel

    data = Path(path).read_bytes() if Path(path).exists() else None
    if data is None:
        raise ModelNotFoundError(f"{path}: no such file")
    model = TFLiteModel.from_bytes(data, source=str(path))
    tensors = sum(len(sg.tensors) for sg in model.subgraphs)
    facts = compression_facts(model, data)
    return {
        "kind": "tflite",
        "path": str(path),
        "sha256": model.sha256,
        "size": model.size,
        "zlib_size": facts.zlib_size,
        "zlib_ratio": facts.zlib_ratio,
        "sparsity": facts.sparsity,
        "weights": [w.model_dump() for w in facts.weights],
        "weights_bytes": model.weights_bytes,
        "graph_bytes": model.size - model.weights_bytes,
        "schema_version": model.schema_version,
        "min_runtime_version": model.min_runtime_version,
        "subgraphs": len(model.subgraphs),
        "tensors": tensors,
        "inputs": [tensor_entry(n, t).model_dump(exclude={"source_order"}) for n, t in model.inputs],
        "outputs": [tensor_entry(n, t).model_dump(exclude={"source_order"}) for n, t in model.outputs],
        "operators": [{"name": u.name, "kind": u.kind, "version": u.version, "count": u.count} for u in model.op_uses],
        **model.integer_facts(),
        "stateful": model.stateful,
        "variable_tensors": model.variable_tensors(),
        "resource_variables": list(model.resource_variables),
        "signatures": [s.key for s in model.signatures],
    }


def inspect_bundle(path: Path) -> dict[str, Any]:
    """A bundle (`convert`, `bundle`): its validated manifest and the inspection of its model, checked against each other."""
    from edgeship.converters.manifest import MODEL_FILE, Manifest

    manifest = Manifest.load(path)
    model_path = Path(path) / MODEL_FILE  # the fixed name, as every reader of a bundle uses (not a path from the manifest)
    if not model_path.is_file():
        raise BundleError(f"{path}: no {MODEL_FILE}")
    model = inspect_tflite(model_path)
    if model["sha256"] != manifest.sha256:
        raise BundleError(f"{path}: {MODEL_FILE} does not match the sha256 in the manifest (edited or corrupt)")
    return {"kind": "bundle", "path": str(path), "manifest": manifest.model_dump(mode="json"), "model": model}


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def inspect_saved_model(path: Path) -> dict[str, Any]:
    """Signatures with input/output names, dtypes and shapes; variables size; assets."""
    if not (path / "saved_model.pb").exists():
        raise CorruptModelError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
    from edgeship.converters._tf import first_line, tensorflow

    tf = tensorflow()
    from tensorflow.python.tools import saved_model_utils

    try:
        saved = saved_model_utils.read_saved_model(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, IOError from TF
        raise CorruptModelError(f"{path}: cannot read saved_model.pb ({first_line(exc)})") from exc

    def tensor(info: Any) -> dict[str, Any]:
        shape = None if info.tensor_shape.unknown_rank else [
            None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
        return {"tensor": info.name, "dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": shape}

    meta_graphs = []
    for mg in saved.meta_graphs:
        sigs = []
        for key in sorted(mg.signature_def):
            if key.startswith("__"):  # __saved_model_init_op and friends are not callable signatures
                continue
            sd = mg.signature_def[key]
            sigs.append({
                "key": key,
                "method": sd.method_name,
                "inputs": [{"name": n, **tensor(sd.inputs[n])} for n in sorted(sd.inputs)],
                "outputs": [{"name": n, **tensor(sd.outputs[n])} for n in sorted(sd.outputs)],
            })
        meta_graphs.append({"tags": sorted(mg.meta_info_def.tags), "signatures": sigs})
    assets = sorted(str(p.relative_to(path / "assets")) for p in (path / "assets").rglob("*") if p.is_file()) \
        if (path / "assets").exists() else []
    return {
        "kind": "savedmodel",
        "path": str(path),
        "meta_graphs": meta_graphs,
        "variables_bytes": _dir_size(path / "variables"),
        "assets": assets,
        "keras_metadata": (path / "keras_metadata.pb").exists(),
    }


def inspect_keras(path: Path) -> dict[str, Any]:
    """Layers with their class, output shape and parameter count; total parameters."""
    from edgeship.converters.source import load_source

    source = load_source(path)
    model = source.keras_model
    layers = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
            out_shape: Any = [None if d is None else int(d) for d in shape]
        except (AttributeError, ValueError):
            out_shape = None
        layers.append({"name": layer.name, "class": type(layer).__name__, "output_shape": out_shape,
                       "params": int(layer.count_params())})
    trainable = int(sum(int(w.numpy().size) for w in model.trainable_weights))
    total = int(model.count_params())
    return {
        "kind": "keras",
        "path": str(path),
        "sha256": source.sha256,
        "keras": source.keras_flavour,
        "name": model.name,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in source.inputs],
        "outputs": source.outputs,
        "layers": layers,
        "params": total,
        "trainable_params": trainable,
    }
