"""The agent's content-addressed blob store.

Blobs (models, datasets) are named by their sha256 and nothing else: a name from the
wire must be 64 lowercase hex digits, so it can never become a path. Uploads land in
``partial/`` and survive a dropped line (the agent owns the offset; a push resumes
there). Installing hashes the upload (a zlib one is first decoded into ``tmp/``), fsyncs
it, renames it into ``blobs/`` and fsyncs the directory, so a blob is either absent or
whole. Every read is hash-checked.
Past the quota, least-recently-used blobs are evicted.

    root/blobs/<sha256>            installed, immutable
    root/partial/<sha256>.<enc>    an upload in progress (enc: raw | zlib)
    root/tmp/                      installs in flight; emptied at start-up
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ENCODINGS = ("raw", "zlib")
CRASH_ENV = "EDGESHIP_AGENT_CRASH_AT"  # fault injection for tests: after_write | after_fsync | after_rename


class StoreError(Exception):
    """A store request that cannot be done; ``code`` goes into the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_name(sha256: object) -> str:
    """The only gate between the wire and the file system: 64 lowercase hex digits or an error."""
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise StoreError("bad_name", f"blob names are sha256 hex digests; refusing {str(sha256)[:80]!r}")
    return sha256


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mismatch(part: Path, got: str, want: str) -> StoreError:
    """Discard an upload whose content is not what its name says; the error tells the host to push again."""
    part.unlink(missing_ok=True)
    return StoreError("hash_mismatch", f"upload hashes to {got[:12]}, not {want[:12]}; "
                                       f"the partial upload was discarded, push again")


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    last_used: float


class Store:
    def __init__(self, root: Path, quota: int) -> None:
        self.root = Path(root)
        self.quota = int(quota)
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.partial, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._expected_size: Dict[Tuple[str, str], int] = {}
        self.recover()

    def recover(self) -> None:
        """Remove what an interrupted install left: temp files, and blobs whose name is not their hash."""
        for p in self.tmp.iterdir():
            p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)
        for p in self.blobs.iterdir():
            if not SHA256_RE.fullmatch(p.name):
                p.unlink()

    # -- queries ---------------------------------------------------------------------------
    def has(self, sha256: str, encoding: str = "raw") -> Tuple[bool, int]:
        """(installed, bytes of a partial upload already here)."""
        check_name(sha256)
        part = self._partial_path(sha256, encoding)
        return (self.blobs / sha256).exists(), part.stat().st_size if part.exists() else 0

    def usage(self) -> int:
        return sum(p.stat().st_size for d in (self.blobs, self.partial) for p in d.iterdir() if p.is_file())

    def list(self) -> List[BlobInfo]:
        out = []
        for p in sorted(self.blobs.iterdir()):
            st = p.stat()
            out.append(BlobInfo(p.name, st.st_size, st.st_mtime))
        return out

    def get(self, sha256: str) -> bytes:
        """A blob's bytes, hash-checked; a blob that no longer matches its name is deleted and reported."""
        path = self.blobs / check_name(sha256)
        if not path.exists():
            raise StoreError("not_found", f"no blob {sha256[:12]} on this board; push it first")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink()
            raise StoreError("corrupt_blob", f"blob {sha256[:12]} no longer matches its hash (storage fault); "
                                             f"it was removed, push it again")
        os.utime(path)  # last used, for LRU eviction
        return data

    def delete(self, sha256: str) -> bool:
        check_name(sha256)
        removed = False
        for p in [self.blobs / sha256, *(self._partial_path(sha256, e) for e in ENCODINGS)]:
            if p.exists():
                p.unlink()
                removed = True
        return removed

    # -- uploads ---------------------------------------------------------------------------
    def _partial_path(self, sha256: str, encoding: str) -> Path:
        if encoding not in ENCODINGS:
            raise StoreError("bad_encoding", f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
        return self.partial / f"{sha256}.{encoding}"

    def begin(self, sha256: str, size: int, encoding: str, wire_size: int) -> int:
        """Start or resume an upload; returns the offset (in wire bytes) the agent wants next."""
        check_name(sha256)
        if not isinstance(size, int) or size < 0 or not isinstance(wire_size, int) or wire_size < 0:
            raise StoreError("bad_request", "size and wire_size must be non-negative integers")
        if size > self.quota:
            raise StoreError("over_quota", f"blob of {size} bytes exceeds the store quota of {self.quota} bytes")
        part = self._partial_path(sha256, encoding)
        # a raw upload becomes the blob by rename; a zlib one is decoded into a second file
        self._make_room(size if encoding == "raw" else size + wire_size, keep=sha256)
        if not part.exists():
            part.touch()
        self._expected_size[(sha256, encoding)] = wire_size
        return part.stat().st_size

    def write(self, sha256: str, encoding: str, offset: int, data: bytes) -> int:
        """Append a chunk if it starts where the agent expects; returns the offset it expects next either way."""
        part = self._partial_path(check_name(sha256), encoding)
        if not part.exists():
            raise StoreError("no_upload", f"no upload of {sha256[:12]} in progress; send put_begin first")
        current = part.stat().st_size
        if offset != current:
            return current  # duplicate or out of order: harmless, the sender resumes from `current`
        limit = self._expected_size.get((sha256, encoding))
        if limit is not None and current + len(data) > limit:
            raise StoreError("bad_request", f"chunk runs past the announced size of {limit} bytes")
        with part.open("ab") as f:
            f.write(data)
        return current + len(data)

    def finish(self, sha256: str, encoding: str) -> int:
        """Decode, hash-check and atomically install an upload; returns the blob size."""
        part = self._partial_path(check_name(sha256), encoding)
        if not part.exists():
            raise StoreError("no_upload", f"no upload of {sha256[:12]} in progress")
        if encoding == "raw":
            return self._install_raw(sha256, part)
        tmp = self.tmp / f"{sha256}.{os.getpid()}.{time.monotonic_ns()}"
        digest = hashlib.sha256()
        size = 0
        try:
            decoder = zlib.decompressobj() if encoding == "zlib" else None
            with part.open("rb") as src, tmp.open("wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    if decoder is not None:
                        chunk = decoder.decompress(chunk, 1 << 24)
                        while decoder.unconsumed_tail:
                            more = decoder.decompress(decoder.unconsumed_tail, 1 << 24)
                            digest.update(chunk)
                            dst.write(chunk)
                            size += len(chunk)
                            chunk = more
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                    if size > self.quota:
                        raise StoreError("over_quota", f"blob {sha256[:12]} decodes to more than the quota")
                if decoder is not None:
                    tail = decoder.flush()
                    digest.update(tail)
                    dst.write(tail)
                    size += len(tail)
                    if not decoder.eof:
                        raise StoreError("hash_mismatch", f"upload of {sha256[:12]} is an incomplete zlib stream")
                _crash_point("after_write")
                dst.flush()
                os.fsync(dst.fileno())
            _crash_point("after_fsync")
        except zlib.error as exc:
            tmp.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
            raise StoreError("hash_mismatch", f"upload of {sha256[:12]} is not a valid zlib stream ({exc}); push again") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256:
            tmp.unlink()
            raise _mismatch(part, digest.hexdigest(), sha256)
        os.replace(tmp, self.blobs / sha256)
        _crash_point("after_rename")
        _fsync_dir(self.blobs)
        part.unlink()
        self._expected_size.pop((sha256, encoding), None)
        return size

    def _install_raw(self, sha256: str, part: Path) -> int:
        """A raw upload is the blob itself: hash it, fsync it, rename it into place."""
        digest = hashlib.sha256()
        with part.open("rb+") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            _crash_point("after_write")
            os.fsync(f.fileno())
            size = f.tell()
        _crash_point("after_fsync")
        if digest.hexdigest() != sha256:
            raise _mismatch(part, digest.hexdigest(), sha256)
        os.replace(part, self.blobs / sha256)
        _crash_point("after_rename")
        _fsync_dir(self.blobs)
        self._expected_size.pop((sha256, "raw"), None)
        return size

    def _make_room(self, incoming: int, keep: Optional[str] = None) -> None:
        """Evict least-recently-used blobs until `incoming` more bytes fit under the quota."""
        used = self.usage()
        if used + incoming <= self.quota:
            return
        candidates = [p for d in (self.blobs, self.partial) for p in d.iterdir() if p.is_file()]
        for path in sorted(candidates, key=lambda p: p.stat().st_mtime):  # abandoned uploads age out too
            if path.name.split(".")[0] == keep:
                continue
            size = path.stat().st_size
            path.unlink()
            used -= size
            if used + incoming <= self.quota:
                return
        if used + incoming > self.quota:
            raise StoreError("over_quota", f"{incoming} more bytes do not fit in the store quota of {self.quota} "
                                           f"bytes even after evicting every other blob")
