"""edgeship wire protocol, version 1: framing, reliable delivery and message encoding.

Both sides use this one module (the host imports it from device_agent). It runs over any
byte stream (streams.Stream: ``read(max_bytes, timeout) -> bytes``, b"" on timeout, an exception
on EOF; ``write(data)``; ``close()``): an SSH exec channel, a serial port, a pipe, memory.

Frame (little-endian), see docs/protocol.md::

    0   2  magic         b"ES"
    2   1  version       1
    3   1  type          MSG=1 ACK=2 NAK=3
    4   4  session       chosen by the host per connection; a MSG with seq 0 and a new
                         session resets the receiver
    8   4  seq           MSG: this frame's number; ACK: next expected (cumulative); NAK: expected
    12  4  length        payload bytes (0 for ACK/NAK)
    16  4  header CRC32  of bytes 0..15, so a corrupted length is caught before it is trusted
    20  n  payload       MSG: u32 JSON length, JSON header, binary body
    20+n 4 payload CRC32

Delivery is go-back-N: up to ``window`` MSG frames are unacknowledged; the receiver ACKs
in-order frames, re-ACKs duplicates (so a lost ACK is harmless) and NAKs gaps and bad
CRCs; the sender resends from the NAKed frame, or everything unacknowledged after a
timeout, and gives up with LinkFailed after ``max_retries`` rounds without progress.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

from edgeship.device_agent.streams import Stream

MAGIC = b"ES"
VERSION = 1
MSG, ACK, NAK = 1, 2, 3
FRAME_TYPES = (MSG, ACK, NAK)
_HEADER = struct.Struct("<2sBBIII")  # magic, version, type, session, seq, length
HEADER_SIZE = _HEADER.size + 4  # + header CRC
MAX_FRAME_PAYLOAD = 1 << 20  # what a receiver accepts by default
DEFAULT_CHUNK = 64 * 1024
MAX_JSON_DEPTH = 32  # nesting of a message header; the protocol's own messages need 4
MAX_JSON_INT_DIGITS = 19  # |n| < 10**19: every size, offset and count fits, and parsing stays linear


class ProtocolError(Exception):
    """A peer broke the protocol in a way the receiver survives: the agent answers with an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LinkFailed(Exception):
    """The link stopped working: retries exhausted, stream closed, or no answer in time."""


class LinkTimeout(Exception):
    """No message arrived within the caller's timeout (the link itself may be fine)."""


@dataclass(frozen=True)
class Message:
    """One request or reply: a JSON header (``op`` and its fields) and an optional binary body."""

    header: Dict[str, Any]
    body: bytes = b""

    @property
    def op(self) -> str:
        return str(self.header.get("op", ""))

    def encode(self) -> bytes:
        """The payload; a non-finite number (NaN from a degenerate statistic) travels as null, since peers refuse NaN."""
        try:
            text = json.dumps(self.header, separators=(",", ":"), allow_nan=False)
        except ValueError:
            text = json.dumps(_finite(self.header), separators=(",", ":"), allow_nan=False)
        raw = text.encode("utf-8")
        return struct.pack("<I", len(raw)) + raw + self.body

    @classmethod
    def decode(cls, payload: bytes) -> "Message":
        if len(payload) < 4:
            raise ProtocolError("bad_message", "message shorter than its length prefix")
        (n,) = struct.unpack_from("<I", payload)
        if n > len(payload) - 4:
            raise ProtocolError("bad_message", "message JSON length exceeds the frame")
        try:
            header = json.loads(payload[4 : 4 + n].decode("utf-8"), parse_constant=_refuse_constant,
                                parse_int=_bounded_int, parse_float=_finite_float)
        except _NumberRefused as exc:
            raise ProtocolError("bad_message", str(exc)) from exc
        except RecursionError as exc:
            raise ProtocolError("bad_message", f"message header nests deeper than {MAX_JSON_DEPTH} levels") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError("bad_message", f"message header is not JSON ({clip(exc)})") from exc
        if not isinstance(header, dict):
            raise ProtocolError("bad_message", "message header is not a JSON object")
        if _depth(header) > MAX_JSON_DEPTH:
            raise ProtocolError("bad_message", f"message header nests deeper than {MAX_JSON_DEPTH} levels")
        return cls(header, bytes(payload[4 + n :]))


class _NumberRefused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NumberRefused(f"message header has {name}: numbers on the wire must be finite")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _NumberRefused(f"message header has an integer of {len(text)} digits; at most {MAX_JSON_INT_DIGITS}")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberRefused(f"message header has a number out of range ({clip(text, 40)})")
    return value


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (iterative: a hostile value cannot exhaust the stack)."""
    deepest = 0
    stack: List[Tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            stack.extend((child, level + 1) for child in item)
    return deepest


def _finite(value: Any) -> Any:
    """A copy of a JSON value with NaN and infinities replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def clip(value: Any, limit: int = 80) -> str:
    """A value from the wire as it may be echoed back: its repr (str for exceptions), at most ``limit`` characters."""
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode_frame(ftype: int, session: int, seq: int, payload: bytes = b"") -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, ftype, session & 0xFFFFFFFF, seq & 0xFFFFFFFF, len(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload + struct.pack("<I", zlib.crc32(payload))


@dataclass
class _Frame:
    ftype: int
    session: int
    seq: int
    payload: bytes


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_resent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bad_frames: int = 0
    naks_sent: int = 0


@dataclass
class Link:
    """Reliable, ordered message delivery over a byte stream; single-threaded, pumped by send/recv."""

    stream: Stream
    role: str = "host"  # the host picks the session; the agent adopts it
    window: int = 8
    rto: float = 1.0  # seconds without an ACK before resending
    max_retries: int = 8
    max_payload: int = MAX_FRAME_PAYLOAD
    session: int = 0
    # A frame left incomplete this long is dropped (a serial line shared by hosts in turn);
    # None: its bytes are awaited as long as they take (one peer per stream: stdio, SSH).
    partial_timeout: Optional[float] = None
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        if self.role == "host" and not self.session:
            self.session = int.from_bytes(os.urandom(4), "little") or 1
        self._buf = bytearray()
        self._next_seq = 0
        self._expected = 0
        self._unacked: "OrderedDict[int, bytes]" = OrderedDict()
        # Each entry carries the session it arrived in: a reset drops what an earlier host sent.
        self._inbox: Deque[Tuple[int, Optional[Message], Optional[ProtocolError]]] = deque()
        self._last_progress = time.monotonic()
        self._retries = 0
        self._last_nak: Tuple[int, float] = (-1, 0.0)
        self._partial_grew = 0.0  # when the buffered incomplete frame last grew
        self._partial_len = 0
        self._fresh_seen: Optional[float] = None  # when a new host's first frame was seen inside it
        self._scan_from = 0

    # -- public API -------------------------------------------------------------------------
    def send(self, message: Message, session: Optional[int] = None) -> bool:
        """Queue a message; blocks (pumping the link) while the window is full.

        With ``session``, the message is a reply for that session: it is dropped (False) when
        another host has taken the link over meanwhile, so no host reads an earlier host's reply.
        """
        payload = message.encode()
        if len(payload) > self.max_payload:
            raise ValueError(f"message of {len(payload)} bytes exceeds the frame limit {self.max_payload}")
        while len(self._unacked) >= self.window and (session is None or session == self.session):
            self._pump(time.monotonic() + self.rto)
        if session is not None and session != self.session:
            return False
        frame = encode_frame(MSG, self.session, self._next_seq, payload)
        if not self._unacked:
            self._last_progress = time.monotonic()
        self._unacked[self._next_seq] = frame
        self._next_seq += 1
        self._write(frame)
        self.stats.frames_sent += 1
        return True

    def recv(self, timeout: Optional[float]) -> Message:
        """The next message; LinkTimeout after ``timeout`` s, ProtocolError for a bad frame, LinkFailed if broken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._inbox and self._inbox[0][0] != self.session:
                self._inbox.popleft()  # sent in an earlier session
            if self._inbox:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise LinkTimeout(f"no message within {timeout:.1f} s")
            self._pump(deadline)
        _session, message, error = self._inbox.popleft()
        if error is not None:
            raise error
        assert message is not None  # one of the two is always set
        return message

    def poll(self) -> None:
        """Process whatever has arrived, without waiting: ACKs, resends, a new host's first frame."""
        self._pump(time.monotonic())

    def abandon(self) -> None:
        """Forget the unacknowledged frames and queued messages of a session whose peer is gone.

        Bytes already buffered stay: they may be the next host's first frame.
        """
        self._unacked.clear()
        self._inbox.clear()
        self._retries = 0

    def flush(self, timeout: float) -> None:
        """Wait until every sent frame is acknowledged."""
        deadline = time.monotonic() + timeout
        while self._unacked:
            if time.monotonic() >= deadline:
                raise LinkFailed(f"{len(self._unacked)} frame(s) still unacknowledged after {timeout:.1f} s")
            self._pump(deadline)

    @property
    def pending(self) -> int:
        return len(self._unacked)

    # -- machinery --------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stats.bytes_sent += len(data)

    def _pump(self, deadline: Optional[float]) -> None:
        """Read what arrives (briefly), process frames, and resend on timeout."""
        now = time.monotonic()
        wait = self.rto / 4
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - now))
        data = self.stream.read(1 << 16, wait)
        if data:
            self.stats.bytes_received += len(data)
            self._buf += data
        self._parse()
        if self._unacked and time.monotonic() - self._last_progress > self.rto:
            self._retries += 1
            if self._retries > self.max_retries:
                raise LinkFailed(f"no acknowledgement after {self.max_retries} retries "
                                 f"({self.max_retries * self.rto:.0f} s); the line is down or the agent is not running")
            self._resend_from(next(iter(self._unacked)))

    def _resend_from(self, seq: int) -> None:
        for s, frame in self._unacked.items():
            if s >= seq:
                self._write(frame)
                self.stats.frames_resent += 1
        self._last_progress = time.monotonic()

    def _nak(self) -> None:
        now = time.monotonic()
        if self._last_nak[0] == self._expected and now - self._last_nak[1] < self.rto / 2:
            return  # one NAK per expected frame per half RTO: no NAK storms on a noisy line
        self._last_nak = (self._expected, now)
        self._write(encode_frame(NAK, self.session, self._expected))
        self.stats.naks_sent += 1

    def _drop(self, n: int) -> None:
        """Discard the first n buffered bytes; what follows starts a new (possibly partial) frame."""
        if n > 0:
            del self._buf[:n]
            self._partial_len = 0
            self._partial_grew = time.monotonic()
            self._fresh_seen = None
            self._scan_from = 0

    def _parse(self) -> None:
        buf = self._buf
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                self._drop(len(buf) - 1)  # keep a possible first magic byte
                return
            self._drop(start)
            if len(buf) < HEADER_SIZE:
                return
            _magic, version, ftype, session, seq, length = _HEADER.unpack_from(buf)
            (hcrc,) = struct.unpack_from("<I", buf, _HEADER.size)
            if zlib.crc32(bytes(buf[: _HEADER.size])) != hcrc:
                self._drop(1)  # not a frame start (or a corrupted header): resynchronise
                self.stats.bad_frames += 1
                self._nak_if_peer()
                continue
            if version != VERSION or length > self.max_payload:
                self._drop(HEADER_SIZE)  # its payload is skipped by the resynchronisation above
                self.stats.bad_frames += 1
                if session != self.session:
                    if not (self.role == "agent" and seq == 0 and ftype == MSG):
                        continue  # another session's frame: not this host's error to hear about
                    self._reset(session)  # a new host's first frame: the error goes to that host
                if version != VERSION:
                    self._deliver_error(ProtocolError("bad_version", f"frame version {version}, this side speaks {VERSION}"))
                else:
                    self._deliver_error(ProtocolError(
                        "frame_too_large", f"frame of {length} bytes exceeds the limit of {self.max_payload}"))
                continue
            total = HEADER_SIZE + length + 4
            if len(buf) < total:
                if self._partial_is_stale(session):
                    self._drop(1)  # give up on it: resynchronise on what follows its first byte
                    self.stats.bad_frames += 1
                    continue
                return
            payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
            (pcrc,) = struct.unpack_from("<I", buf, HEADER_SIZE + length)
            if zlib.crc32(payload) != pcrc:
                self._scan_from = 0
                fresh = self._first_fresh_header(session, total)
                self._drop(fresh if fresh is not None else total)  # resume at a new host's frame inside it
                self.stats.bad_frames += 1
                self._nak_if_peer()
                continue
            self._drop(total)
            self._handle(_Frame(ftype, session, seq, payload))

    def _partial_is_stale(self, session: int) -> bool:
        """Whether the incomplete frame at the start of the buffer should be dropped.

        A cut mid-frame leaves a header whose (CRC-valid) length promises bytes that never
        come; trusting it would swallow the next host's frames. So the frame is dropped when
        it has not grown for ``partial_timeout``, or when a new host's first frame (a MSG
        with seq 0 of another session) was seen inside it that long ago: a frame being
        delivered keeps growing and completes well within that time.
        """
        now = time.monotonic()
        if len(self._buf) != self._partial_len:
            self._partial_len = len(self._buf)
            self._partial_grew = now
            if self._fresh_seen is None and self._first_fresh_header(session, len(self._buf)) is not None:
                self._fresh_seen = now
        limit = self.partial_timeout
        if limit is None:
            return False
        if now - self._partial_grew > limit:
            return True
        return self._fresh_seen is not None and now - self._fresh_seen > limit

    def _first_fresh_header(self, session: int, end: int) -> Optional[int]:
        """Offset of the first CRC-valid header of a new host's first frame inside buf[1:end], if any."""
        buf = self._buf
        pos = max(1, self._scan_from)
        while True:
            i = buf.find(MAGIC, pos, end)
            if i < 0 or i + HEADER_SIZE > len(buf):
                self._scan_from = max(1, min(len(buf), end) - HEADER_SIZE + 1) if i < 0 else i
                return None
            _m, version, ftype, other, seq, _length = _HEADER.unpack_from(buf, i)
            (hcrc,) = struct.unpack_from("<I", buf, i + _HEADER.size)
            if (ftype == MSG and seq == 0 and other != session and version == VERSION
                    and zlib.crc32(bytes(buf[i : i + _HEADER.size])) == hcrc):
                return i
            pos = i + 1

    def _nak_if_peer(self) -> None:
        if self.role == "host" or self.session:
            self._nak()

    def _deliver_error(self, error: ProtocolError) -> None:
        self._inbox.append((self.session, None, error))

    def _handle(self, frame: _Frame) -> None:
        if frame.session != self.session:
            if self.role == "agent" and frame.ftype not in (ACK, NAK) and frame.seq == 0:
                self._reset(frame.session)  # a new host connection
            else:
                return  # a stale frame from an earlier connection
        if frame.ftype == MSG:
            if frame.seq == self._expected:
                self._expected += 1
                self._write(encode_frame(ACK, self.session, self._expected))
                try:
                    self._inbox.append((self.session, Message.decode(frame.payload), None))
                except ProtocolError as exc:
                    self._inbox.append((self.session, None, exc))
            elif frame.seq < self._expected:
                self._write(encode_frame(ACK, self.session, self._expected))  # duplicate: re-ACK, drop
            else:
                self._nak()  # a gap: ask for what we expect
        elif frame.ftype in (ACK, NAK):
            acked = [s for s in self._unacked if s < frame.seq]
            for s in acked:
                del self._unacked[s]
            if acked:
                self._retries = 0
                self._last_progress = time.monotonic()
            if frame.ftype == NAK and frame.seq in self._unacked:
                self._retries += 1
                if self._retries > self.max_retries:
                    raise LinkFailed(f"frame {frame.seq} rejected {self.max_retries} times; the line is too noisy")
                self._resend_from(frame.seq)
        else:
            self._deliver_error(ProtocolError("bad_frame_type", f"unknown frame type {frame.ftype}"))

    def _reset(self, session: int) -> None:
        self.session = session
        self._expected = 0
        self._next_seq = 0
        self._unacked.clear()
        self._inbox.clear()  # requests of the earlier host are never answered to this one
        self._retries = 0


MAX_ERROR_MESSAGE = 400  # characters: whatever a failure quotes from the request, the reply stays short


def error_message(code: str, message: str, **extra: Any) -> Message:
    """The reply for every failure: a code a program can dispatch on and a sentence a person can act on.

    The message is cut to MAX_ERROR_MESSAGE characters, so no failure echoes a hostile value in full.
    """
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + "..."
    return Message({**extra, "op": "error", "code": code, "message": message})
