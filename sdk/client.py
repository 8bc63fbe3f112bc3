"""A session with one board's agent: the typed API over the wire protocol.

Uploads are content-addressed and resumable: the agent says how much of a blob it
already has (the offset is the agent's), unchanged blobs are not sent again, and a
blob travels zlib-compressed when that makes it smaller. Chunks are pipelined so a
slow line stays full; a chunk the agent did not expect is answered with the offset it
wants, and the upload continues from there.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edgeship.device_agent.protocol import Link, LinkFailed, LinkTimeout, Message, ProtocolError, clip
from edgeship.sdk.errors import AgentError, BoardProtocolError, Cancelled, LinkError
from edgeship.sdk.replies import check_error, check_reply
from edgeship.sdk.transport.base import Stream

Progress = Callable[[int, int], None]

#: The replies each request may get besides `error` (every other request gets `ok`): a reply
#: of another op is not for this request (an earlier session's, or a confused agent's).


@dataclass(frozen=True)
class LinkProfile:
    """How to drive a link: chunk size, window, and a resend timeout that fits the line's speed.

    ``chunk`` is the largest upload chunk. An upload starts with chunks of at most 64 KiB
    and grows them to about 50 ms of the throughput the agent confirms, up to ``chunk``:
    on a fast link (SSH on a LAN, a local pipe) big frames cut the per-message cost, and
    on a slow one no frame takes long enough to trip the resend timeout.
    """

    chunk: int = (1 << 20) - 4096  # a put frame, JSON header included, fits the agent's default 1 MiB
    window: int = 8
    rto: float = 2.0
    max_retries: int = 8
    bytes_per_second: float | None = None  # the line rate, when it is a slow one (serial)

    @classmethod
    def for_rate(cls, bytes_per_second: float | None) -> LinkProfile:
        if not bytes_per_second:
            return cls()
        chunk = 4096 if bytes_per_second < 200_000 else 16384
        frame_time = (chunk + 160) / bytes_per_second
        # Frames are acknowledged one by one, so progress comes every frame time; a resend
        # timeout of a few frame times catches a loss quickly without firing on a busy line.
        rto = max(1.0, 3.0 * frame_time + 0.5)
        return cls(chunk=chunk, window=4, rto=rto, max_retries=6, bytes_per_second=bytes_per_second)


_MAX_LISTED = 1 << 20  # blobs a listing may hold: a store of that many is broken or hostile
_FIRST_CHUNK = 64 * 1024
_CHUNK_SECONDS = 0.05  # upload chunks grow to about this much line time at the confirmed rate

_RECV_SLICE = 0.25  # a wait for a reply checks for cancellation this often
_STALLED_ROUNDS = 3  # the agent asked to rewind this many times without confirming a byte more: give up
DEFAULT_RUN_TIMEOUT = 600.0  # the run limit assumed when neither the request nor the agent's hello gives one
MAX_RUN_TIMEOUT = 7200.0  # however long a board says its runs may take, the host waits no longer than this
_RUN_MARGIN = 5.0  # seconds on top of the run limit (+10 %): the agent stops the worker and sends its result
_RESULT_BYTES = 256 * 1024  # on a slow line, the margin also covers a result of this size

_cancel_scope: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("edgeship_cancel", default=None)


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    """Sessions made inside this block (in this thread) raise Cancelled soon after `event` is set.

    A fleet run gives every board's thread the same event, so Ctrl-C stops them all within
    a fraction of a second instead of waiting for every board to finish.
    """
    token = _cancel_scope.set(event)
    try:
        yield
    finally:
        _cancel_scope.reset(token)


_PROBE_FROM = 1 << 20  # blobs at least this big are probed before being compressed whole
_PROBE_SLICES = 16
_PROBE_SLICE = 64 * 1024


def _wire_form(data: bytes) -> tuple[str, bytes]:
    """("zlib", compressed) when zlib makes the blob at least 5 % smaller, else ("raw", data).

    Compressing a big incompressible blob whole only to discard the result costs about
    35 ms per MB (1.7 s for 50 MB). So a blob of 1 MiB or more is probed first: 16 slices
    of 64 KiB spread evenly over it are compressed, and when together they shrink by less
    than 2 % the blob goes raw without the whole-blob attempt. The choice is a pure
    function of the bytes, so a resumed upload picks the same encoding.
    """
    if len(data) >= _PROBE_FROM:
        view = memoryview(data)
        step = (len(data) - _PROBE_SLICE) // (_PROBE_SLICES - 1)
        packed_sample = sum(len(zlib.compress(view[i * step:i * step + _PROBE_SLICE], 6)) for i in range(_PROBE_SLICES))
        if packed_sample >= 0.98 * _PROBE_SLICES * _PROBE_SLICE:
            return "raw", data
    packed = zlib.compress(data, 6)
    return ("zlib", packed) if len(packed) < 0.95 * len(data) else ("raw", data)


@dataclass(frozen=True)
class UploadResult:
    sha256: str
    size: int
    encoding: str
    wire_size: int
    sent_bytes: int  # payload bytes actually sent this time (0 when the board had it)
    resumed_from: int
    skipped: bool
    seconds: float


class Session:
    """One connection to a board's agent. Every reply is checked (sdk/replies.py) before it is used."""

    def __init__(self, stream: Stream, profile: LinkProfile | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.profile = profile or LinkProfile()
        self.stream = stream
        self.link = Link(stream, role="host", window=self.profile.window, rto=self.profile.rto,
                         max_retries=self.profile.max_retries)
        self.info: dict[str, Any] = {}
        self.cancel = cancel if cancel is not None else _cancel_scope.get()
        self._broken = False  # a link error or a bad reply: nothing more is said on this session
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------
    def _fail(self, error: Exception) -> Exception:
        self._broken = True
        return error

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise self._fail(Cancelled("cancelled"))

    def _recv(self, timeout: float, request: str | None = None) -> Message:
        """The next reply, checked against what `request` allows; AgentError for an error frame."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_cancel()
            try:
                msg = self.link.recv(max(0.01, min(_RECV_SLICE, deadline - time.monotonic())))
                break
            except LinkTimeout as exc:
                if time.monotonic() >= deadline:
                    raise self._fail(LinkError(f"the agent did not answer within {timeout:.0f} s")) from exc
            except LinkFailed as exc:
                raise self._fail(LinkError(str(exc))) from exc
            except ProtocolError as exc:
                if exc.code == "bad_message":  # a frame that arrived whole but is no message: the board's fault
                    raise self._fail(BoardProtocolError(f"the board sent a reply that is not a valid message ({exc}); "
                                                        f"the board's agent is faulty or not edgeship's")) from exc
                raise self._fail(LinkError(f"garbled reply from the agent ({exc})")) from exc
            except RecursionError as exc:  # JSON nested too deep for the decoder
                raise self._fail(BoardProtocolError("the board sent a reply nested too deep to decode")) from exc
        if msg.op == "error":
            raise AgentError(*check_error(msg.header))
        if request is None:
            return msg
        try:
            return Message(check_reply(request, msg.header), msg.body)
        except BoardProtocolError as exc:
            raise self._fail(exc) from None

    def _send(self, message: Message) -> None:
        self._check_cancel()
        try:
            self.link.send(message)
        except LinkFailed as exc:
            raise self._fail(LinkError(str(exc))) from exc

    def request(self, header: dict[str, Any], body: bytes = b"", timeout: float = 30.0) -> Message:
        """Send one request and return its checked reply (the one funnel every request goes through)."""
        self._send(Message(header, body))
        return self._recv(timeout, str(header["op"]))

    # -- requests -----------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.info = dict(self.request({"op": "hello"}).header)
        self.info["rtt_ms"] = (time.perf_counter() - t0) * 1e3
        max_frame = int((self.info.get("limits") or {}).get("max_frame") or 0)
        if max_frame and self.profile.chunk > max_frame - 1024:  # room for the put header
            self.profile = dataclasses.replace(self.profile, chunk=max(512, max_frame - 1024))
        return self.info

    def upload(self, data: bytes, progress: Progress | None = None) -> UploadResult:
        """Make the board hold `data` (content-addressed), sending only what it lacks.

        The agent's offsets are checked: one past the end, or an upload the agent keeps
        rewinding without confirming more bytes, is a BoardProtocolError, never a loop.
        """
        t0 = time.perf_counter()
        sha = hashlib.sha256(data).hexdigest()
        encoding, wire = _wire_form(data)
        has = self.request({"op": "has", "sha256": sha, "encoding": encoding}).header
        if has["installed"]:
            if progress:
                progress(len(wire), len(wire))
            return UploadResult(sha, len(data), encoding, len(wire), 0, 0, True, time.perf_counter() - t0)
        begin = self.request({"op": "put_begin", "sha256": sha, "size": len(data), "encoding": encoding,
                              "wire_size": len(wire)}).header
        if begin["installed"]:
            return UploadResult(sha, len(data), encoding, len(wire), 0, 0, True, time.perf_counter() - t0)
        offset = self._offset(begin, "put_begin", len(wire))
        resumed = offset
        sent = 0
        smallest = min(self.profile.chunk, _FIRST_CHUNK)
        chunk = smallest
        started = time.perf_counter()
        confirmed = offset  # the furthest the agent has confirmed
        stalled = 0  # rewinds since the agent last confirmed more
        budget = 2 * math.ceil((len(wire) - offset) / smallest) + 4 * self.profile.window + 16  # replies, at most
        in_flight: list[int] = []  # end offsets of chunks whose reply is pending
        while offset < len(wire) or in_flight:
            while offset < len(wire) and len(in_flight) < self.profile.window:
                end = min(offset + chunk, len(wire))
                self._send(Message({"op": "put", "sha256": sha, "encoding": encoding, "offset": offset},
                                   wire[offset:end]))
                sent += end - offset
                in_flight.append(end)
                offset = end
            agent_offset = self._put_reply(len(wire), pending=len(in_flight) - 1)
            budget -= 1
            expected_end = in_flight.pop(0)
            if progress:
                progress(agent_offset, len(wire))
            rate = (agent_offset - resumed) / max(1e-6, time.perf_counter() - started)
            chunk = max(smallest, min(self.profile.chunk, int(rate * _CHUNK_SECONDS)))
            if agent_offset != expected_end:  # the agent wants to continue elsewhere: drain, then resume there
                for i in range(len(in_flight)):
                    agent_offset = self._put_reply(len(wire), pending=len(in_flight) - 1 - i)
                    budget -= 1
                in_flight.clear()
                offset = agent_offset
                stalled = 0 if agent_offset > confirmed else stalled + 1
            confirmed = max(confirmed, agent_offset)
            if stalled >= _STALLED_ROUNDS or budget < 0:
                raise self._fail(BoardProtocolError(
                    f"the board keeps asking for the upload of {sha[:12]} again without storing more of it "
                    f"(at byte {confirmed:,} of {len(wire):,} after {sent:,} bytes sent); the board's agent is "
                    f"faulty or its store is failing; run `edgeship push` again, and if it recurs check the board"))
        self.request({"op": "put_end", "sha256": sha, "encoding": encoding}, timeout=120.0)
        return UploadResult(sha, len(data), encoding, len(wire), sent, resumed, False, time.perf_counter() - t0)

    def _put_reply(self, size: int, pending: int) -> int:
        """The agent's offset from the next `put` reply; on an error reply, the `pending` replies behind it
        are read first, so the session's next request gets its own reply, not a stale `put` one."""
        try:
            return self._offset(self._recv(60.0, "put").header, "put", size)
        except AgentError:
            for _ in range(pending):
                try:
                    self._recv(10.0, "put")
                except AgentError:
                    continue
            raise

    def _offset(self, header: dict[str, Any], request: str, size: int) -> int:
        offset = int(header["offset"])
        if offset > size:
            raise self._fail(BoardProtocolError(
                f"the board sent a malformed reply to `{request}`: offset {offset:,} is past the end of the "
                f"{size:,}-byte upload; the board's agent is faulty or not edgeship's"))
        return offset

    def run_limit(self, options: dict[str, Any]) -> float:
        """How long the host waits for a run in all: the run's time limit, plus a margin for the result.

        The limit is the request's `timeout` option, else the `run_timeout` the agent's hello
        reports, else 600 s; never more than 2 h, whatever the board says. Progress messages
        do not extend it.
        """
        limit: Any = options.get("timeout")
        if not _positive(limit):
            limit = (self.info.get("limits") or {}).get("run_timeout")
        if not _positive(limit):
            limit = DEFAULT_RUN_TIMEOUT
        limit = min(float(limit), MAX_RUN_TIMEOUT)
        line = _RESULT_BYTES / self.profile.bytes_per_second if self.profile.bytes_per_second else 0.0
        return limit * 1.1 + _RUN_MARGIN + line

    def run(self, kind: str, model: str, dataset: str | None, options: dict[str, Any],
            progress: Callable[[dict[str, Any]], None] | None = None, timeout: float = 600.0) -> dict[str, Any]:
        """Ask the agent to bench or eval a stored model; wait for its result, at most `run_limit` in all.

        `timeout` bounds the silence between two messages; progress messages keep the wait
        alive only until the overall limit.
        """
        limit = self.run_limit(options)
        deadline = time.monotonic() + limit
        self._send(Message({"op": "run", "kind": kind, "model": model, "dataset": dataset, "options": options}))
        messages = 0
        while True:
            wait = min(timeout, deadline - time.monotonic())
            try:
                if wait <= 0:
                    raise LinkError("no time left")
                msg = self._recv(wait, "run")
            except LinkError as exc:
                if wait < timeout and time.monotonic() >= deadline - 0.05:  # the overall limit ran out, not the silence
                    raise self._fail(BoardProtocolError(
                        f"the board did not finish the run within {limit:.0f} s (its time limit plus a margin; "
                        f"{messages} progress messages, no result); the board's agent does not stop runs as it "
                        f"should; check the board")) from exc
                raise
            if msg.op == "progress":
                messages += 1
                if progress:
                    progress(msg.header)
                continue
            return dict(msg.header)

    def list_blobs(self) -> list[dict[str, Any]]:
        """Every installed blob, page by page (the agent sends `next` while more remain)."""
        blobs: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            reply = self.request({"op": "list"} if after is None else {"op": "list", "after": after}).header
            blobs.extend(reply["blobs"])
            following = reply.get("next")
            if not following:
                return blobs
            if len(blobs) > _MAX_LISTED:
                raise BoardProtocolError(f"the board lists more than {_MAX_LISTED:,} blobs and keeps sending pages; "
                                         f"its store cannot be listed")
            if not isinstance(following, str) or (after is not None and following <= after):
                raise LinkError(f"the agent's list pages do not advance (next {clip(following, 70)}); "
                                f"its store cannot be listed")
            after = following

    def delete(self, sha256: str) -> bool:
        return bool(self.request({"op": "delete", "sha256": sha256}).header["deleted"])

    def abort(self) -> None:
        """Close the stream without a goodbye (after an interruption or a broken link)."""
        self._broken = True
        self.close()

    def close(self) -> None:
        """Say goodbye when the session is sound, then close the stream; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._broken:
                self.request({"op": "bye"}, timeout=5.0)
        except (LinkError, AgentError, OSError):
            pass  # closing a broken session: nothing more to say to the agent
        finally:
            self._broken = True
            self.stream.close()


def cannot_run(info: dict[str, Any], board: str) -> str | None:
    """Why a board whose agent said `info` in hello cannot run models (no numpy, no TFLite runtime), or None.

    One sentence that names the missing piece and `edgeship boards setup BOARD`, which installs it.
    """
    import shlex

    setup = f"`edgeship boards setup {shlex.quote(board)}` installs"
    numpy = info.get("numpy")
    if isinstance(numpy, dict) and not numpy.get("version"):  # an agent older than this check does not say
        return (f"board {board!r} cannot run models: numpy is not installed for its Python {info.get('python') or ''} "
                f"({str(numpy.get('error') or 'not importable')[:200]}); {setup} numpy and a TFLite runtime")
    runtime = info.get("runtime")
    if not isinstance(runtime, dict) or not runtime.get("name"):
        error = runtime.get("error") if isinstance(runtime, dict) else None
        return (f"board {board!r} cannot run models: its agent found no TFLite runtime"
                + (f" ({str(error)[:300]})" if error else "") + f"; {setup} one")
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
