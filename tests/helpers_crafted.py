"""Hostile inputs made from real ones: .tflite files edited through the TFLite schema, and npz archives.

Models are edited with the flatbuffer schema's object API (ai_edge_litert's
schema_py_generated: unpack a real model into ModelT, change it, pack it again), so a
crafted model is a well-formed flatbuffer that lies in one field; a few cases that the
object API cannot express (one vector shared by many tables, a length field past the end
of the file) are built with the same module's builder functions or patched in the packed
bytes at an offset the schema gives. Archives are built with zipfile and numpy's npy
header writer, so each lies in exactly one place.
"""

from __future__ import annotations

import copy
import functools
import io
import random
import struct
import zipfile
from collections.abc import Callable

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

# --------------------------------------------------------------------------------- models


def unpack(model: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromPackedBuf(bytearray(model), 0)


def pack(m: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _edit(model: bytes, change: Callable[[schema.ModelT], None]) -> bytes:
    m = unpack(model)
    change(m)
    return pack(m)


def _input(m: schema.ModelT) -> schema.TensorT:
    sg = m.subgraphs[0]
    return sg.tensors[sg.inputs[0]]


def huge_input_shape(model: bytes) -> bytes:
    """The input claims 2^40 elements (1 x 2^20 x 2^20 x 1): every op after it plans terabytes."""
    def change(m: schema.ModelT) -> None:
        t = _input(m)
        t.shape = np.array([1, 1 << 20, 1 << 20, 1], dtype=np.int32)
        t.shapeSignature = None
    return _edit(model, change)


def overflowing_input_shape(model: bytes) -> bytes:
    """The input's shape product overflows 64 bits (four dimensions of 2^31 - 1)."""
    def change(m: schema.ModelT) -> None:
        t = _input(m)
        t.shape = np.array([2**31 - 1] * 4, dtype=np.int32)
        t.shapeSignature = None
    return _edit(model, change)


def negative_dims(model: bytes) -> bytes:
    """Every activation tensor gets a negative dimension."""
    def change(m: schema.ModelT) -> None:
        for t in m.subgraphs[0].tensors:
            data = m.buffers[t.buffer].data
            if t.shape is not None and len(t.shape) and (data is None or not len(data)):
                t.shape = np.array([-7, *list(t.shape[1:])], dtype=np.int32)
    return _edit(model, change)


def many_dims(model: bytes) -> bytes:
    """The input has 100 dimensions of 1 (no runtime kernel takes that many)."""
    def change(m: schema.ModelT) -> None:
        _input(m).shape = np.ones(100, dtype=np.int32)
    return _edit(model, change)


def buffer_offset_past_end(model: bytes) -> bytes:
    """Every weight buffer moves out of the flatbuffer to an offset far past the end of the file."""
    def change(m: schema.ModelT) -> None:
        for b in m.buffers:
            if b.data is not None and len(b.data):
                b.size = len(b.data)
                b.offset = 1 << 40
                b.data = None
    return _edit(model, change)


def buffer_length_past_end(model: bytes) -> bytes:
    """The largest weight buffer's data vector claims 2^31 bytes (its u32 length field patched in place)."""
    m = unpack(model)
    sizes = [len(b.data) if b.data is not None else 0 for b in m.buffers]
    index = int(np.argmax(sizes))
    buf = bytearray(model)
    root = schema.Model.GetRootAs(buf, 0)
    vec = root.Buffers(index)
    start = vec._tab.Vector(vec._tab.Offset(4))  # Buffer.data: where its bytes begin; the length precedes them
    struct.pack_into("<I", buf, start - 4, 1 << 31)
    return bytes(buf)


def tensor_index_out_of_range(model: bytes) -> bytes:
    """An operator reads tensor 10^6 of a subgraph that has a few dozen."""
    def change(m: schema.ModelT) -> None:
        op = m.subgraphs[0].operators[0]
        op.inputs = np.array([10 ** 6, *list(op.inputs[1:])], dtype=np.int32)
    return _edit(model, change)


def opcode_index_out_of_range(model: bytes) -> bytes:
    def change(m: schema.ModelT) -> None:
        m.subgraphs[0].operators[0].opcodeIndex = 4000
    return _edit(model, change)


def many_operators(model: bytes, copies: int = 1000) -> bytes:
    """The main subgraph's operator list repeated `copies` times (each writes the same tensors again)."""
    def change(m: schema.ModelT) -> None:
        ops = m.subgraphs[0].operators
        m.subgraphs[0].operators = [copy.copy(op) for _ in range(copies) for op in ops]
    return _edit(model, change)


def many_subgraphs(model: bytes, copies: int = 100) -> bytes:
    def change(m: schema.ModelT) -> None:
        m.subgraphs = m.subgraphs + [copy.deepcopy(m.subgraphs[0]) for _ in range(copies)]
    return _edit(model, change)


def quant_axis_out_of_range(model: bytes) -> bytes:
    """Every per-tensor quantization claims quantized dimension 99."""
    def change(m: schema.ModelT) -> None:
        for t in m.subgraphs[0].tensors:
            if t.quantization is not None:
                t.quantization.quantizedDimension = 99
                if t.quantization.scale is not None and len(t.quantization.scale) == 1:
                    t.quantization.scale = np.array([t.quantization.scale[0]] * 2, dtype=np.float32)
                    t.quantization.zeroPoint = np.array([0, 0], dtype=np.int64)
    return _edit(model, change)


def shared_shape_vector(tensors: int = 20000, dims: int = 100_000) -> bytes:
    """A model whose `tensors` tensors all point at one shape vector of `dims` dimensions.

    A few hundred kilobytes that a parser which copies each tensor's shape expands into
    tensors x dims integers: the amplification a flatbuffer allows, since tables may share.
    """
    b = flatbuffers.Builder(1024)
    shape = b.CreateNumpyVector(np.ones(dims, dtype=np.int32))
    offsets = []
    for _ in range(tensors):
        schema.TensorStart(b)
        schema.TensorAddShape(b, shape)
        offsets.append(schema.TensorEnd(b))
    schema.SubGraphStartTensorsVector(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    tvec = b.EndVector()
    io_vec = b.CreateNumpyVector(np.array([0], dtype=np.int32))
    schema.SubGraphStart(b)
    schema.SubGraphAddTensors(b, tvec)
    schema.SubGraphAddInputs(b, io_vec)
    schema.SubGraphAddOutputs(b, io_vec)
    sg = schema.SubGraphEnd(b)
    schema.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(sg)
    sgs = b.EndVector()
    schema.BufferStart(b)
    buf0 = schema.BufferEnd(b)
    schema.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(buf0)
    bufs = b.EndVector()
    schema.ModelStart(b)
    schema.ModelAddVersion(b, 3)
    schema.ModelAddSubgraphs(b, sgs)
    schema.ModelAddBuffers(b, bufs)
    b.Finish(schema.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


#: name -> crafted model from a real one (the shared-vector model needs none)
CRAFTED_MODELS: dict[str, Callable[[bytes], bytes]] = {
    "huge_input_shape": huge_input_shape,
    "overflowing_input_shape": overflowing_input_shape,
    "negative_dims": negative_dims,
    "many_dims": many_dims,
    "buffer_offset_past_end": buffer_offset_past_end,
    "buffer_length_past_end": buffer_length_past_end,
    "tensor_index_out_of_range": tensor_index_out_of_range,
    "opcode_index_out_of_range": opcode_index_out_of_range,
    "many_operators": many_operators,
    "many_subgraphs": many_subgraphs,
    "quant_axis_out_of_range": quant_axis_out_of_range,
    "shared_shape_vector": lambda _model: shared_shape_vector(tensors=5000),
}


def mutated_field(model: bytes, rng: random.Random) -> bytes:
    """One seeded lie in a schema field: a tensor's shape, type or buffer, an op's tensors or opcode."""
    m = unpack(model)
    sg = rng.choice(m.subgraphs)
    kind = rng.choice(["shape", "type", "buffer", "op_inputs", "opcode", "version"])
    huge = rng.choice([-1, -(2**31), 2**31 - 1, 1 << 20, 0, 65536])
    if kind in ("shape", "type", "buffer"):
        t = rng.choice(sg.tensors)
        if kind == "shape":
            dims = list(t.shape) if t.shape is not None and len(t.shape) else [1]
            dims[rng.randrange(len(dims))] = huge
            t.shape = np.array(dims, dtype=np.int32)
            t.shapeSignature = None
        elif kind == "type":
            t.type = rng.choice([-1, 17, 100, 127, 9])
        else:
            t.buffer = rng.choice([len(m.buffers), 2**31, 0])
    elif kind == "op_inputs":
        op = rng.choice(sg.operators)
        ins = list(op.inputs)
        ins[rng.randrange(len(ins))] = rng.choice([len(sg.tensors), 2**31 - 1, -2])
        op.inputs = np.array(ins, dtype=np.int32)
    elif kind == "opcode":
        rng.choice(sg.operators).opcodeIndex = rng.choice([len(m.operatorCodes), 2**31, 255])
    else:
        rng.choice(m.operatorCodes).version = rng.choice([0, -1, 2**31 - 1, 1000])
    return pack(m)


# --------------------------------------------------------------------------------- npz archives


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def deflate_bomb(inflated: int = 1 << 30) -> bytes:
    """About 1 MB that inflates to `inflated` bytes: one float32 member of zeros, honest about its size."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w", force_zip64=True) as f:
        f.write(_npy_header("<f4", (inflated // 4,)))
        zeros = bytes(1 << 24)
        for _ in range(inflated // len(zeros)):
            f.write(zeros)
    return buf.getvalue()


def size_lie(declared: int = 4096, real: int = 64 << 20) -> bytes:
    """A deflated member that inflates to `real` bytes while the archive declares `declared` (CRC of those)."""
    import zlib

    data = _npy_header("<f4", ((declared - 128) // 4,)) + bytes(real)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = c.compress(data) + c.flush()
    name = b"x.npy"
    crc = zlib.crc32(data[:declared]) & 0xFFFFFFFF
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(deflated), declared, len(name), 0)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(deflated), declared,
                          len(name), 0, 0, 0, 0, 0, 0)
    body = local + name + deflated
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), len(body), 0)
    return body + central + name + end


def header_lie(elements: int = 1 << 40) -> bytes:
    """A small stored member whose npy header claims `elements` float32 values."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", _npy_header("<f4", (elements,)) + bytes(64))
    return buf.getvalue()


def pickled() -> bytes:
    """An object array: np.load needs allow_pickle=True for it."""
    return npz(x=np.array([{"a": 1}, None, "s"], dtype=object), y=np.zeros(3, np.int64))


def truncated(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def many_members(count: int = 5000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"a{i}.npy", _npy_header("<f4", (0,)))
    return buf.getvalue()


def odd_name(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(name, _npy_header("<f4", (1,)) + bytes(4))
    return buf.getvalue()


def _tensor(name: str, type_: int, shape: list[int]) -> schema.TensorT:
    t = schema.TensorT()
    t.name, t.type, t.shape, t.buffer = name, type_, np.array(shape, dtype=np.int32), 0
    return t


def _op(code: int, inputs: list[int], outputs: list[int]) -> schema.OperatorT:
    o = schema.OperatorT()
    o.opcodeIndex, o.inputs, o.outputs = code, np.array(inputs, np.int32), np.array(outputs, np.int32)
    return o


def _subgraph(name: str, tensors: list[schema.TensorT], ops: list[schema.OperatorT], ins: list[int],
              outs: list[int]) -> schema.SubGraphT:
    sg = schema.SubGraphT()
    sg.name, sg.tensors, sg.operators = name, tensors, ops
    sg.inputs, sg.outputs = np.array(ins, np.int32), np.array(outs, np.int32)
    return sg


def _model(builtins: list[int], subgraphs: list[schema.SubGraphT]) -> bytes:
    codes = []
    for builtin in builtins:
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
        codes.append(c)
    m = schema.ModelT()
    m.version, m.operatorCodes, m.buffers, m.subgraphs = 3, codes, [schema.BufferT()], subgraphs
    return pack(m)


def _add(inputs: list[int], outputs: list[int]) -> schema.OperatorT:
    add = _op(0, inputs, outputs)
    add.builtinOptionsType, add.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    return add


def huge_add(shape: tuple[int, ...] = (1 << 20, 1 << 20)) -> bytes:
    """One ADD of a float32 input to itself, the input claiming `shape` (2^40 elements by default: 4 TiB).

    Every shape check passes (no product overflows 64 bits); only memory stops it.
    """
    f32 = schema.TensorType.FLOAT32
    return _model([schema.BuiltinOperator.ADD],
                  [_subgraph("main", [_tensor("x", f32, list(shape)), _tensor("y", f32, list(shape))],
                             [_add([0, 0], [1])], [0], [1])])


def endless_while() -> bytes:
    """A model that never finishes: a WHILE whose condition (x == x) holds for every number fed to it.

    Main subgraph WHILE(x), cond subgraph EQUAL(x, x), body subgraph ADD(x, x): only the
    worker's timeout ends a run of it.
    """
    f32, boolean = schema.TensorType.FLOAT32, schema.TensorType.BOOL
    loop = _op(1, [0], [1])
    loop.builtinOptionsType = schema.BuiltinOptions.WhileOptions
    loop.builtinOptions = schema.WhileOptionsT()
    loop.builtinOptions.condSubgraphIndex, loop.builtinOptions.bodySubgraphIndex = 1, 2
    return _model([schema.BuiltinOperator.ADD, schema.BuiltinOperator.WHILE, schema.BuiltinOperator.EQUAL], [
        _subgraph("main", [_tensor("x", f32, [1]), _tensor("y", f32, [1])], [loop], [0], [1]),
        _subgraph("cond", [_tensor("x", f32, [1]), _tensor("again", boolean, [1])], [_op(2, [0, 0], [1])], [0], [1]),
        _subgraph("body", [_tensor("x", f32, [1]), _tensor("x2", f32, [1])], [_add([0, 0], [1])], [0], [1])])


def log_of_input(width: int = 4) -> bytes:
    """One LOG of a float32 (1, width) input: NaN for every negative value, from finite inputs."""
    f32 = schema.TensorType.FLOAT32
    return _model([schema.BuiltinOperator.LOG],
                  [_subgraph("main", [_tensor("x", f32, [1, width]), _tensor("y", f32, [1, width])],
                             [_op(0, [0], [1])], [0], [1])])
