"""A serial cable for the emulated serial board and its tests: two real pty pairs joined by a paced, fault-injecting relay.

    host (pyserial on relay.host_port) <-> pty A <-> relay threads <-> pty B <-> agent (relay.board_port)

A pty has no line rate, so each direction is paced to the configured baud rate (10 bits
per byte, like 8N1) against the monotonic clock: a byte reaches the far end when its last
bit would have. Per direction, the relay can

* drop bytes: at explicit offsets, or each byte with a probability;
* flip bits: at explicit offsets (offset -> XOR mask), or each byte with a probability
  (one random bit);
* stall the line for N seconds before the byte at a given offset;
* cut the line at an offset (or now, with :meth:`SerialRelay.cut`): from then on nothing
  passes in either direction until :meth:`SerialRelay.reconnect`. Like an unplugged cable:
  both pty endpoints stay open, what is sent meanwhile is clocked out (at line rate) into
  nothing.

Offsets count the bytes each sender has written since the relay started (dropped and lost
bytes included), from 0. Random faults are a pure function of (seed, direction, offset),
so a run is reproducible whatever the read chunking or thread timing. Every injected fault
is logged (:attr:`SerialRelay.injected`) and every direction counted (:meth:`SerialRelay.stats`).

Use it as a context manager; it also stops (threads joined, all fds closed) when garbage
collected. Its threads are daemons and never keep a test run alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType

HOST_TO_BOARD = "host_to_board"
BOARD_TO_HOST = "board_to_host"
DIRECTIONS = (HOST_TO_BOARD, BOARD_TO_HOST)

_MASK64 = (1 << 64) - 1
_BURST_S = 0.005  # line-time credit an idle line may send at once (absorbs sleep overshoot)
_PIECE_S = 0.004  # the pacer wakes about this often while the line is busy


@dataclass(frozen=True)
class FaultEvent:
    """One fault the relay injected (or a cut/reconnect it performed)."""

    direction: str  # HOST_TO_BOARD or BOARD_TO_HOST ("both" for cut() and reconnect())
    kind: str  # "drop", "flip", "stall", "cut", "reconnect"
    offset: int  # offset of the byte it hit in that direction (-1 for cut() and reconnect())
    detail: float = 0  # drop: the byte's value; flip: the XOR mask; stall: seconds
    at: float = 0.0  # time.monotonic() when it happened


@dataclass(frozen=True)
class DirectionStats:
    """Byte counts of one direction; ``offset`` is where the next fault offset lands."""

    taken: int = 0  # read from the sending side's pty (some may still be queued in the relay)
    offset: int = 0  # went through the fault stage: passed + dropped + lost (+ bytes being written)
    passed: int = 0  # delivered to the receiving side's pty
    dropped: int = 0
    flipped: int = 0
    lost: int = 0  # swallowed by a cut line


@dataclass(frozen=True)
class _Faults:
    drop_at: tuple[int, ...] = ()
    drop_prob: float = 0.0
    flip_at: tuple[tuple[int, int], ...] = ()  # sorted (offset, mask)
    flip_prob: float = 0.0
    stall_at: tuple[tuple[int, float], ...] = ()  # sorted (offset, seconds)
    cut_at: int | None = None

    def events(self) -> list[int]:
        """Offsets where the pacer has to start a new piece (stalls and the cut)."""
        marks = [o for o, _ in self.stall_at]
        if self.cut_at is not None:
            marks.append(self.cut_at)
        return sorted(set(marks))

    def has_byte_faults(self) -> bool:
        return bool(self.drop_at or self.flip_at or self.drop_prob > 0 or self.flip_prob > 0)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _make_raw(fd: int) -> None:
    """cfmakeraw(): 8 bits through unchanged, no echo, no CR/LF mapping, no signals, no flow control."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR | termios.IGNCR
               | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY | termios.INPCK)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc = list(cc)
    cc[termios.VMIN] = 1  # a blocking read returns as soon as one byte is there
    cc[termios.VTIME] = 0  # ... with no inter-byte timer
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def _pending(fd: int) -> int:
    """Bytes waiting to be read on ``fd`` (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


class _Line:
    """Everything the pump threads share; deliberately holds no reference to the SerialRelay."""

    def __init__(self, baud: int | None, seed: int, masters: tuple[int, int]) -> None:
        self.rate = None if baud is None else baud / 10.0  # bytes per second
        self.seed = seed & _MASK64
        self.masters = masters
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.cut = False
        self.faults = [_Faults(), _Faults()]
        self.stats = [DirectionStats(), DirectionStats()]
        self.busy = [False, False]
        self.injected: list[FaultEvent] = []

    def count(self, d: int, **deltas: int) -> None:
        """Add to direction d's counters; call with the lock held."""
        s = self.stats[d]
        self.stats[d] = replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})

    def log(self, d: int, kind: str, offset: int, detail: float = 0) -> None:
        """Record a fault; call with the lock held."""
        self.injected.append(FaultEvent(DIRECTIONS[d], kind, offset, detail, time.monotonic()))

    def uniform(self, d: int, kind: int, offset: int) -> tuple[float, int]:
        """A reproducible draw in [0, 1) plus 3 spare random bits for (direction, fault kind, offset)."""
        h = _splitmix64(_splitmix64(self.seed ^ (d << 1 | kind)) ^ offset)
        return (h >> 11) / float(1 << 53), h & 7

    def apply(self, d: int, f: _Faults, start: int, piece: bytes) -> bytes:
        """Drops and flips for bytes start.. of direction d; call with the lock held."""
        if not f.has_byte_faults():
            return piece
        drop_at = set(f.drop_at)
        flip_at = dict(f.flip_at)
        out = bytearray()
        dropped = flipped = 0
        for i, byte in enumerate(piece):
            off = start + i
            if off in drop_at or (f.drop_prob > 0 and self.uniform(d, 0, off)[0] < f.drop_prob):
                self.log(d, "drop", off, byte)
                dropped += 1
                continue
            mask = flip_at.get(off, 0)
            if not mask and f.flip_prob > 0:
                u, bit = self.uniform(d, 1, off)
                mask = 1 << bit if u < f.flip_prob else 0
            if mask:
                self.log(d, "flip", off, mask)
                flipped += 1
                byte ^= mask
            out.append(byte)
        self.count(d, dropped=dropped, flipped=flipped)
        return bytes(out)


def _pump(line: _Line, d: int) -> None:
    """Move bytes of direction d from its sender's master to its receiver's master, paced and faulted."""
    src, dst = line.masters[d], line.masters[1 - d]
    rate = line.rate
    read_max = 4096 if rate is None else max(1, min(4096, int(rate * 0.02)))
    piece_max = 4096 if rate is None else max(1, int(rate * _PIECE_S))
    line_free = time.monotonic()  # when the line has clocked out everything handed to it so far
    while not line.stop.is_set():
        try:
            ready, _, _ = select.select([src], [], [], 0.05)
        except (OSError, ValueError):
            return
        if not ready:
            continue
        with line.lock:
            line.busy[d] = True  # before the read, so drain() never sees the bytes nowhere
        try:
            data = os.read(src, read_max)
        except OSError as exc:
            data = b""
            if exc.errno not in (errno.EAGAIN, errno.EIO):  # EIO: no slave open; cannot happen while we hold one
                with line.lock:
                    line.busy[d] = False
                return
        with line.lock:
            line.busy[d] = bool(data)
            line.count(d, taken=len(data))
        if not data:
            line.stop.wait(0.005)
            continue
        pos = 0
        while pos < len(data) and not line.stop.is_set():
            stall = 0.0
            with line.lock:
                f = line.faults[d]
                start = line.stats[d].offset
                end = start + min(piece_max, len(data) - pos)
                for mark in f.events():
                    if mark == start:
                        for off, seconds in f.stall_at:
                            if off == start:
                                stall += seconds
                                line.log(d, "stall", start, seconds)
                        if f.cut_at == start and not line.cut:
                            line.cut = True
                            line.log(d, "cut", start)
                    elif start < mark < end:
                        end = mark
                        break
                piece = data[pos:pos + end - start]
                if line.cut:
                    out = b""
                    line.count(d, lost=len(piece))
                else:
                    out = line.apply(d, f, start, piece)
                line.count(d, offset=len(piece))
            pos += len(piece)
            now = time.monotonic()
            if rate is not None:
                line_free = max(line_free, now - _BURST_S)
                if stall:
                    line_free = max(line_free, now) + stall
                line_free += len(piece) / rate
                if line_free > now and line.stop.wait(line_free - now):
                    break
            elif stall and line.stop.wait(stall):
                break
            _deliver(line, d, dst, out)
        with line.lock:
            line.busy[d] = False


def _deliver(line: _Line, d: int, dst: int, out: bytes) -> None:
    view = memoryview(out)
    while view and not line.stop.is_set():
        with line.lock:
            if line.cut:  # cut while these bytes were on the wire
                line.count(d, lost=len(view))
                return
        try:
            n = os.write(dst, view)
        except BlockingIOError:  # the receiver is not reading: its pty buffer is full
            try:
                select.select([], [dst], [], 0.05)
            except (OSError, ValueError):
                return
            continue
        except OSError:
            return
        with line.lock:
            line.count(d, passed=n)
        view = view[n:]


def _shutdown(line: _Line, threads: list[threading.Thread], fds: list[int]) -> None:
    line.stop.set()
    for t in threads:
        if t is not threading.current_thread():
            t.join(timeout=2.0)
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


def _direction_indexes(direction: str) -> list[int]:
    if direction == "both":
        return [0, 1]
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {(*DIRECTIONS, 'both')}, not {direction!r}")
    return [DIRECTIONS.index(direction)]


class SerialRelay:
    """Two pty pairs and two pump threads: a paced, fault-injecting serial cable.

    ``baud=None`` passes bytes as fast as the ptys allow (faults still apply).
    """

    def __init__(self, baud: int | None = 115200, *, seed: int = 0) -> None:
        if baud is not None and baud <= 0:
            raise ValueError(f"baud must be positive or None, not {baud}")
        self.baud = baud
        self.seed = seed
        fds: list[int] = []
        try:
            master_a, slave_a = os.openpty()
            fds += [master_a, slave_a]
            master_b, slave_b = os.openpty()
            fds += [master_b, slave_b]
            for slave in (slave_a, slave_b):
                _make_raw(slave)
            for master in (master_a, master_b):
                os.set_blocking(master, False)
            self.host_port: str = os.ttyname(slave_a)
            self.board_port: str = os.ttyname(slave_b)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        # The relay keeps both slaves open for its whole life, so an endpoint closing and
        # reopening its port never hangs the line up (no EIO on the masters).
        self._line = _Line(baud, seed, (master_a, master_b))
        self._threads = [threading.Thread(target=_pump, args=(self._line, d), name=f"serial-relay-{DIRECTIONS[d]}",
                                          daemon=True) for d in (0, 1)]
        self._finalizer = weakref.finalize(self, _shutdown, self._line, self._threads, fds)
        for t in self._threads:
            t.start()

    # -- lifetime -----------------------------------------------------------------------

    def __enter__(self) -> SerialRelay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop both pumps and close all four pty fds; safe to call more than once."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # -- faults -------------------------------------------------------------------------

    def set_faults(self, direction: str, *, drop_at: Iterable[int] = (), drop_prob: float = 0.0,
                   flip_at: Mapping[int, int] | Iterable[int] = (), flip_prob: float = 0.0,
                   stall_at: Mapping[int, float] | None = None, cut_at: int | None = None) -> None:
        """Replace the faults of ``direction`` ("host_to_board", "board_to_host" or "both").

        ``flip_at`` maps offset -> XOR mask (a plain list of offsets flips bit 0);
        ``stall_at`` maps offset -> seconds the line pauses before that byte. Offsets the
        direction has already passed never fire.
        """
        for p in (drop_prob, flip_prob):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probabilities must be within [0, 1], not {p}")
        flips = flip_at.items() if isinstance(flip_at, Mapping) else ((o, 1) for o in flip_at)
        faults = _Faults(
            drop_at=tuple(sorted(set(drop_at))),
            drop_prob=drop_prob,
            flip_at=tuple(sorted((int(o), int(m) & 0xFF) for o, m in flips)),
            flip_prob=flip_prob,
            stall_at=tuple(sorted((int(o), float(s)) for o, s in (stall_at or {}).items())),
            cut_at=cut_at,
        )
        with self._line.lock:
            for d in _direction_indexes(direction):
                self._line.faults[d] = faults

    def clear_faults(self, direction: str = "both") -> None:
        """No more faults in ``direction``; a cut line stays cut until :meth:`reconnect`."""
        with self._line.lock:
            for d in _direction_indexes(direction):
                self._line.faults[d] = _Faults()

    def cut(self) -> None:
        """Unplug the cable now."""
        with self._line.lock:
            if not self._line.cut:
                self._line.cut = True
                self._line.injected.append(FaultEvent("both", "cut", -1, 0, time.monotonic()))

    def reconnect(self) -> None:
        """Plug the cable back in; bytes sent from now on pass again."""
        with self._line.lock:
            if self._line.cut:
                self._line.cut = False
                self._line.injected.append(FaultEvent("both", "reconnect", -1, 0, time.monotonic()))

    @property
    def is_cut(self) -> bool:
        with self._line.lock:
            return self._line.cut

    # -- observation --------------------------------------------------------------------

    @property
    def injected(self) -> list[FaultEvent]:
        """Faults injected so far, oldest first (a copy)."""
        with self._line.lock:
            return list(self._line.injected)

    def stats(self, direction: str) -> DirectionStats:
        """Byte counters of one direction (a snapshot)."""
        (d,) = _direction_indexes(direction)
        with self._line.lock:
            return self._line.stats[d]

    def bytes_passed(self, direction: str) -> int:
        return self.stats(direction).passed

    def wait_for(self, direction: str, count: int, timeout: float = 5.0) -> DirectionStats:
        """Wait until the first ``count`` bytes sent in ``direction`` were delivered, dropped or lost.

        The reliable way to know the relay is done with bytes a test wrote (a write returns as
        soon as the pty took them). TimeoutError if that does not happen within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats(direction)
            if s.passed + s.dropped + s.lost >= count:
                return s
            if self.closed or time.monotonic() >= deadline:
                raise TimeoutError(f"serial relay: {direction} settled {s.passed + s.dropped + s.lost} of {count} "
                                   f"bytes in {timeout} s ({s})")
            time.sleep(0.002)

    def drain(self, timeout: float = 5.0, quiet: float = 0.05) -> None:
        """Wait until the relay holds no bytes and nothing moved for ``quiet`` s (TimeoutError if never).

        A pty hands written bytes to the reading side asynchronously, so "idle" needs a quiet
        period; when the byte count is known, :meth:`wait_for` is exact.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        still_since = time.monotonic()
        while not self.closed:
            with self._line.lock:
                snapshot = (tuple(self._line.busy), tuple(self._line.stats))
            idle = not any(snapshot[0]) and not any(_pending(m) for m in self._line.masters)
            now = time.monotonic()
            if snapshot != last or not idle:
                last, still_since = snapshot, now
            elif now - still_since >= quiet:
                return
            if now >= deadline:
                raise TimeoutError(f"serial relay still busy after {timeout} s")
            time.sleep(0.002)
