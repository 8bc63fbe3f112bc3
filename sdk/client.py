"""A session with one board's agent: the typed API over the wire protocol.

Uploads are content-addressed and resumable: the agent says how much of a blob it
already has (the offset is the agent's), unchanged blobs are not sent again, and a
blob travels zlib-compressed when that makes it smaller. Chunks are pipelined so a
slow line stays full; a chunk the agent did not expect is answered with the offset it
wants, and the upload continues from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device_agent.protocol import Link, LinkFailed, LinkTimeout, Message, ProtocolError, clip
from sdk.errors import AgentError, LinkError

Progress = Callable[[int, int], None]

#: The replies each request may get besides `error` (every other request gets `ok`): a reply
#: of another op is not for this request (an earlier session's, or a confused agent's).
REPLY_OPS: dict[str, tuple[str, ...]] = {"hello": ("hello",), "run": ("progress", "result")}


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

    @classmethod
    def for_rate(cls, bytes_per_second: float | None) -> LinkProfile:
        if not bytes_per_second:
            return cls()
        chunk = 4096 if bytes_per_second < 200_000 else 16384
        frame_time = (chunk + 160) / bytes_per_second
        # Frames are acknowledged one by one, so progress comes every frame time; a resend
        # timeout of a few frame times catches a loss quickly without firing on a busy line.
        rto = max(1.0, 3.0 * frame_time + 0.5)
        return cls(chunk=chunk, window=4, rto=rto, max_retries=6)


_FIRST_CHUNK = 64 * 1024
_CHUNK_SECONDS = 0.05  # upload chunks grow to about this much line time at the confirmed rate

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
    def __init__(self, stream: Any, profile: LinkProfile | None = None) -> None:
        self.profile = profile or LinkProfile()
        self.stream = stream
        self.link = Link(stream, role="host", window=self.profile.window, rto=self.profile.rto,
                         max_retries=self.profile.max_retries)
        self.info: dict[str, Any] = {}

    # -- plumbing ---------------------------------------------------------------------------
    def _recv(self, timeout: float, request: str) -> Message:
        """The reply to a `request` op; an error reply raises AgentError, a reply of the wrong op LinkError."""
        try:
            msg = self.link.recv(timeout)
        except LinkTimeout as exc:
            raise LinkError(f"the agent did not answer within {timeout:.0f} s") from exc
        except LinkFailed as exc:
            raise LinkError(str(exc)) from exc
        except ProtocolError as exc:
            raise LinkError(f"garbled reply from the agent ({exc})") from exc
        if msg.op == "error":
            raise AgentError(str(msg.header.get("code", "error")), str(msg.header.get("message", "agent error")))
        expected = REPLY_OPS.get(request, ("ok",))
        if msg.op not in expected:
            raise LinkError(f"the agent answered a {request} request with {clip(msg.op, 40)} instead of "
                            f"{' or '.join(expected)}: it may still be answering an earlier connection; try again")
        return msg

    def _send(self, message: Message) -> None:
        try:
            self.link.send(message)
        except LinkFailed as exc:
            raise LinkError(str(exc)) from exc

    def request(self, header: dict[str, Any], body: bytes = b"", timeout: float = 30.0) -> Message:
        self._send(Message(header, body))
        return self._recv(timeout, str(header.get("op", "")))

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
        """Make the board hold `data` (content-addressed), sending only what it lacks."""
        t0 = time.perf_counter()
        sha = hashlib.sha256(data).hexdigest()
        encoding, wire = _wire_form(data)
        has = self.request({"op": "has", "sha256": sha, "encoding": encoding}).header
        if has.get("installed"):
            if progress:
                progress(len(wire), len(wire))
            return UploadResult(sha, len(data), encoding, len(wire), 0, 0, True, time.perf_counter() - t0)
        begin = self.request({"op": "put_begin", "sha256": sha, "size": len(data), "encoding": encoding,
                              "wire_size": len(wire)}).header
        if begin.get("installed"):
            return UploadResult(sha, len(data), encoding, len(wire), 0, 0, True, time.perf_counter() - t0)
        offset = int(begin["offset"])
        resumed = offset
        sent = 0
        smallest = min(self.profile.chunk, _FIRST_CHUNK)
        chunk = smallest
        started = time.perf_counter()
        in_flight: list[int] = []  # end offsets of chunks whose reply is pending
        while offset < len(wire) or in_flight:
            while offset < len(wire) and len(in_flight) < self.profile.window:
                end = min(offset + chunk, len(wire))
                self._send(Message({"op": "put", "sha256": sha, "encoding": encoding, "offset": offset},
                                   wire[offset:end]))
                sent += end - offset
                in_flight.append(end)
                offset = end
            reply = self._recv(60.0, "put")
            expected_end = in_flight.pop(0)
            agent_offset = int(reply.header["offset"])
            if progress:
                progress(min(agent_offset, len(wire)), len(wire))
            rate = (agent_offset - resumed) / max(1e-6, time.perf_counter() - started)
            chunk = max(smallest, min(self.profile.chunk, int(rate * _CHUNK_SECONDS)))
            if agent_offset != expected_end:  # the agent wants to continue elsewhere: drain, then resume there
                for _ in in_flight:
                    agent_offset = int(self._recv(60.0, "put").header["offset"])
                in_flight.clear()
                offset = agent_offset
        self.request({"op": "put_end", "sha256": sha, "encoding": encoding}, timeout=120.0)
        return UploadResult(sha, len(data), encoding, len(wire), sent, resumed, False, time.perf_counter() - t0)

    def run(self, kind: str, model: str, dataset: str | None, options: dict[str, Any],
            progress: Callable[[dict[str, Any]], None] | None = None, timeout: float = 600.0) -> dict[str, Any]:
        """Ask the agent to bench or eval a stored model; progress messages keep the wait alive."""
        self._send(Message({"op": "run", "kind": kind, "model": model, "dataset": dataset, "options": options}))
        while True:
            msg = self._recv(timeout, "run")
            if msg.op == "progress":
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
            if not isinstance(following, str) or (after is not None and following <= after):
                raise LinkError(f"the agent's list pages do not advance (next {clip(following, 70)}); "
                                f"its store cannot be listed")
            after = following

    def delete(self, sha256: str) -> bool:
        return bool(self.request({"op": "delete", "sha256": sha256}).header["deleted"])

    def close(self) -> None:
        try:
            self.request({"op": "bye"}, timeout=5.0)
        except (LinkError, AgentError, OSError):
            pass  # closing a broken session: nothing more to say to the agent
        finally:
            self.stream.close()
