"""The bundle manifest: one versioned schema, validated on load, documented in docs/manifest.md.

A bundle is a directory with model.tflite, manifest.json and ops/. The manifest says
what the model is (hash, size, I/O with quantization, operators with versions), how it
was made (recipe, source hash, tool versions) and how well it did on the host.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeship.converters.tflite_model import Tensor, TFLiteModel
from edgeship.sdk.errors import BundleError

MANIFEST_SCHEMA_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
OPS_DIR = "ops"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorQuantization(_Strict):
    scale: list[float]
    zero_point: list[int]
    axis: int


class TensorEntry(_Strict):
    name: str = Field(description="the source model's name of the input/output (the flatbuffer's signature name)")
    tensor: str = Field(description="tensor name inside the flatbuffer")
    index: int
    shape: list[int]
    dtype: str
    quantization: Optional[TensorQuantization] = None
    source_order: Optional[int] = Field(default=None, description="position among the source model's inputs/outputs")


class OperatorEntry(_Strict):
    name: str
    kind: Literal["builtin", "custom", "select_tf"]
    version: int
    count: int


class Accuracy(_Strict):
    data: str
    samples: int
    output: Optional[str] = Field(default=None, description="the output the labels scored (by name)")
    model: float = Field(description="top-1 accuracy of model.tflite on the host interpreter")
    float_model: float = Field(description="top-1 accuracy of the source model in TensorFlow")
    finetuned_float_model: Optional[float] = Field(
        default=None, description="top-1 of the pruned/clustered/QAT float model before conversion")
    runtime: str
    warnings: list[str] = Field(default_factory=list, description="accuracy lost on the way, in words")


class SourceInfo(_Strict):
    path: str
    kind: Literal["keras", "savedmodel", "tflite"]
    sha256: str
    signature: str


class Integer(_Strict):
    fully_integer: bool
    float_ops: list[str] = Field(description="nodes computing in float, OP#index (QUANTIZE/DEQUANTIZE not counted)")
    io_float: bool
    float_op_tensors: list[str] = Field(default_factory=list,
                                        description="the tensor each float op makes, in float_ops' order")
    activations: Optional[Literal["int16", "int8", "uint8", "float"]] = Field(
        default=None, description="what the ops compute in (int16: the 16x8 scheme); null in older manifests")


class State(_Strict):
    """What a stateful model carries from one invocation to the next (an evaluator must reset it per sequence)."""

    variable_tensors: list[str] = Field(description="tensors marked is_variable; reset_all_variables() clears them")
    resource_variables: list[str] = Field(description="VAR_HANDLE shared names; only a new interpreter resets them")


class FloatFallback(_Strict):
    """Layers an int8 model keeps in float (--keep-float), and what that costs in bytes."""

    requested: str = Field(description="what --keep-float asked for: LAYER,... or auto:N")
    layers: list[str] = Field(description="the layers (op output tensors) left in float")
    int8_size: int = Field(description="bytes of the same model with every layer in int8")
    size_cost: int = Field(description="bytes this model has over the fully int8 one")


class WeightStats(_Strict):
    """One constant weight tensor: how sparse and how clustered it is."""

    tensor: str
    op: str
    elements: int
    sparsity: float = Field(description="fraction of elements that are exactly zero (the quantized zero)")
    distinct_values: int


class CompressionFacts(_Strict):
    """How well the flatbuffer compresses: what a sparse or clustered model gains on the wire and in flash."""

    zlib_size: int
    zlib_ratio: float = Field(description="zlib_size / size")
    sparsity: float = Field(description="zero weights over all weight tensors")
    weights: list[WeightStats]


class Manifest(_Strict):
    schema_version: Literal[1] = 1  # MANIFEST_SCHEMA_VERSION
    model_file: str = MODEL_FILE
    sha256: str
    size: int
    weights_bytes: int
    recipe: dict[str, Any]
    batch: int
    source: SourceInfo
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    operators: list[OperatorEntry]
    min_runtime_version: Optional[str]
    integer: Integer
    tools: dict[str, str]
    accuracy: Optional[Accuracy] = None
    compression: Optional[CompressionFacts] = None
    float_fallback: Optional[FloatFallback] = None
    stateful: bool = False
    state: Optional[State] = None

    def first_output(self) -> str:
        """The source model's first output (what labels score by default), by name."""
        ranked = sorted(self.outputs, key=lambda t: (t.source_order is None, t.source_order or 0))
        if not ranked:
            raise BundleError("the manifest lists no outputs")
        return ranked[0].name

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, bundle: Path) -> Manifest:
        """Read and validate a bundle's manifest; errors name the file and the field."""
        path = Path(bundle) / MANIFEST_FILE
        if not path.exists():
            raise BundleError(f"{bundle}: not a bundle (no {MANIFEST_FILE}); make one with `edgeship convert`")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(raw, dict) and raw.get("schema_version") not in (None, MANIFEST_SCHEMA_VERSION):
            raise BundleError(f"{path}: schema_version {raw.get('schema_version')!r} is not supported by this "
                              f"edgeship (it reads version {MANIFEST_SCHEMA_VERSION}); upgrade edgeship")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise BundleError(f"{path}: field {field}: {err['msg']}") from exc


def named_float_ops(ops: list[str], tensors: list[str], limit: int = 10) -> str:
    """Float ops with the tensor (hence the layer) each computes: 'NEG#20 (functional_1/norm_1/Neg), ...'."""
    named = [f"{op} ({t.split(';')[0]})" if t else op for op, t in zip(ops, tensors or [""] * len(ops))]
    return ", ".join(named[:limit]) + (f" and {len(named) - limit} more" if len(named) > limit else "")


def tensor_entry(name: str, t: Tensor, source_names: list[str] | None = None) -> TensorEntry:
    """A manifest I/O entry; with the source model's names in its order, also where this one stood there."""
    q = t.quantization
    return TensorEntry(
        name=name, tensor=t.name, index=t.index, shape=list(t.shape), dtype=t.dtype,
        quantization=TensorQuantization(scale=list(q.scale), zero_point=list(q.zero_point), axis=q.axis) if q else None,
        source_order=source_names.index(name) if source_names and name in source_names else None,
    )


def compression_facts(model: TFLiteModel, data: bytes) -> CompressionFacts:
    """Per-tensor sparsity and the zlib size: what pruning and clustering buy once the model is compressed."""
    stats = model.weight_stats(data)
    total = sum(w.elements for w in stats)
    zlib_size = len(zlib.compress(data, 9))
    return CompressionFacts(
        zlib_size=zlib_size, zlib_ratio=round(zlib_size / len(data), 4) if data else 1.0,
        sparsity=round(sum(w.zeros for w in stats) / total, 4) if total else 0.0,
        weights=[WeightStats(tensor=w.tensor, op=w.op, elements=w.elements, sparsity=round(w.sparsity, 4),
                             distinct_values=w.distinct_values) for w in stats])


def model_facts(model: TFLiteModel, data: bytes | None = None, source_inputs: list[str] | None = None,
                source_outputs: list[str] | None = None) -> dict[str, Any]:
    """The manifest fields read from the flatbuffer itself (and, given its bytes, how it compresses).

    I/O entries are in the flatbuffer's order, named by its signature (the source model's
    names, which the static export keeps); given the source's names in the source's order,
    each entry also records its position there, since the converter may reorder them.
    """
    return {
        "compression": compression_facts(model, data) if data is not None else None,
        "sha256": model.sha256,
        "size": model.size,
        "weights_bytes": model.weights_bytes,
        "inputs": [tensor_entry(n, t, source_inputs) for n, t in model.inputs],
        "outputs": [tensor_entry(n, t, source_outputs) for n, t in model.outputs],
        "operators": [OperatorEntry(name=u.name, kind=u.kind, version=u.version, count=u.count) for u in model.op_uses],  # type: ignore[arg-type]
        "min_runtime_version": model.min_runtime_version,
        "integer": Integer(**model.integer_facts()),
        "stateful": model.stateful,
        "state": State(variable_tensors=model.variable_tensors(), resource_variables=list(model.resource_variables))
        if model.stateful else None,
    }
