"""Load the model a user brings (.keras, .h5, SavedModel) and export it with static shapes.

Every source becomes the same thing before conversion: a SavedModel signature whose
inputs have a fixed batch size and keep the source's input and output names. Keras 3
models cannot go through ``from_keras_model`` (broken since TF 2.16), and a fixed
batch keeps a Flatten from leaving SHAPE/STRIDED_SLICE/PACK in the graph.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeship.converters._tf import first_line, tensorflow
from edgeship.converters.data import InputSpec
from edgeship.sdk.errors import (
    CorruptModelError,
    DynamicShapeError,
    EdgeshipError,
    ModelNotFoundError,
    SignatureNotFoundError,
    UnsupportedLayerError,
    UsageError,
)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's relative paths and contents in sorted order."""
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class SourceModel:
    """A loaded model with its I/O described the same way for every format."""

    path: Path
    kind: str  # "keras" | "savedmodel"
    sha256: str
    inputs: list[InputSpec]
    outputs: list[str]
    signature: str
    keras_model: Any = field(default=None, repr=False)  # Keras 3 or tf_keras model
    keras_flavour: str | None = None  # "keras" (Keras 3) | "tf_keras"
    _loaded: Any = field(default=None, repr=False)  # tf.saved_model.load result
    _tuning: Any = field(default=None, repr=False)  # a SavedModel's tf_keras model, loaded for fine-tuning
    _tuning_outputs: list[str] = field(default_factory=list, repr=False)

    # -- fine-tuning ----------------------------------------------------------------
    def tuning_model(self) -> tuple[Any, str | None]:
        """The Keras model that fine-tuning (QAT, pruning, clustering) starts from, and its flavour.

        A SavedModel has one only when tf_keras wrote it (keras_metadata.pb); its outputs must
        be the signature's, so the tuned model can be exported under the same names.
        """
        if self.kind == "keras":
            return self.keras_model, self.keras_flavour
        if self._tuning is None:
            from edgeship.converters.qat import load_tf_keras_for_qat

            model = load_tf_keras_for_qat(self.path)
            if model is None:
                raise UnsupportedLayerError(
                    f"{self.path}: fine-tuning (QAT, pruning, clustering) needs Keras layers to wrap, and this "
                    f"SavedModel holds only a graph; give the .keras/.h5 model it came from (or use recipe int8)", [])
            names = list(model.output_names)
            if sorted(names) != sorted(self.outputs) or self.signature != "serving_default":
                raise UnsupportedLayerError(
                    f"{self.path}: signature {self.signature!r} (outputs {', '.join(self.outputs)}) is not the "
                    f"Keras model's call (outputs {', '.join(names)}); fine-tune from serving_default", [])
            self._tuning, self._tuning_outputs = model, names
        return self._tuning, "tf_keras"

    @property
    def tuning_outputs(self) -> list[str]:
        """The output names of tuning_model()'s outputs, in its order (the order its labels come in)."""
        if self.kind == "keras":
            return list(self.outputs)
        self.tuning_model()
        return list(self._tuning_outputs)

    # -- static export ------------------------------------------------------------
    def static_specs(self, batch: int) -> list[Any]:
        tf = tensorflow()
        specs = []
        for spec in self.inputs:
            unknown = [i for i, d in enumerate(spec.shape) if d is None and i > 0]
            if unknown:
                raise DynamicShapeError(
                    f"{self.path}: input {spec.name!r} has shape {_fmt(spec.shape)} with unknown dimension(s) "
                    f"{', '.join(map(str, unknown))}; only the batch dimension can be fixed (batch), so export "
                    f"the model with a fully defined input shape")
            if spec.shape and spec.shape[0] is not None and spec.shape[0] != batch:
                raise DynamicShapeError(
                    f"{self.path}: input {spec.name!r} has a fixed batch of {spec.shape[0]}, not {batch}", option="batch")
            shape = [batch, *spec.shape[1:]] if spec.shape else []
            specs.append(tf.TensorSpec(shape, tf.as_dtype(spec.dtype), name=spec.name))
        return specs

    def serving_function(self, batch: int, model: Any = None) -> Any:
        """A tf.function with static input specs that returns {output name: tensor}."""
        tf = tensorflow()
        specs = self.static_specs(batch)
        if self.kind == "savedmodel" and model is None:
            sig = self._loaded.signatures[self.signature]
            input_names = [s.name for s in self.inputs]

            @tf.function(input_signature=specs)
            def serve(*args: Any) -> Any:
                return sig(**dict(zip(input_names, args)))

            return serve
        keras_model = model if model is not None else self.keras_model
        names = self.tuning_outputs
        input_names = [s.name for s in self.inputs]
        # a dict-input model, or a tf_keras SavedModel's model (signature inputs are sorted, the model's are not)
        structure = _structure(keras_model, "input")
        by_name = isinstance(structure, dict) or (self.kind == "savedmodel" and len(specs) > 1)
        as_list = isinstance(structure, (list, tuple))  # a model built from a list of inputs is called with a list

        @tf.function(input_signature=specs)
        def serve_keras(*args: Any) -> Any:
            feed = dict(zip(input_names, args)) if by_name else args[0] if len(args) == 1 and not as_list else list(args)
            out = keras_model(feed, training=False)
            if isinstance(out, dict):  # a model with named outputs: keep them by name
                return {name: out[name] for name in names}
            out = out if isinstance(out, (list, tuple)) else [out]
            return dict(zip(names, out))

        return serve_keras

    def export_static(self, directory: Path, batch: int, model: Any = None) -> tuple[Path, str]:
        """Write a SavedModel whose one signature has static input shapes; returns (path, signature key).

        Keras 3 models go through keras.export.ExportArchive, which tracks their variables so
        the converter can freeze them; a plain tf.Module would leave VAR_HANDLE/READ_VARIABLE ops.
        """
        tf = tensorflow()
        serve = self.serving_function(batch, model)
        key = self.signature
        target = model if model is not None else self.keras_model
        if self.kind == "keras" and target is not None and _is_keras3(target):
            import keras

            archive = keras.export.ExportArchive()
            archive.track(target)
            archive.add_endpoint(key, serve)
            archive.write_out(str(directory), verbose=False)
            return directory, key
        holder = tf.Module()
        holder.model = target if target is not None else self._loaded
        holder.serve = serve
        tf.saved_model.save(holder, str(directory), signatures={key: serve.get_concrete_function()})
        return directory, key

    def predict(self, features: dict[str, np.ndarray], batch: int, model: Any = None) -> dict[str, np.ndarray]:
        """The source model's float outputs for every sample (the reference a converted model is judged by).

        With `model` (a fine-tuned Keras model of the same I/O), that model's outputs, named the same way.
        """
        serve = self.serving_function(batch, model)
        n = len(next(iter(features.values())))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            args = []
            for spec in self.inputs:
                chunk = features[spec.name][start:stop]
                if len(chunk) < batch:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
                args.append(chunk)
            out = serve(*args)
            for name in self.outputs:
                parts[name].append(np.asarray(out[name])[: stop - start])
        return {k: np.concatenate(v) for k, v in parts.items()}


def _is_keras3(model: Any) -> bool:
    return type(model).__module__.startswith("keras.")


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def refuse_tflite(path: Path) -> None:
    """A .tflite is already converted: point at bundling, which makes a bundle of it as it is."""
    if Path(path).suffix.lower() == ".tflite":
        raise UsageError(f"{path}: already a TFLite model, nothing to convert; make a bundle of it as it is with "
                         f"`edgeship bundle {path}` (convert takes a .keras/.h5 file or a SavedModel directory)")


def load_source(path: Path, signature: str = "serving_default", custom_objects: Sequence[str] = ()) -> SourceModel:
    """Load a .keras/.h5 file or a SavedModel directory; errors name the file and the problem.

    `custom_objects` are the user's modules (FILE.py or package.module) that define custom
    Keras classes; they are imported first (see import_custom_objects).
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or directory")
    import_custom_objects(custom_objects)
    if path.is_dir():
        return _load_saved_model(path, signature)
    refuse_tflite(path)
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES:
        raise CorruptModelError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; "
                                f"expected .keras, .h5 or a SavedModel directory")
    return _load_keras(path)


def _structure(model: Any, which: str) -> Any:
    """A Functional model's `input`/`output` (a dict when it names its I/O); None where Keras has none."""
    try:
        return getattr(model, which)
    except (AttributeError, ValueError):  # a loaded Sequential has inputs but no `input` until it is called
        return None


CUSTOM_OBJECTS_HINT = ("give custom objects: a FILE.py (or package.module) whose import registers them "
                       "(@keras.saving.register_keras_serializable) or lists them in a module-level custom_objects dict")


def import_custom_objects(specs: Sequence[str]) -> list[ModuleType]:
    """Import the user's modules that define custom Keras classes, before any model is loaded.

    A spec is a file (``layers.py``) or a module importable from the current directory or
    PYTHONPATH (``package.module``). Importing runs the module's
    ``@keras.saving.register_keras_serializable`` decorators; a module-level ``custom_objects``
    dict (name -> class) is added to Keras's (and tf_keras's) global custom objects too.
    """
    modules = []
    for spec in specs:
        file = Path(spec)
        try:
            if spec.endswith(".py") or file.is_file():
                if not file.is_file():
                    raise UsageError(f"{spec}: no such file", option="custom_objects")
                name = f"edgeship_custom_{file.stem}"
                loader = importlib.util.spec_from_file_location(name, file)
                if loader is None or loader.loader is None:
                    raise UsageError(f"{spec}: not a Python file", option="custom_objects")
                module = importlib.util.module_from_spec(loader)
                sys.modules[name] = module
                loader.loader.exec_module(module)
            else:
                added = os.getcwd() not in sys.path
                if added:
                    sys.path.insert(0, os.getcwd())
                try:
                    module = importlib.import_module(spec)
                finally:
                    if added:
                        sys.path.remove(os.getcwd())
        except EdgeshipError:
            raise
        except ModuleNotFoundError as exc:
            raise UsageError(f"{spec}: no module {exc.name!r} (give a FILE.py, or a module "
                             f"importable from the current directory or PYTHONPATH)", option="custom_objects") from exc
        except Exception as exc:  # the user's code: any error means "could not import it"
            raise UsageError(f"{spec}: importing it failed ({type(exc).__name__}: "
                             f"{first_line(exc)})", option="custom_objects") from exc
        table = getattr(module, "custom_objects", None)
        if isinstance(table, dict) and table:
            import keras
            import tf_keras

            keras.saving.get_custom_objects().update(table)
            tf_keras.utils.get_custom_objects().update(table)
        modules.append(module)
    return modules


def _model_config(path: Path) -> Any:
    """The saved model config of a .keras or .h5 file, or None when it cannot be read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None
    except (OSError, KeyError, ValueError):
        return None


def unknown_classes(path: Path) -> list[str]:
    """Classes named in a Keras file's config that neither Keras nor any registration defines."""
    import keras

    config = _model_config(path)
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        name, module = node.get("class_name"), node.get("module")
        if isinstance(name, str) and "config" in node:
            registered = node.get("registered_name") or (name if ">" in name else None)
            custom = (module is not None and not str(module).startswith("keras")) or registered is not None
            if custom and keras.saving.get_registered_object(registered or name) is None:
                label = name if registered in (None, name) else f"{name} (registered as {registered})"
                if label not in found:
                    found.append(label)
        for value in node.values():
            walk(value)

    walk(config)
    return found


def _keras_io(model: Any, path: Path) -> tuple[list[InputSpec], list[str]]:
    try:
        inputs = list(model.inputs)
        outputs = list(model.outputs)
    except (AttributeError, ValueError) as exc:
        raise DynamicShapeError(f"{path}: the model has no defined inputs (a subclassed model?); "
                                f"save a Sequential or Functional model, or a SavedModel with a signature") from exc
    structure_in, structure_out = _structure(model, "input"), _structure(model, "output")
    if isinstance(structure_in, dict):  # named inputs: the keys are what the model is fed by
        inputs = list(structure_in.values())
    specs = []
    for i, t in enumerate(inputs):
        dtype = t.dtype if isinstance(t.dtype, str) else t.dtype.name
        name = list(structure_in)[i] if isinstance(structure_in, dict) else getattr(t, "name", "input").split(":")[0]
        specs.append(InputSpec(name, tuple(None if d is None else int(d) for d in t.shape), dtype))
    if isinstance(structure_out, dict):  # named outputs (a dict), in the order the model was built with
        return specs, [str(k) for k in structure_out]
    names = []
    for i, t in enumerate(outputs):  # the output layer's name, as Keras shows it
        history = getattr(t, "_keras_history", None)
        owner = getattr(history, "operation", None) or getattr(history, "layer", None)
        names.append(getattr(owner, "name", None) or f"output_{i}")
    if len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(outputs))]
    return specs, names


def _load_keras(path: Path) -> SourceModel:
    tensorflow()
    sha = path_sha256(path)
    errors = []
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise CorruptModelError(f"{path}: not a valid .keras archive (a .keras file is a zip; this one is "
                                f"corrupt or truncated)")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
        specs, outs = _keras_io(model, path)
        return SourceModel(path, "keras", sha, specs, outs, "serving_default", model, "keras")
    except DynamicShapeError:
        raise
    except Exception as exc:  # Keras raises many types for a bad file; all mean "cannot load"
        errors.append(first_line(exc))
    if path.suffix.lower() != ".keras":
        try:
            import tf_keras

            model = tf_keras.models.load_model(path, compile=False)
            specs, outs = _keras_io(model, path)
            return SourceModel(path, "keras", sha, specs, outs, "serving_default", model, "tf_keras")
        except Exception as exc:
            errors.append(first_line(exc))
    unknown = unknown_classes(path)
    if unknown:
        raise UnsupportedLayerError(f"{path}: the model uses custom Keras class(es) that are not defined here: "
                                    f"{', '.join(unknown)}; {CUSTOM_OBJECTS_HINT}", unknown, option="custom_objects")
    raise CorruptModelError(f"{path}: cannot load this Keras model ({errors[0]})")


def _load_saved_model(path: Path, signature: str) -> SourceModel:
    if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
        raise CorruptModelError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # protobuf, op and checkpoint errors alike
        raise CorruptModelError(f"{path}: cannot load this SavedModel ({first_line(exc)})") from exc
    signatures = dict(loaded.signatures)
    if signature not in signatures:
        have = ", ".join(sorted(signatures)) or "none"
        raise SignatureNotFoundError(f"{path}: no signature {signature!r}; it has: {have}", option="signature")
    fn = signatures[signature]
    specs = []
    for name, spec in sorted(fn.structured_input_signature[1].items()):
        if spec.shape.rank is None:
            raise DynamicShapeError(f"{path}: input {name!r} of signature {signature!r} has unknown rank; "
                                    f"export it with a TensorSpec of known shape")
        specs.append(InputSpec(name, tuple(spec.shape.as_list()), spec.dtype.name))
    outputs = sorted(fn.structured_outputs)
    return SourceModel(path, "savedmodel", path_sha256(path), specs, outputs, signature, _loaded=loaded)
