"""A hostile board for the host's red-team tests: speaks the real protocol (device_agent.protocol.Link)
on stdin/stdout, and misbehaves in one way chosen by its mode.

    python tests/hostile_agent.py MODE [agent args ignored]     (or HOSTILE_MODE=MODE)

It answers `hello` like a real agent (LiteRT 2.3), says every blob is installed unless the
mode is about uploads, and then breaks the protocol as MODES describes. Run by
tests/test_redteam_host.py through sdk.client.Session over a pipe, and through the real
CLI as the `python=` of an ssh:// board behind the real sshd of sdk/emulate/sshd.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeship.device_agent.protocol import MSG, Link, LinkFailed, LinkTimeout, Message, ProtocolError, encode_frame
from edgeship.device_agent.streams import FdStream, StreamClosed


class LooseMessage(Message):
    """A message encoded as a careless peer would: NaN and Infinity written as bare JSON words."""

    def encode(self) -> bytes:
        raw = json.dumps(self.header, separators=(",", ":")).encode("utf-8")
        return struct.pack("<I", len(raw)) + raw + self.body


NASTY = "\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x9b1m\r\n\x00\u202eevil"  # clear screen, retitle, colour, CSI, RLO

MODES = {
    "put-offset-0": "answers every put with offset 0",
    "put-past-end": "answers put with an offset past the end of the blob",
    "endless-progress": "answers run with progress messages forever (its hello says runs stop after 0.5 s)",
    "hello-version-int": "hello: agent_version is a number",
    "hello-runtime-list": "hello: runtime is a list",
    "max-frame-str": "hello: limits.max_frame is a string",
    "offset-str": "put_begin: offset is a string",
    "offset-missing": "put_begin: no offset",
    "result-no-status": "result without a status",
    "result-latency-str": "result: latency_ms is a string",
    "negative-latency": "an ok bench result with negative latencies",
    "nan-accuracy": "an ok eval result with NaN accuracy",
    "huge-list": "an ok bench result with 60,000 latency samples",
    "huge-string": "a result whose message is 900,000 characters",
    "huge-frame": "a reply to hello of 3 MiB, over the host's frame limit",
    "deep-json": "a reply to hello nested 100,000 levels deep",
    "control-bytes": "terminal escapes in its identity, its run message and its error text",
    "error-control-bytes": "an error reply to has, with terminal escapes in it",
    "disconnect-mid-put": "exits after the first put",
    "wrong-op": "answers has with a progress message",
}

HELLO = {"op": "hello", "agent_version": "0.9.0", "protocol": 1, "python": "3.11.2",
         "runtime": {"name": "ai_edge_litert", "version": "2.3.0", "tflite_level": "2.21", "custom_ops": []},
         "delegates": ["xnnpack"], "cpu": {"arch": "x86_64", "cores": 2, "model": "hostile"},
         "memory": {"total_bytes": 1 << 30, "available_bytes": 1 << 29}, "arena_size": None,
         "store": {"quota": 1 << 30, "used": 0}, "limits": {"max_frame": 1 << 20, "max_blob": 1 << 30},
         "pid": os.getpid(), "time_ns": 0}

_LAT = {"count": 50, "mean": 1.0, "std": 0.1, "min": 0.9, "p50": 1.0, "p90": 1.1, "p95": 1.2, "p99": 1.3, "max": 1.4}
_OK_BENCH = {"op": "result", "schema_version": 1, "status": "ok", "kind": "bench",
             "runtime": {"name": "ai_edge_litert", "version": "2.3.0"}, "threads": None,
             "delegate": {"applied": ["xnnpack"], "delegate_kernels": 1, "nodes": 5, "cpu_ops": [], "notes": []},
             "load_ms": 1.0, "first_inference_ms": 1.0, "warmup": {"count": 5, "total_ms": 5.0},
             "latency_ms": _LAT, "inputs": "random", "generated_inputs": [], "latency_samples_ms": [1.0] * 50,
             "peak_rss_kib": 1000, "sensors": {"before": {}, "after": {}}}


def hello(mode: str) -> dict[str, Any]:
    h = {**HELLO, "limits": dict(HELLO["limits"])}
    if mode == "hello-version-int":
        h["agent_version"] = 5
    elif mode == "hello-runtime-list":
        h["runtime"] = ["ai_edge_litert", "2.3.0"]
    elif mode == "max-frame-str":
        h["limits"]["max_frame"] = "big"
    elif mode == "endless-progress":
        h["limits"]["run_timeout"] = 0.5
    elif mode == "control-bytes":
        h["agent_version"] = "0.9" + NASTY
        h["runtime"] = {**h["runtime"], "version": "2.3.0" + NASTY}
        h["cpu"] = {"arch": "x86" + NASTY, "cores": 2, "model": NASTY}
        h["delegates"] = ["xnnpack" + NASTY]
    return h


def result(mode: str, kind: str) -> dict[str, Any]:
    if mode == "result-no-status":
        return {"op": "result", "kind": kind}
    if mode == "result-latency-str":
        return {**_OK_BENCH, "latency_ms": "fast"}
    if mode == "negative-latency":
        return {**_OK_BENCH, "latency_ms": {**_LAT, "p50": -3.0, "min": -5.0}}
    if mode == "nan-accuracy":
        return {**_OK_BENCH, "kind": "eval", "samples": 10, "accuracy": math.nan}
    if mode == "huge-list":
        return {**_OK_BENCH, "latency_samples_ms": [1.5] * 60_000}
    if mode == "huge-string":
        return {"op": "result", "status": "crashed", "message": "A" * 900_000}
    if mode == "control-bytes":
        return {"op": "result", "status": "crashed", "message": "the runtime crashed" + NASTY}
    return {**_OK_BENCH, "kind": kind}


def raw_frame(link: Link, payload: bytes) -> None:
    """A MSG frame written past the Link's own size check (what a hostile board can do)."""
    link.stream.write(encode_frame(MSG, link.session, link._next_seq, payload))
    link._next_seq += 1


def serve(mode: str, link: Link) -> None:
    while True:
        try:
            msg = link.recv(timeout=None)
        except (ProtocolError, LinkTimeout):
            continue
        op, h = msg.op, msg.header
        if op == "bye":
            link.send(Message({"op": "ok"}))
            link.flush(5.0)
            return
        if op == "hello":
            if mode == "huge-frame":
                raw_frame(link, Message({"op": "hello", "pad": "x" * (3 << 20)}).encode())
            elif mode == "deep-json":
                raw = b"[" * 100_000 + b"]" * 100_000
                raw_frame(link, struct.pack("<I", len(raw)) + raw)
            else:
                link.send(Message(hello(mode)))
        elif op == "has":
            if mode == "wrong-op":
                link.send(Message({"op": "progress", "done": 1}))
            elif mode == "error-control-bytes":
                link.send(Message({"op": "error", "code": "io_error", "message": "disk on fire" + NASTY}))
            else:
                uploads = mode.startswith(("put-", "offset-", "disconnect"))
                link.send(Message({"op": "ok", "installed": not uploads, "offset": 0}))
        elif op == "put_begin":
            reply: dict[str, Any] = {"op": "ok", "installed": False, "offset": 0}
            if mode == "offset-str":
                reply["offset"] = "0"
            elif mode == "offset-missing":
                del reply["offset"]
            link.send(Message(reply))
        elif op == "put":
            if mode == "disconnect-mid-put":
                os._exit(0)
            offset = 10**12 if mode == "put-past-end" else 0
            link.send(Message({"op": "ok", "offset": offset}))
        elif op == "put_end":
            link.send(Message({"op": "ok", "size": 0}))
        elif op == "run":
            if mode == "endless-progress":
                done = 0
                while True:
                    done += 1
                    link.send(Message({"op": "progress", "done": done, "runs": 50, "elapsed_s": 0.1}))
                    time.sleep(0.05)
            link.send(LooseMessage(result(mode, str(h.get("kind")))))
        else:
            link.send(Message({"op": "error", "code": "unknown_op", "message": f"unknown request {op!r}"}))


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("-") and not a.endswith(".pyz")]
    mode = os.environ.get("HOSTILE_MODE") or (args[0] if args else "")
    if mode not in MODES:
        print(f"hostile_agent: unknown mode {mode!r}; modes: {', '.join(MODES)}", file=sys.stderr)
        return 2
    stdin, stdout = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    link = Link(FdStream(stdin, stdout), role="agent")
    with contextlib.suppress(LinkFailed, StreamClosed, OSError):  # the host went away
        serve(mode, link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
