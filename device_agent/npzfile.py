"""Read an .npz dataset as hostile input: bounded memory, no pickle, clear refusals.

``np.load`` trusts the archive: a 1 MB deflate bomb inflates to a gigabyte, a member
may claim any size, and the array header decides how much is allocated. This loader,
used by the host (converters.data) and the agent's worker alike, checks before it
inflates anything:

- the archive's member count (from its end record, before ``zipfile`` builds its index);
- each member's name: ``<key>.npy`` with a printable key, no leading ``/``, no ``..``
  component, no backslash, no duplicate; only stored or deflated members, unencrypted;
- each member's declared uncompressed size, and their sum, against ``limit``; a member
  that inflates more than MAX_RATIO times its compressed size beyond RATIO_FLOOR bytes
  is a bomb (legitimate data saved with ``np.savez`` is stored, ratio 1);
- the npy header (at most MAX_HEADER bytes, parsed with ``ast.literal_eval``): no object
  or zero-size dtype, no sub-array dtype, shape * itemsize exactly what the member declares.

Only then is the array allocated and filled from a bounded stream of the member's own
bytes (zipfile lists the members; _Member inflates them): it never yields more than the
declared size, and a member that inflates past it, ends early or fails its CRC is refused. Nothing
is extracted to disk and nothing is unpickled. Every refusal is an NpzError whose
message names the member and the limit, never the file's path (the caller adds the
path where it may: the host does, the agent never quotes the board's file system).

Stdlib and numpy only, Python 3.9+: it ships inside the agent.
"""

from __future__ import annotations

import ast
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, Optional, Tuple, Union

import numpy as np

#: Host default for the sum of all members' declared sizes: what one process may inflate.
HOST_LIMIT = 4 << 30
MAX_MEMBERS = 4096  # arrays in one archive; a dataset has a handful
MAX_NAME = 255  # characters of one member name
MAX_HEADER = 16384  # bytes of one npy header (numpy's own reader allows 10000)
MAX_RATIO = 100  # inflated / compressed size allowed for a member ...
RATIO_FLOOR = 64 << 20  # ... once it inflates past this many bytes
_CHUNK = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"


class NpzError(ValueError):
    """The archive is not a dataset this loader will read; ``member`` and ``limit`` say where and why."""

    def __init__(self, message: str, member: Optional[str] = None, limit: Optional[int] = None) -> None:
        super().__init__(message)
        self.member = member
        self.limit = limit


def mib(n: int) -> str:
    """A byte count as people read it (MiB with one decimal, or bytes when small)."""
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def load(path: Union[str, Path, bytes], limit: int = HOST_LIMIT) -> Dict[str, np.ndarray]:
    """Every array of an .npz (a file, or its bytes), keyed by name; NpzError (a ValueError) if unsafe or unreadable.

    `limit` bounds the sum of the members' declared uncompressed sizes, and therefore
    what this call allocates. OSError is turned into NpzError with its reason only.
    Bytes let the agent's worker read exactly the bytes it hash-checked.
    """
    try:
        with (io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")) as f:
            _check_member_count(f)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                return _read_all(f, zf, limit)
    except NpzError:
        raise
    except OSError as exc:  # its str() would quote the path
        raise NpzError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, struct.error, NotImplementedError, RuntimeError,
            ValueError, OverflowError) as exc:
        raise NpzError(f"not a readable .npz archive ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _check_member_count(f: BinaryIO) -> None:
    """Refuse an archive that lists more than MAX_MEMBERS entries, before zipfile indexes them all."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return  # not a zip (or a damaged one): zipfile says so
    count = struct.unpack_from("<H", tail, at + 10)[0]
    if count == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":  # zip64: the count is elsewhere
        offset = struct.unpack_from("<Q", tail, at - 20 + 8)[0]
        if offset + 56 <= size:
            f.seek(offset)
            record = f.read(56)
            if record[:4] == b"PK\x06\x06":
                count = struct.unpack_from("<Q", record, 32)[0]
    if count > MAX_MEMBERS:
        raise NpzError(f"the archive lists {count} members, more than the {MAX_MEMBERS} a dataset may have",
                       limit=MAX_MEMBERS)


def _key(name: str) -> str:
    """The array key of a member name, or NpzError when the name is not a simple `<key>.npy`."""
    shown = repr(name[:80])
    if not name.endswith(".npy") or len(name) <= 4:
        raise NpzError(f"member {shown} is not an .npy array (an .npz holds only <name>.npy members)", member=name)
    if len(name) > MAX_NAME or not name.isprintable() or "\\" in name or name.startswith("/") or \
            ".." in name.split("/") or "" in name[:-4].split("/"):
        raise NpzError(f"member name {shown} is not a simple array name (printable, at most {MAX_NAME} "
                       f"characters, no leading '/', no '..', no backslash)", member=name, limit=MAX_NAME)
    return name[:-4]


def _read_all(f: BinaryIO, zf: zipfile.ZipFile, limit: int) -> Dict[str, np.ndarray]:
    infos = zf.infolist()
    keys: Dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        key = _key(info.filename)
        if key in keys:
            raise NpzError(f"member {info.filename!r} appears twice", member=info.filename)
        if info.flag_bits & 0x1:
            raise NpzError(f"member {info.filename!r} is encrypted", member=info.filename)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise NpzError(f"member {info.filename!r} uses compression method {info.compress_type}; "
                           f"only stored and deflated members are read (np.savez / np.savez_compressed)",
                           member=info.filename)
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise NpzError(f"member {info.filename!r} inflates {mib(info.compress_size)} to {mib(info.file_size)} "
                           f"(more than {MAX_RATIO}:1 above {mib(RATIO_FLOOR)}): a zip bomb, or save the data "
                           f"uncompressed with np.savez", member=info.filename, limit=MAX_RATIO)
        total += info.file_size
        if total > limit:
            raise NpzError(f"member {info.filename!r} brings the arrays' declared size to {mib(total)}, more than "
                           f"the limit of {mib(limit)}: send fewer samples", member=info.filename, limit=limit)
        keys[key] = info
    return {key: _read_member(f, info, limit) for key, info in keys.items()}


def _exact(f: BinaryIO, n: int, what: str, member: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise NpzError(f"member {member!r} ends inside its {what}", member=member)
    return data


def _header(f: BinaryIO, member: str) -> Tuple[np.dtype, Tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, header bytes) of one npy member, read without numpy's pickle-capable paths."""
    magic = _exact(f, 8, "npy header", member)
    if magic[:6] != _NPY_MAGIC or magic[6] not in (1, 2, 3):
        raise NpzError(f"member {member!r} is not an npy array (bad magic or version)", member=member)
    size_len = 2 if magic[6] == 1 else 4
    length = struct.unpack("<H" if size_len == 2 else "<I", _exact(f, size_len, "npy header", member))[0]
    if length > MAX_HEADER:
        raise NpzError(f"member {member!r} has an npy header of {length} bytes, more than {MAX_HEADER}",
                       member=member, limit=MAX_HEADER)
    raw = _exact(f, length, "npy header", member)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if magic[6] == 3 else "latin1"))
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ValueError("keys")
        shape, fortran = header["shape"], header["fortran_order"]
        if not isinstance(fortran, bool) or not isinstance(shape, tuple) or len(shape) > 32 or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError("shape")
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, UnicodeDecodeError, KeyError) as exc:
        raise NpzError(f"member {member!r} has an unreadable npy header ({type(exc).__name__})", member=member) from exc
    if dtype.hasobject:
        raise NpzError(f"member {member!r} holds Python objects (dtype {dtype}); datasets are numeric arrays and "
                       f"pickled data is never loaded: save plain number arrays", member=member)
    if dtype.subdtype is not None or dtype.itemsize == 0:
        raise NpzError(f"member {member!r} has dtype {dtype}, which a dataset cannot use", member=member)
    return dtype, shape, fortran, 8 + size_len + length


class _Member:
    """The inflated bytes of one member, read from the archive with a bound: never more than it declares.

    zipfile's own reader also stops at the declared size, but silently; this one says when the
    deflate stream goes on past it (a size lie), ends before it, or fails its CRC.
    """

    def __init__(self, f: BinaryIO, info: zipfile.ZipInfo) -> None:
        self.f, self.info, self.name = f, info, info.filename
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise NpzError(f"member {self.name!r} has no local header where the archive says", member=self.name)
        name_len, extra_len = struct.unpack_from("<HH", local, 26)
        self.pos = info.header_offset + 30 + name_len + extra_len
        self.raw_left = info.compress_size
        self.left = info.file_size
        self.inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        self.pending = b""
        self.crc = 0

    def _raw(self, n: int) -> bytes:
        n = min(n, self.raw_left)
        if n <= 0:
            return b""
        self.f.seek(self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        self.raw_left -= len(data)
        if len(data) < n:
            self.raw_left = 0
        return data

    def read(self, n: int) -> bytes:
        """Up to n inflated bytes (fewer only at the end of the declared size or of the data)."""
        n = min(n, self.left)
        if n <= 0:
            return b""
        if self.inflater is None:
            out = self._raw(n)
        else:
            out = b""
            while len(out) < n:
                if not self.pending:
                    self.pending = self.inflater.unconsumed_tail or self._raw(_CHUNK)
                    if not self.pending:
                        break
                out += self.inflater.decompress(self.pending, n - len(out))
                self.pending = self.inflater.unconsumed_tail
                if self.inflater.eof:
                    break
        self.left -= len(out)
        self.crc = zlib.crc32(out, self.crc)
        return out

    def finish(self) -> None:
        """After the declared bytes: the stream must end here and the CRC must match."""
        if self.inflater is not None and not self.inflater.eof:
            more = self.inflater.decompress(self.pending or self._raw(_CHUNK), 1)
            if more:
                raise NpzError(f"member {self.name!r} inflates past its declared {self.info.file_size} bytes "
                               f"(a size lie); refused", member=self.name, limit=self.info.file_size)
        if (self.crc & 0xFFFFFFFF) != self.info.CRC:
            raise NpzError(f"member {self.name!r} fails its CRC check (corrupt)", member=self.name)


def _read_member(f: BinaryIO, info: zipfile.ZipInfo, limit: int) -> np.ndarray:
    member = info.filename
    stream = _Member(f, info)
    dtype, shape, fortran, header_len = _header(stream, member)  # type: ignore[arg-type]
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    if nbytes > limit:
        raise NpzError(f"member {member!r} declares an array of shape {shape[:8]} ({mib(nbytes)}), more than the "
                       f"limit of {mib(limit)}", member=member, limit=limit)
    if header_len + nbytes != info.file_size:
        raise NpzError(f"member {member!r}: its npy header says {nbytes} bytes of data, the archive says "
                       f"{info.file_size - header_len}", member=member)
    array = np.empty(count, dtype=dtype)
    view = memoryview(array.view(np.uint8)) if count else memoryview(bytearray())  # type: ignore[arg-type]
    got = 0
    while got < nbytes:
        chunk = stream.read(min(_CHUNK, nbytes - got))
        if not chunk:
            raise NpzError(f"member {member!r} ends after {got} of its {nbytes} data bytes (truncated)",
                           member=member)
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    stream.finish()
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)
