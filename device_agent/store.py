"""The agent's content-addressed blob store, safe against hostile peers and a second agent.

Blobs (models, datasets) are named by their sha256 and nothing else: a name from the
wire must be 64 lowercase hex digits, so it can never become a path.

An upload starts with ``put_begin``, which announces the decoded ``size`` and the
``wire_size`` and *reserves* the space the upload will need (``size`` for raw, ``size +
wire_size`` for zlib, whose decoded copy sits beside the partial file while it installs).
The announcement is persisted beside the partial file, so a later connection can resume
the upload (the agent owns the offset) but no ``put`` is accepted without one, and no
chunk runs past ``wire_size``. Installing decodes a zlib upload into ``tmp/`` with a
bounded output (it stops at ``size + 1`` bytes, so a zlib bomb costs at most the announced
size), hashes it, fsyncs it, renames it into ``blobs/`` and fsyncs the directory, so a
blob is either absent or whole. ``has`` and every read hash-check the blob; one that no
longer matches its name is removed. Past the quota, least-recently-used blobs and
abandoned uploads are evicted; an upload that is still being written, or that another
live agent reserved, is not.

Several agents may share one store (two hosts over SSH start two agents): every mutation
holds an exclusive ``flock`` on ``root/.lock``, start-up recovery only removes temp files
of dead processes (or very old ones), and a blob that another agent installed meanwhile
counts as a successful ``put_end``. Directories are 0700 and files 0600. File-system
failures become ``disk_full``, ``store_read_only``, ``store_not_writable`` or ``io_error``
with the errno and the store-relative role, never a board path.

    root/.lock                          the store lock (flock)
    root/blobs/<sha256>                 installed, immutable
    root/partial/<sha256>.<enc>         an upload in progress (enc: raw | zlib)
    root/partial/<sha256>.<enc>.begin   its announcement: size, wire_size, reserved, pid
    root/tmp/<sha256>.<pid>.<ns>        installs in flight; removed once their pid is dead
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ENCODINGS = ("raw", "zlib")
CRASH_ENV = "EDGESHIP_AGENT_CRASH_AT"  # fault injection for tests: after_write | after_fsync | after_rename
ACTIVE_SECONDS = 300.0  # an upload written or begun this recently is in progress: never evicted
STALE_TMP_SECONDS = 3600.0  # a temp file this old is removed even if its pid looks alive (pid reuse)
LOCK_WAIT_SECONDS = 30.0
BEGIN_SUFFIX = ".begin"
_CHUNK = 1 << 20
DIR_MODE = 0o700
FILE_MODE = 0o600

log = logging.getLogger(__name__)


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


def _count(name: str, value: object) -> int:
    """A non-negative integer field from the wire (bools and floats are refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StoreError("bad_request", f"{name} must be a non-negative integer")
    return value


def os_error(exc: OSError, what: str) -> StoreError:
    """An OSError as an error the peer can act on: the errno and what failed, never a board path."""
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError("disk_full", f"the board's disk is full ({name}) writing {what}; "
                                       f"free space on the board, delete blobs or lower the agent's --quota")
    if exc.errno == errno.EROFS:
        return StoreError("store_read_only", f"the store is on a read-only file system ({name}) writing {what}; "
                                             f"remount it read-write or start the agent with another --store")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError("store_not_writable", f"the agent may not write {what} ({name}); "
                                                f"give the agent's user the store directory")
    return StoreError("io_error", f"{what} failed on the board: {name} ({reason})")


@contextlib.contextmanager
def _fs(what: str) -> Iterator[None]:
    """Translate file-system errors inside the block into a StoreError naming `what` (a store-relative role)."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, what) from exc


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, flags: int = 0) -> int:
    """A new private file (0600 whatever the umask), opened for writing."""
    return os.open(str(path), os.O_WRONLY | os.O_CREAT | flags, FILE_MODE)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _age(mtime: float) -> float:
    """Seconds since a file time (``st_mtime``). Wall clock on purpose: file times are wall clock, and the
    age must mean the same to every agent on the store, so a monotonic clock cannot be compared with them."""
    return time.time() - mtime


def _zlib_bound(size: int) -> int:
    """The most bytes zlib's deflate needs for `size` input bytes (zlib's compressBound, plus header slack)."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 64


def _sha256_file(fd: int) -> Tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        size += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    last_used: float


@dataclass(frozen=True)
class Begin:
    """What a put_begin announced for one upload (persisted beside its partial file)."""

    size: int
    wire_size: int
    reserved: int
    pid: int


class Store:
    def __init__(self, root: Path, quota: int) -> None:
        self.root = Path(root)
        self.quota = int(quota)
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.tmp = self.root / "tmp"
        self._announced: Dict[Tuple[str, str], int] = {}  # wire sizes this process was told, for put after install
        self._lock_fd: Optional[int] = None
        self._lock_depth = 0
        try:  # a read-only or broken store must not stop the agent: reads may still work, writes say why not
            for d in (self.root, self.blobs, self.partial, self.tmp):
                d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                if d.stat().st_mode & 0o777 != DIR_MODE:
                    os.chmod(d, DIR_MODE)
            self.recover()
        except OSError as exc:
            log.warning("store not writable at start-up: %s", os_error(exc, "the store"))

    # -- locking ---------------------------------------------------------------------------
    def _open_lock(self) -> Optional[int]:
        path = str(self.root / ".lock")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError:
            try:
                return os.open(path, os.O_RDONLY)  # read-only store: flock works on a read-only descriptor too
            except OSError:
                return None  # no lock file and none can be made: nothing can be mutated either

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (other agent processes on the same store wait)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        if self._lock_fd is None:
            self._lock_fd = self._open_lock()
        fd = self._lock_fd
        if fd is not None:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError("store_busy", f"another agent has held the store lock for "
                                                       f"{LOCK_WAIT_SECONDS:.0f} s; try again") from None
                    time.sleep(0.005)
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def recover(self) -> None:
        """Remove what interrupted installs left: temp files of dead processes, and misnamed blobs.

        Another agent may be installing into the same store right now, so a temp file whose
        pid is alive (and that is not ancient) is left alone.
        """
        with self._locked():
            for p in self.tmp.iterdir():
                parts = p.name.split(".")
                pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else -1
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue
                if pid == os.getpid() or not _pid_alive(pid) or _age(st.st_mtime) > STALE_TMP_SECONDS:
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
            for p in self.blobs.iterdir():
                if not SHA256_RE.fullmatch(p.name) or not p.is_file():
                    p.unlink(missing_ok=True)
                elif p.stat().st_mode & 0o777 != FILE_MODE:
                    os.chmod(p, FILE_MODE)  # blobs of an older agent were world-readable
            for p in self.partial.iterdir():  # what a kill between install steps left behind
                part = p.with_name(p.name[: -len(BEGIN_SUFFIX)]) if p.name.endswith(BEGIN_SUFFIX) else p
                sha256 = part.name.split(".")[0]
                if not part.exists() or (self.blobs / sha256).exists():
                    self._drop_upload(part)

    # -- uploads' announcements --------------------------------------------------------------
    def _partial_path(self, sha256: str, encoding: str) -> Path:
        if encoding not in ENCODINGS:
            raise StoreError("bad_encoding", f"unknown encoding {str(encoding)[:40]!r}; "
                                             f"expected one of {', '.join(ENCODINGS)}")
        return self.partial / f"{sha256}.{encoding}"

    @staticmethod
    def _begin_path(part: Path) -> Path:
        return part.with_name(part.name + BEGIN_SUFFIX)

    def _read_begin(self, part: Path) -> Optional[Begin]:
        """The persisted announcement of an upload, or None (absent, or not one this agent wrote)."""
        try:
            doc = json.loads(self._begin_path(part).read_text())
            begin = Begin(**{k: doc[k] for k in ("size", "wire_size", "reserved", "pid")})
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vars(begin).values()):
            return None
        return begin

    def _write_begin(self, part: Path, begin: Begin) -> None:
        staged = self.tmp / f"begin.{os.getpid()}.{time.monotonic_ns()}"
        fd = _create(staged, os.O_EXCL)
        try:
            _write_all(fd, json.dumps(vars(begin)).encode())
        finally:
            os.close(fd)
        os.replace(staged, self._begin_path(part))

    def _drop_upload(self, part: Path) -> None:
        part.unlink(missing_ok=True)
        self._begin_path(part).unlink(missing_ok=True)

    def _uploads(self) -> Dict[Path, Tuple[int, float, bool]]:
        """Every upload in partial/: its partial path -> (bytes it holds or reserves, last written, active)."""
        out: Dict[Path, Tuple[int, float, bool]] = {}
        for p in self.partial.iterdir():
            part = p.with_name(p.name[: -len(BEGIN_SUFFIX)]) if p.name.endswith(BEGIN_SUFFIX) else p
            if part in out:
                continue
            stats = []
            for f in (part, self._begin_path(part)):
                with contextlib.suppress(FileNotFoundError):
                    stats.append(f.stat())
            if not stats:
                continue
            begin = self._read_begin(part) if part.exists() else None  # a begin without its partial reserves nothing
            held = sum(st.st_size for st in stats)
            if begin is not None:
                held = max(held, begin.reserved)
            written = max(st.st_mtime for st in stats)
            active = self._in_progress(begin, written)
            out[part] = (held, written, active)
        return out

    @staticmethod
    def _in_progress(begin: Optional[Begin], written: float) -> bool:
        """An upload written (or begun) in the last ACTIVE_SECONDS, or reserved by another live agent."""
        if _age(written) < ACTIVE_SECONDS:
            return True
        return begin is not None and begin.pid != os.getpid() and _pid_alive(begin.pid)

    # -- queries ---------------------------------------------------------------------------
    def verified(self, sha256: str) -> bool:
        """Whether blob `sha256` is installed *and* its bytes still hash to its name.

        A blob that no longer matches (a storage fault, a tampered file) is removed, so the
        host pushes it again instead of trusting a file that merely exists.
        """
        path = self.blobs / check_name(sha256)
        try:
            fd = os.open(str(path), os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise os_error(exc, "an installed blob") from exc
        try:
            digest, _ = _sha256_file(fd)
            if digest == sha256:
                return True
            self._remove_corrupt(path, os.fstat(fd))
            return False
        finally:
            os.close(fd)

    def _remove_corrupt(self, path: Path, st: os.stat_result) -> None:
        """Delete a blob that failed its hash check, unless another agent replaced it since."""
        try:
            with self._locked():
                now = path.stat()
                if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                    path.unlink()
            log.warning("blob %s did not match its hash and was removed", path.name[:12])
        except OSError as exc:  # gone already, or a read-only store: it is still never loaded
            log.warning("blob %s did not match its hash: %s", path.name[:12], os_error(exc, "a corrupt blob"))

    def has(self, sha256: str, encoding: str = "raw") -> Tuple[bool, int]:
        """(installed and verified, bytes of a partial upload already here in that encoding)."""
        part = self._partial_path(check_name(sha256), encoding)
        if self.verified(sha256):
            return True, 0
        return False, self._offset(part)

    def _offset(self, part: Path) -> int:
        """Where an upload resumes: the partial's size, or 0 when it is absent or longer than announced."""
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            return 0
        begin = self._read_begin(part)
        return 0 if begin is not None and size > begin.wire_size else size

    def usage(self) -> int:
        """Bytes the store holds or has promised: installed blobs plus what every upload reserved."""
        try:
            blobs = sum(p.stat().st_size for p in self.blobs.iterdir() if p.is_file())
            return blobs + sum(held for held, _, _ in self._uploads().values())
        except FileNotFoundError:
            return 0

    def list(self) -> List[BlobInfo]:
        out = []
        for p in sorted(self.blobs.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                out.append(BlobInfo(p.name, st.st_size, st.st_mtime))
        return out

    def get(self, sha256: str) -> bytes:
        """A blob's bytes, hash-checked; a blob that no longer matches its name is deleted and reported."""
        path = self.blobs / check_name(sha256)
        try:
            fd = os.open(str(path), os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError("not_found", f"no blob {sha256[:12]} on this board; push it first") from None
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != sha256:
                self._remove_corrupt(path, os.fstat(fd))
                raise StoreError("corrupt_blob", f"blob {sha256[:12]} no longer matches its hash (storage fault); "
                                                 f"it was removed, push it again")
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # last used, for LRU eviction; best effort (a read-only store)
            os.utime(path)
        return data

    def delete(self, sha256: str) -> bool:
        check_name(sha256)
        removed = False
        with self._locked(), _fs("the blob and its uploads (deleting)"):
            for p in [self.blobs / sha256, *(self._partial_path(sha256, e) for e in ENCODINGS)]:
                if p.exists():
                    p.unlink()
                    removed = True
                self._begin_path(p).unlink(missing_ok=True)
        return removed

    # -- uploads ---------------------------------------------------------------------------
    def begin(self, sha256: str, size: object, encoding: str, wire_size: object) -> Tuple[bool, int]:
        """Start, join or resume an upload and reserve its space: (already installed, offset wanted next).

        The offset is in wire bytes and is the agent's: the bytes already in the partial
        file. A begin that announces other sizes than the partial's restarts it, unless
        another live agent is writing it (``upload_busy``).
        """
        part = self._partial_path(check_name(sha256), encoding)
        size, wire_size = _count("size", size), _count("wire_size", wire_size)
        if size > self.quota:
            raise StoreError("over_quota", f"blob of {size} bytes exceeds the store quota of {self.quota} bytes")
        if encoding == "raw" and wire_size != size:
            raise StoreError("bad_request", f"a raw upload's wire_size must equal its size ({size}), not {wire_size}")
        if encoding == "zlib" and wire_size > _zlib_bound(size):
            raise StoreError("bad_request", f"a zlib upload of {size} bytes cannot need {wire_size} wire bytes "
                                            f"(at most {_zlib_bound(size)})")
        # a raw upload becomes the blob by rename; a zlib one is decoded into a second file
        reserved = size if encoding == "raw" else size + wire_size
        with self._locked(), _fs("a partial upload (put_begin)"):
            if (self.blobs / sha256).exists():
                return True, 0  # installed meanwhile (another agent); `has` verifies it
            old = self._read_begin(part)
            restart = not part.exists() or part.stat().st_size > wire_size  # absent, or longer than it can be
            if old is not None and (old.size, old.wire_size) != (size, wire_size):
                written = max(part.stat().st_mtime, self._begin_path(part).stat().st_mtime)
                if old.pid != os.getpid() and _pid_alive(old.pid) and _age(written) < ACTIVE_SECONDS:
                    raise StoreError("upload_busy", f"another agent is receiving {sha256[:12]} with other sizes "
                                                    f"({old.size} bytes, {old.wire_size} on the wire); try again later")
                restart = True  # an abandoned upload of another wire form: start over
            if restart:
                os.close(_create(part, os.O_TRUNC))
            self._make_room(reserved, keep=part)
            self._write_begin(part, Begin(size, wire_size, reserved, os.getpid()))
            self._announced[(sha256, encoding)] = wire_size
            return False, part.stat().st_size

    def write(self, sha256: str, encoding: str, offset: object, data: bytes) -> int:
        """Append a chunk if it starts where the agent expects; returns the offset it expects next either way.

        Only an upload with a known begin takes chunks, and none past its announced wire_size.
        When another agent installed the blob meanwhile, the reply is the whole wire size, so
        the sender moves on to put_end.
        """
        part = self._partial_path(check_name(sha256), encoding)
        offset = _count("offset", offset)
        with self._locked(), _fs("a partial upload (put)"):
            begin = self._read_begin(part)
            if begin is None or not part.exists():
                announced = self._announced.get((sha256, encoding))
                if announced is not None and (self.blobs / sha256).exists():
                    return announced
                raise StoreError("no_upload", f"no upload of {sha256[:12]} in progress; send put_begin first")
            current = part.stat().st_size
            if offset != current:
                return current  # duplicate or out of order: harmless, the sender resumes from `current`
            if current + len(data) > begin.wire_size:
                raise StoreError("bad_request", f"chunk runs past the announced size of {begin.wire_size} bytes")
            fd = os.open(str(part), os.O_WRONLY | os.O_APPEND)
            try:
                _write_all(fd, data)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, current)  # no half chunk: the sender resends it whole
                raise
            finally:
                os.close(fd)
            return current + len(data)

    def finish(self, sha256: str, encoding: str) -> int:
        """Decode, hash-check and atomically install an upload; returns the blob size.

        A blob that another agent installed meanwhile is a success too.
        """
        part = self._partial_path(check_name(sha256), encoding)
        installed = self.blobs / sha256
        with self._locked(), _fs("a partial upload (put_end)"):
            begin = self._read_begin(part)
            if begin is None or not part.exists():
                if installed.exists():
                    return installed.stat().st_size
                raise StoreError("no_upload", f"no upload of {sha256[:12]} in progress")
            have = part.stat().st_size
            if have != begin.wire_size:
                raise StoreError("bad_request", f"the upload of {sha256[:12]} holds {have} of {begin.wire_size} "
                                                f"bytes; send the rest before put_end")
            os.utime(part)  # in progress: not evicted while it installs
            src = os.open(str(part), os.O_RDONLY)
        try:
            if encoding == "raw":
                return self._install_raw(sha256, part, src, begin)
            return self._install_zlib(sha256, part, src, begin)
        finally:
            os.close(src)

    def _same_file(self, path: Path, fd: int) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)

    def _discard(self, part: Path, fd: int, got: str, want: str, why: str = "") -> StoreError:
        """Discard an upload whose content is not what its name says; the error tells the host to push again."""
        with self._locked(), _fs("a partial upload (discarding it)"):
            if self._same_file(part, fd):
                self._drop_upload(part)
        what = why or f"upload hashes to {got[:12]}, not {want[:12]}"
        return StoreError("hash_mismatch", f"{what}; the partial upload was discarded, push again")

    def _install_raw(self, sha256: str, part: Path, fd: int, begin: Begin) -> int:
        """A raw upload is the blob itself: hash it, fsync it, rename it into place."""
        with _fs("a partial upload (hashing it)"):
            digest, size = _sha256_file(fd)
            _crash_point("after_write")
            os.fsync(fd)
        _crash_point("after_fsync")
        if digest != sha256:
            raise self._discard(part, fd, digest, sha256)
        with self._locked(), _fs("the installed blob (put_end)"):
            if (self.blobs / sha256).exists():  # another agent installed it meanwhile
                if self._same_file(part, fd):
                    self._drop_upload(part)
                return size
            if not self._same_file(part, fd):
                raise StoreError("no_upload", f"the upload of {sha256[:12]} was removed while it installed; push again")
            os.replace(part, self.blobs / sha256)
            _crash_point("after_rename")
            _fsync_dir(self.blobs)
            self._begin_path(part).unlink(missing_ok=True)
        return size

    def _install_zlib(self, sha256: str, part: Path, src: int, begin: Begin) -> int:
        """Decode into tmp/ with a bounded output (at most the announced size + 1 byte), hash, install."""
        tmp = self.tmp / f"{sha256}.{os.getpid()}.{time.monotonic_ns()}"
        digest = hashlib.sha256()
        size = 0
        decoder = zlib.decompressobj()
        try:
            with _fs("a blob being installed (tmp)"):
                dst = _create(tmp, os.O_EXCL)
                try:
                    os.lseek(src, 0, os.SEEK_SET)
                    while not decoder.eof:
                        pending = os.read(src, _CHUNK)
                        if not pending:
                            break
                        while pending and not decoder.eof:
                            # never more than the announced size + 1 byte: a zlib bomb stops right here
                            out = decoder.decompress(pending, min(_CHUNK, begin.size + 1 - size))
                            pending = decoder.unconsumed_tail
                            digest.update(out)
                            _write_all(dst, out)
                            size += len(out)
                            if size > begin.size:
                                raise self._discard(part, src, "", sha256,
                                                    f"upload of {sha256[:12]} decodes to more than the announced "
                                                    f"{begin.size} bytes")
                    if not decoder.eof:
                        raise self._discard(part, src, "", sha256, f"upload of {sha256[:12]} is an incomplete zlib stream")
                    _crash_point("after_write")
                    os.fsync(dst)
                finally:
                    os.close(dst)
            _crash_point("after_fsync")
        except zlib.error as exc:
            tmp.unlink(missing_ok=True)
            raise self._discard(part, src, "", sha256, f"upload of {sha256[:12]} is not a valid zlib stream ({exc})") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise self._discard(part, src, digest.hexdigest(), sha256)
        with self._locked(), _fs("the installed blob (put_end)"):
            if (self.blobs / sha256).exists():  # another agent installed it meanwhile
                tmp.unlink()
            else:
                os.replace(tmp, self.blobs / sha256)
                _crash_point("after_rename")
                _fsync_dir(self.blobs)
            if self._same_file(part, src):
                self._drop_upload(part)
        return size

    def _make_room(self, incoming: int, keep: Optional[Path] = None) -> None:
        """Evict least-recently-used blobs and abandoned uploads until `incoming` more bytes fit.

        Called with the lock held. `keep` is the upload being begun: its own reservation is
        what `incoming` replaces. Uploads in progress (recently written, or reserved by
        another live agent) are never evicted.
        """
        uploads = self._uploads()
        if keep is not None:
            uploads.pop(keep, None)  # its reservation is what `incoming` replaces
            with contextlib.suppress(FileNotFoundError):
                incoming = max(incoming, keep.stat().st_size)
        blobs = {}
        for p in self.blobs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                blobs[p] = (st.st_size, st.st_mtime)
        used = sum(s for s, _ in blobs.values()) + sum(h for h, _, _ in uploads.values())
        if used + incoming <= self.quota:
            return
        candidates: List[Tuple[float, int, Path, bool]] = [(t, s, p, False) for p, (s, t) in blobs.items()]
        candidates += [(t, h, p, True) for p, (h, t, active) in uploads.items() if not active]
        for _, held, path, is_upload in sorted(candidates, key=lambda c: c[0]):
            if is_upload:
                self._drop_upload(path)
            else:
                path.unlink(missing_ok=True)
            used -= held
            if used + incoming <= self.quota:
                return
        raise StoreError("over_quota", f"{incoming} more bytes do not fit in the store quota of {self.quota} "
                                       f"bytes even after evicting every other blob and abandoned upload "
                                       f"(uploads in progress are kept)")

