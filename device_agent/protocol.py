"""edgeship wire protocol, version 1: framing, reliable delivery and message encoding.

Both sides use this one module (the host imports it from device_agent). It runs over any
byte stream with ``read(max_bytes, timeout) -> bytes`` (b"" on timeout, an exception on
EOF), ``write(data)`` and ``close()``: an SSH exec channel, a serial port, a pipe.

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
import os
import struct
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Optional, Tuple

MAGIC = b"ES"
VERSION = 1
MSG, ACK, NAK = 1, 2, 3
FRAME_TYPES = (MSG, ACK, NAK)
_HEADER = struct.Struct("<2sBBIII")  # magic, version, type, session, seq, length
HEADER_SIZE = _HEADER.size + 4  # + header CRC
MAX_FRAME_PAYLOAD = 1 << 20  # what a receiver accepts by default
DEFAULT_CHUNK = 64 * 1024


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
        raw = json.dumps(self.header, separators=(",", ":")).encode("utf-8")
        return struct.pack("<I", len(raw)) + raw + self.body

    @classmethod
    def decode(cls, payload: bytes) -> "Message":
        if len(payload) < 4:
            raise ProtocolError("bad_message", "message shorter than its length prefix")
        (n,) = struct.unpack_from("<I", payload)
        if n > len(payload) - 4:
            raise ProtocolError("bad_message", "message JSON length exceeds the frame")
        try:
            header = json.loads(payload[4 : 4 + n].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError("bad_message", f"message header is not JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise ProtocolError("bad_message", "message header is not a JSON object")
        return cls(header, bytes(payload[4 + n :]))


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

    stream: Any
    role: str = "host"  # the host picks the session; the agent adopts it
    window: int = 8
    rto: float = 1.0  # seconds without an ACK before resending
    max_retries: int = 8
    max_payload: int = MAX_FRAME_PAYLOAD
    session: int = 0
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        if self.role == "host" and not self.session:
            self.session = int.from_bytes(os.urandom(4), "little") or 1
        self._buf = bytearray()
        self._next_seq = 0
        self._expected = 0
        self._unacked: "OrderedDict[int, bytes]" = OrderedDict()
        self._inbox: Deque[Tuple[Optional[Message], Optional[ProtocolError]]] = deque()
        self._last_progress = time.monotonic()
        self._retries = 0
        self._last_nak: Tuple[int, float] = (-1, 0.0)

    # -- public API -------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Queue a message; blocks (pumping the link) while the window is full."""
        payload = message.encode()
        if len(payload) > self.max_payload:
            raise ValueError(f"message of {len(payload)} bytes exceeds the frame limit {self.max_payload}")
        while len(self._unacked) >= self.window:
            self._pump(time.monotonic() + self.rto)
        frame = encode_frame(MSG, self.session, self._next_seq, payload)
        if not self._unacked:
            self._last_progress = time.monotonic()
        self._unacked[self._next_seq] = frame
        self._next_seq += 1
        self._write(frame)
        self.stats.frames_sent += 1

    def recv(self, timeout: Optional[float]) -> Message:
        """The next message; LinkTimeout after ``timeout`` s, ProtocolError for a bad frame, LinkFailed if broken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox:
            if deadline is not None and time.monotonic() >= deadline:
                raise LinkTimeout(f"no message within {timeout:.1f} s")
            self._pump(deadline)
        message, error = self._inbox.popleft()
        if error is not None:
            raise error
        assert message is not None  # one of the two is always set
        return message

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

    def _parse(self) -> None:
        buf = self._buf
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                del buf[: max(0, len(buf) - 1)]  # keep a possible first magic byte
                return
            if start:
                del buf[:start]
            if len(buf) < HEADER_SIZE:
                return
            _magic, version, ftype, session, seq, length = _HEADER.unpack_from(buf)
            (hcrc,) = struct.unpack_from("<I", buf, _HEADER.size)
            if zlib.crc32(bytes(buf[: _HEADER.size])) != hcrc:
                del buf[:1]  # not a frame start (or a corrupted header): resynchronise
                self.stats.bad_frames += 1
                self._nak_if_peer()
                continue
            if version != VERSION:
                del buf[:HEADER_SIZE]
                self._deliver_error(ProtocolError("bad_version", f"frame version {version}, this side speaks {VERSION}"))
                continue
            if length > self.max_payload:
                del buf[:HEADER_SIZE]  # its payload is skipped by the resynchronisation above
                if self.role == "agent" and session != self.session and seq == 0:
                    self._reset(session)  # so the error reaches the host that sent it
                self.stats.bad_frames += 1
                self._deliver_error(ProtocolError(
                    "frame_too_large", f"frame of {length} bytes exceeds the limit of {self.max_payload}"))
                continue
            total = HEADER_SIZE + length + 4
            if len(buf) < total:
                return
            payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
            (pcrc,) = struct.unpack_from("<I", buf, HEADER_SIZE + length)
            del buf[:total]
            if zlib.crc32(payload) != pcrc:
                self.stats.bad_frames += 1
                self._nak_if_peer()
                continue
            self._handle(_Frame(ftype, session, seq, payload))

    def _nak_if_peer(self) -> None:
        if self.role == "host" or self.session:
            self._nak()

    def _deliver_error(self, error: ProtocolError) -> None:
        self._inbox.append((None, error))

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
                    self._inbox.append((Message.decode(frame.payload), None))
                except ProtocolError as exc:
                    self._inbox.append((None, exc))
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
        self._retries = 0


def error_message(code: str, message: str, **extra: Any) -> Message:
    """The reply for every failure: a code a program can dispatch on and a sentence a person can act on."""
    return Message({"op": "error", "code": code, "message": message, **extra})
