"""The bundle manifest: one versioned schema, validated on load, documented in docs/manifest.md.

A bundle is a directory with model.tflite, manifest.json and ops/. The manifest says
what the model is (hash, size, I/O with quantization, operators with versions), how it
was made (recipe, source hash, tool versions) and how well it did on the host.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from converters.tflite_model import Tensor, TFLiteModel
from sdk.errors import BundleError

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
    name: str = Field(description="signature name of the input/output")
    tensor: str = Field(description="tensor name inside the flatbuffer")
    index: int
    shape: list[int]
    dtype: str
    quantization: Optional[TensorQuantization] = None


class OperatorEntry(_Strict):
    name: str
    kind: Literal["builtin", "custom", "select_tf"]
    version: int
    count: int


class Accuracy(_Strict):
    data: str
    samples: int
    model: float = Field(description="top-1 accuracy of model.tflite on the host interpreter")
    float_model: float = Field(description="top-1 accuracy of the source model in TensorFlow")
    runtime: str


class SourceInfo(_Strict):
    path: str
    kind: Literal["keras", "savedmodel"]
    sha256: str
    signature: str


class Integer(_Strict):
    fully_integer: bool
    float_ops: list[str]
    io_float: bool


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


def tensor_entry(name: str, t: Tensor) -> TensorEntry:
    q = t.quantization
    return TensorEntry(
        name=name, tensor=t.name, index=t.index, shape=list(t.shape), dtype=t.dtype,
        quantization=TensorQuantization(scale=list(q.scale), zero_point=list(q.zero_point), axis=q.axis) if q else None,
    )


def model_facts(model: TFLiteModel) -> dict[str, Any]:
    """The manifest fields read from the flatbuffer itself."""
    return {
        "sha256": model.sha256,
        "size": model.size,
        "weights_bytes": model.weights_bytes,
        "inputs": [tensor_entry(n, t) for n, t in model.inputs],
        "outputs": [tensor_entry(n, t) for n, t in model.outputs],
        "operators": [OperatorEntry(name=u.name, kind=u.kind, version=u.version, count=u.count) for u in model.op_uses],  # type: ignore[arg-type]
        "min_runtime_version": model.min_runtime_version,
        "integer": Integer(fully_integer=model.fully_integer, float_ops=model.float_ops(), io_float=model.io_is_float),
    }
