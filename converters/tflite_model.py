"""Read a .tflite flatbuffer with the standard library only.

`inspect x.tflite`, the manifest, op analysis and the registration generator all read
models through this module, so none of them needs TensorFlow. Every read is bounds
checked: a truncated or corrupt file raises CorruptModelError instead of returning
garbage. Field slots follow tensorflow/lite/schema/schema.fbs.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from edgeship.converters._schema_enums import BUILTIN_OPERATORS, TENSOR_TYPES
from edgeship.sdk.errors import CorruptModelError, ModelNotFoundError

FILE_IDENTIFIER = b"TFL3"
CUSTOM_CODE = 32  # BuiltinOperator.CUSTOM
FLEX_PREFIX = "Flex"  # Select-TF ops are custom ops named Flex<TfOpName>
FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})

# numpy-style names for the tensor types people meet; others keep the schema name.
_DTYPE_NAMES = {
    "FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "BFLOAT16": "bfloat16",
    "INT8": "int8", "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16",
    "INT32": "int32", "UINT32": "uint32", "INT64": "int64", "UINT64": "uint64",
    "BOOL": "bool", "STRING": "string", "INT4": "int4",
}


class _Reader:
    """Bounds-checked little-endian access to one flatbuffer, with a budget of elements to read.

    Flatbuffer tables may share vectors and strings, so a small file can make a naive reader
    copy one shape vector into every tensor: gigabytes from kilobytes. Every vector element,
    table and string byte read is charged to `budget`, which starts at twice the file's size
    (a model written by a converter stores each vector once, so it reads at most its size).
    """

    __slots__ = ("budget", "buf")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.budget = 2 * len(buf) + 65536

    def charge(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise _Corrupt("its tables refer to far more data than the file holds (vectors shared or looped "
                           "between tables): a crafted flatbuffer")

    def unpack(self, fmt: str, pos: int) -> tuple:  # type: ignore[type-arg]
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise _OutOfBounds(pos)
        return struct.unpack_from(fmt, self.buf, pos)

    def u32(self, pos: int) -> int:
        return int(self.unpack("<I", pos)[0])


class _OutOfBounds(Exception):
    pass


class _Corrupt(Exception):
    """A structural lie the parser detected; the message says which."""


class _Table:
    """A flatbuffer table: fields are looked up through its vtable by slot number."""

    __slots__ = ("pos", "r", "vt", "vt_len")

    def __init__(self, r: _Reader, pos: int) -> None:
        self.r = r
        self.pos = pos
        self.vt = pos - int(r.unpack("<i", pos)[0])
        self.vt_len = int(r.unpack("<H", self.vt)[0])

    def _field(self, slot: int) -> int:
        off = 4 + 2 * slot
        if off + 2 > self.vt_len:
            return 0
        rel = int(self.r.unpack("<H", self.vt + off)[0])
        return self.pos + rel if rel else 0

    def scalar(self, slot: int, fmt: str, default: int | float) -> int | float:
        p = self._field(slot)
        return self.r.unpack("<" + fmt, p)[0] if p else default  # type: ignore[no-any-return]

    def table(self, slot: int) -> _Table | None:
        p = self._field(slot)
        return _Table(self.r, p + self.r.u32(p)) if p else None

    def _vector(self, slot: int) -> tuple[int, int] | None:
        p = self._field(slot)
        if not p:
            return None
        p += self.r.u32(p)
        return p + 4, self.r.u32(p)

    def string(self, slot: int) -> str | None:
        vec = self._vector(slot)
        if vec is None:
            return None
        start, length = vec
        if start + length > len(self.r.buf):
            raise _OutOfBounds(start)
        self.r.charge(length)
        return self.r.buf[start : start + length].decode("utf-8")

    def scalars(self, slot: int, fmt: str) -> tuple:  # type: ignore[type-arg]
        vec = self._vector(slot)
        if vec is None:
            return ()
        start, length = vec
        if start + length * struct.calcsize(fmt) > len(self.r.buf):
            raise _OutOfBounds(start)
        self.r.charge(length)
        return self.r.unpack(f"<{length}{fmt}", start)

    def vector_len(self, slot: int) -> int:
        vec = self._vector(slot)
        return vec[1] if vec else 0

    def tables(self, slot: int) -> list[_Table]:
        vec = self._vector(slot)
        if vec is None:
            return []
        start, length = vec
        if start + 4 * length > len(self.r.buf):
            raise _OutOfBounds(start)
        self.r.charge(length)
        out = []
        for i in range(length):
            p = start + 4 * i
            out.append(_Table(self.r, p + self.r.u32(p)))
        return out


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: real = scale * (q - zero_point), per tensor or per axis."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int

    @property
    def per_axis(self) -> bool:
        return len(self.scale) > 1


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    buffer: int
    quantization: Quantization | None
    is_constant: bool
    is_variable: bool = False  # state the runtime keeps between invocations (a fused LSTM's h and c)

    @property
    def is_float(self) -> bool:
        return self.dtype.upper() in FLOAT_TYPES

    @property
    def is_dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)


@dataclass(frozen=True)
class OpCode:
    """One entry of the model's operator_codes table."""

    name: str  # builtin name (CONV_2D), custom code, or Flex op name
    kind: str  # "builtin" | "custom" | "select_tf"
    version: int
    builtin_code: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


@dataclass(frozen=True)
class Operator:
    opcode_index: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Subgraph:
    name: str
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class Signature:
    key: str
    subgraph_index: int
    inputs: tuple[tuple[str, int], ...]  # (signature name, tensor index)
    outputs: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class OpUse:
    """An operator as the model uses it: how many nodes per (op, version)."""

    name: str
    kind: str
    version: int
    count: int


@dataclass(frozen=True)
class WeightStat:
    """One constant weight tensor: how many of its values are zero, and how many distinct values it holds."""

    tensor: str
    op: str
    elements: int
    zeros: int
    distinct_values: int  # per channel when quantized per axis (what clustering bounds), else per tensor

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


_CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})

_NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int8": "i1", "uint8": "u1", "int16": "<i2",
                 "int32": "<i4", "int64": "<i8"}


@dataclass(frozen=True)
class TFLiteModel:
    """The parts of a .tflite file that edgeship reports on and generates code from."""

    size: int
    sha256: str
    schema_version: int
    description: str
    opcodes: tuple[OpCode, ...]
    subgraphs: tuple[Subgraph, ...]
    buffer_sizes: tuple[int, ...]
    buffer_offsets: tuple[int, ...]  # where each buffer's data starts in the file (-1: none, or outside it)
    metadata: dict[str, bytes] = field(repr=False)
    signatures: tuple[Signature, ...]
    resource_variables: tuple[str, ...] = ()  # shared names of VAR_HANDLE ops: tf.Variable state kept across runs

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_path(cls, path: Path) -> TFLiteModel:
        path = Path(path)
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such file")
        if path.is_dir():
            raise CorruptModelError(f"{path}: is a directory, not a .tflite file")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "model") -> TFLiteModel:
        """Parse a flatbuffer; CorruptModelError names what is wrong with it."""
        if len(data) < 8:
            raise CorruptModelError(f"{source}: {len(data)} bytes is too short to be a TFLite model")
        if data[4:8] != FILE_IDENTIFIER:
            raise CorruptModelError(
                f"{source}: not a TFLite flatbuffer (file identifier {data[4:8]!r}, expected {FILE_IDENTIFIER!r})"
            )
        try:
            return cls._parse(data)
        except _Corrupt as exc:
            raise CorruptModelError(f"{source}: corrupt TFLite model ({len(data)} bytes): {exc}") from exc
        except (_OutOfBounds, struct.error, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptModelError(
                f"{source}: corrupt or truncated TFLite model ({len(data)} bytes; a table points outside the file)"
            ) from exc

    @classmethod
    def _parse(cls, data: bytes) -> TFLiteModel:
        r = _Reader(data)
        root = _Table(r, r.u32(0))
        buffers = root.tables(4)
        buffer_sizes: list[int] = []
        buffer_offsets: list[int] = []
        for b in buffers:
            span = b._vector(0)
            n, start = (span[1], span[0]) if span else (0, -1)
            if start + n > len(data):
                raise _Corrupt(f"buffer {len(buffer_sizes)} claims {n} bytes past the end of the file")
            if n == 0:  # models over 2 GB keep data after the flatbuffer: offset/size fields
                offset = int(b.scalar(1, "Q", 0))
                n = int(b.scalar(2, "Q", 0)) if offset > 1 else 0
                start = offset if offset > 1 and offset + n <= len(data) else -1
            buffer_sizes.append(n)
            buffer_offsets.append(start)

        opcodes = []
        for oc in root.tables(1):
            code = max(int(oc.scalar(3, "i", 0)), int(oc.scalar(0, "b", 0)))
            version = int(oc.scalar(2, "i", 1))
            if code == CUSTOM_CODE:
                custom = oc.string(1) or ""
                kind = "select_tf" if custom.startswith(FLEX_PREFIX) else "custom"
                opcodes.append(OpCode(custom, kind, version, code))
            else:
                opcodes.append(OpCode(BUILTIN_OPERATORS.get(code, f"BUILTIN_{code}"), "builtin", version, code))

        subgraphs = []
        resource_variables: list[str] = []
        for sg in root.tables(2):
            tensors = []
            for i, t in enumerate(sg.tables(0)):
                type_name = TENSOR_TYPES.get(int(t.scalar(1, "b", 0)), "UNKNOWN")
                buf_index = int(t.scalar(2, "I", 0))
                shape = tuple(int(d) for d in t.scalars(0, "i"))
                if any(d < 0 for d in shape):  # unknown dimensions are -1 in shape_signature only
                    raise _Corrupt(f"tensor {i} has a negative dimension in its shape {shape[:8]}")
                if math.prod(shape) >= 1 << 63:
                    raise _Corrupt(f"tensor {i}'s shape {shape[:8]} holds 2^63 or more elements (its size overflows)")
                signature = tuple(int(d) for d in t.scalars(7, "i")) or shape
                q = t.table(4)
                quant = None
                if q is not None:
                    scale = tuple(float(s) for s in q.scalars(2, "f"))
                    if scale:
                        quant = Quantization(scale, tuple(int(z) for z in q.scalars(3, "q")), int(q.scalar(6, "i", 0)))
                        if quant.per_axis and not 0 <= quant.axis < len(shape):
                            raise _Corrupt(f"tensor {i} is quantized along dimension {quant.axis} of a "
                                           f"{len(shape)}-dimensional shape")
                tensors.append(
                    Tensor(
                        index=i,
                        name=t.string(3) or "",
                        dtype=_DTYPE_NAMES.get(type_name, type_name.lower()),
                        shape=shape,
                        shape_signature=signature,
                        buffer=buf_index,
                        quantization=quant,
                        is_constant=0 < buf_index < len(buffer_sizes) and buffer_sizes[buf_index] > 0,
                        is_variable=bool(t.scalar(5, "B", 0)),
                    )
                )
            operators = tuple(
                Operator(int(op.scalar(0, "I", 0)), tuple(op.scalars(1, "i")), tuple(op.scalars(2, "i")))
                for op in sg.tables(3)
            )
            sg_inputs, sg_outputs = tuple(sg.scalars(1, "i")), tuple(sg.scalars(2, "i"))
            for i in sg_inputs + sg_outputs:
                if not 0 <= i < len(tensors):
                    raise _OutOfBounds(i)
            for op in operators:
                if op.opcode_index >= len(opcodes):
                    raise _OutOfBounds(op.opcode_index)
                for i in op.inputs + op.outputs:
                    if not -1 <= i < len(tensors):  # -1 marks an omitted optional input
                        raise _OutOfBounds(i)
            subgraphs.append(Subgraph(sg.string(4) or "", tuple(tensors), sg_inputs, sg_outputs, operators))
            for op_table in sg.tables(3):  # VarHandleOptions: container (0), shared_name (1)
                if opcodes[int(op_table.scalar(0, "I", 0))].name == "VAR_HANDLE":
                    options = op_table.table(4)
                    name = (options.string(1) if options is not None else None) or ""
                    if name and name not in resource_variables:
                        resource_variables.append(name)

        metadata: dict[str, bytes] = {}
        for m in root.tables(6):
            idx = int(m.scalar(1, "I", 0))
            if idx < len(buffers):
                start_len = buffers[idx]._vector(0)
                if start_len:
                    start, n = start_len
                    r.charge(n)
                    metadata[m.string(0) or ""] = bytes(data[start : start + n])

        signatures = tuple(
            Signature(
                key=s.string(2) or "",
                subgraph_index=int(s.scalar(4, "I", 0)),
                inputs=tuple((tm.string(0) or "", int(tm.scalar(1, "I", 0))) for tm in s.tables(0)),
                outputs=tuple((tm.string(0) or "", int(tm.scalar(1, "I", 0))) for tm in s.tables(1)),
            )
            for s in root.tables(7)
        )
        return cls(
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            schema_version=int(root.scalar(0, "I", 0)),
            description=root.string(3) or "",
            opcodes=tuple(opcodes),
            subgraphs=tuple(subgraphs),
            buffer_sizes=tuple(buffer_sizes),
            buffer_offsets=tuple(buffer_offsets),
            metadata=metadata,
            signatures=signatures,
            resource_variables=tuple(resource_variables),
        )

    # -- derived facts ---------------------------------------------------------------
    @property
    def main(self) -> Subgraph:
        if not self.subgraphs:
            raise CorruptModelError("model has no subgraph")
        return self.subgraphs[0]

    def _io(self, which: str) -> list[tuple[str, Tensor]]:
        """(name, tensor) for the main subgraph's inputs or outputs, named by its signature when it has one."""
        sg = self.main
        sig = next((s for s in self.signatures if s.subgraph_index == 0), None)
        if sig is not None:
            pairs = sig.inputs if which == "inputs" else sig.outputs
            by_index = {idx: name for name, idx in pairs}
        else:
            by_index = {}
        indices = sg.inputs if which == "inputs" else sg.outputs
        return [(by_index.get(i, sg.tensors[i].name), sg.tensors[i]) for i in indices]

    @property
    def inputs(self) -> list[tuple[str, Tensor]]:
        return self._io("inputs")

    @property
    def outputs(self) -> list[tuple[str, Tensor]]:
        return self._io("outputs")

    @cached_property
    def op_uses(self) -> tuple[OpUse, ...]:
        """Each (op, kind, version) the model uses with its node count, sorted by name."""
        counts: Counter[int] = Counter(op.opcode_index for sg in self.subgraphs for op in sg.operators)
        merged: Counter[tuple[str, str, int]] = Counter()
        for idx, n in counts.items():
            oc = self.opcodes[idx]
            merged[(oc.name, oc.kind, oc.version)] += n
        return tuple(OpUse(name, kind, version, n) for (name, kind, version), n in sorted(merged.items()))

    @property
    def weights_bytes(self) -> int:
        """Bytes of constant tensor data (weights, biases, quantization-free constants)."""
        used = {t.buffer for sg in self.subgraphs for t in sg.tensors if t.is_constant}
        return sum(self.buffer_sizes[b] for b in used)

    @property
    def min_runtime_version(self) -> str | None:
        raw = self.metadata.get("min_runtime_version")
        return raw.rstrip(b"\0").decode("ascii", "replace") if raw else None

    def _float_nodes(self) -> list[tuple[str, str]]:
        """(OP#node, its first output tensor's name) for every node that computes in float."""
        found = []
        for sg in self.subgraphs:
            for n, op in enumerate(sg.operators):
                name = self.opcodes[op.opcode_index].name
                if name in _CONVERSION_OPS:
                    continue
                tensors = [sg.tensors[i] for i in op.inputs + op.outputs if i >= 0]
                if any(t.is_float for t in tensors):
                    node = f"{name}#{n}" if sg is self.main else f"{sg.name or 'subgraph'}:{name}#{n}"
                    out = next((sg.tensors[i].name for i in op.outputs if i >= 0), "")
                    found.append((node, out))
        return found

    def float_ops(self) -> list[str]:
        """Nodes that compute in float (OP#index; OP#index prefixed by the subgraph's name outside the main one).

        QUANTIZE and DEQUANTIZE are not listed: they only convert between float and integer,
        at float inputs/outputs or around the float ops that are. An empty list means the
        model's arithmetic is fully integer (it may still have float I/O: see io_is_float).
        """
        return [node for node, _ in self._float_nodes()]

    def float_op_tensors(self) -> list[str]:
        """The tensor each of float_ops() makes (its first output), in the same order: names the layer."""
        return [tensor for _, tensor in self._float_nodes()]

    @property
    def activation_type(self) -> str:
        """What the ops compute in: int16 (TFLite's 16x8 scheme), int8, uint8, or float.

        Read from the op outputs (state tensors aside): an int8 LSTM keeps its cell state in
        int16 but its outputs are int8; a 16x8 model's ops output int16.
        """
        kinds = {sg.tensors[i].dtype for sg in self.subgraphs for op in sg.operators for i in op.outputs
                 if i >= 0 and not sg.tensors[i].is_variable}
        for kind in ("int16", "int8", "uint8"):
            if kind in kinds:
                return kind
        return "float"

    def variable_tensors(self) -> list[str]:
        """Tensors marked is_variable: state the runtime carries from one invocation to the next
        (reset_all_variables() clears it)."""
        return [t.name for sg in self.subgraphs for t in sg.tensors if t.is_variable]

    @property
    def stateful(self) -> bool:
        """Does one invocation depend on the ones before it (variable tensors or resource variables)?"""
        return bool(self.resource_variables) or any(t.is_variable for sg in self.subgraphs for t in sg.tensors)

    @property
    def io_is_float(self) -> bool:
        return any(t.is_float for _, t in self.inputs + self.outputs)

    @property
    def fully_integer(self) -> bool:
        """No float arithmetic anywhere and integer inputs and outputs (what MCUs and NPUs need)."""
        return not self.float_ops() and not self.io_is_float

    def integer_facts(self) -> dict[str, Any]:
        """Whether the model is integer, in the one form the manifest, inspect and debug-quant all report."""
        return {"fully_integer": self.fully_integer, "float_ops": self.float_ops(), "io_float": self.io_is_float,
                "float_op_tensors": self.float_op_tensors(), "activations": self.activation_type}

    def weight_stats(self, data: bytes) -> list[WeightStat]:
        """Sparsity and distinct values of each constant weight tensor (ops' inputs with 2+ dimensions).

        `data` is the file this model was parsed from. A weight counts as zero when it
        equals its quantized zero point (0.0 for float tensors).
        """
        import numpy as np

        out: list[WeightStat] = []
        seen: set[int] = set()
        for sg in self.subgraphs:
            for op in sg.operators:
                for i in op.inputs:
                    t = sg.tensors[i] if i >= 0 else None
                    if t is None or not t.is_constant or t.buffer in seen or len(t.shape) < 2:
                        continue
                    dtype = _NUMPY_DTYPES.get(t.dtype)
                    start, size = self.buffer_offsets[t.buffer], self.buffer_sizes[t.buffer]
                    count = math.prod(t.shape)  # Python ints: a crafted shape cannot overflow into a match
                    if dtype is None or start < 0 or min(t.shape) < 0 or size != np.dtype(dtype).itemsize * count:
                        continue
                    seen.add(t.buffer)
                    values = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(t.shape)
                    q = t.quantization
                    zero = np.asarray(q.zero_point, dtype=np.int64) if q and not t.is_float else np.zeros(1)
                    if q and q.per_axis and len(zero) == t.shape[q.axis]:
                        zero = zero.reshape([-1 if d == q.axis else 1 for d in range(len(t.shape))])
                    elif len(zero) > 1:
                        zero = zero[:1]
                    axis = q.axis if q and q.per_axis else None
                    channels = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1) if axis is not None else [values]
                    distinct = max(len(np.unique(c)) for c in channels)
                    out.append(WeightStat(tensor=t.name, op=self.opcodes[op.opcode_index].name, elements=int(values.size),
                                          zeros=int(np.count_nonzero(values == zero)), distinct_values=distinct))
        return out

    def dynamic_tensors(self) -> list[str]:
        return [t.name for sg in self.subgraphs for t in sg.tensors if t.is_dynamic]
