"""The agent's request loop: hello, has/put blobs, run (bench/eval), list, delete, bye.

Every failure becomes an error frame with a code and a message; nothing a host sends
(bad frames, bad names, corrupt models, wrong datasets) stops the agent. It never runs
code from the host: a run is a model through the TFLite runtime in a worker process.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from device_agent import __version__
from device_agent.delegates import AllowList, DelegateRefused
from device_agent.evaluate import MAX_OUTPUT_NAME, STATES
from device_agent.protocol import VERSION, Link, LinkFailed, LinkTimeout, Message, ProtocolError, error_message
from device_agent.store import Store, StoreError, check_name, os_error
from device_agent.streams import StreamClosed
from device_agent.worker import run_in_worker

RUN_KINDS = ("bench", "eval")


@dataclass
class AgentConfig:
    store_dir: Path
    quota: int = 512 << 20
    max_frame: int = 1 << 20
    run_timeout: float = 300.0
    memory_limit: int = 2 << 30  # per worker; 0 disables
    runtime: Optional[str] = None
    arena_size: Optional[int] = None  # tflite_micro: the board's tensor arena
    delegates: Dict[str, str] = field(default_factory=dict)  # the board's allow-list: NAME -> library


def _meminfo() -> Dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return {"total_bytes": out.get("MemTotal", 0), "available_bytes": out.get("MemAvailable", 0)}


def _cpu() -> Dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "cores": os.cpu_count(), "model": model}


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = Store(config.store_dir, config.quota)
        self.delegates = AllowList(config.delegates, config.store_dir)
        self._runtime_info: Optional[Dict[str, Any]] = None

    # -- serving ---------------------------------------------------------------------------
    def serve(self, stream: Any, *, forever: bool = False) -> None:
        """Answer requests on a stream; with forever=True (serial) survive hosts coming and going."""
        while True:
            link = Link(stream, role="agent", max_payload=self.config.max_frame)
            try:
                self._session(link)
                if not forever:
                    return
            except (LinkFailed, StreamClosed):
                if not forever:
                    return
                time.sleep(0.1)  # the host went away; wait for the next one on the same line

    def _session(self, link: Link) -> None:
        while True:
            try:
                msg = link.recv(timeout=None)
            except ProtocolError as exc:
                link.send(error_message(exc.code, str(exc)))
                continue
            except LinkTimeout:
                continue
            if msg.op == "bye":
                link.send(Message({"op": "ok"}))
                link.flush(10.0)
                return
            link.send(self.handle(msg, lambda m: link.send(m)))

    def handle(self, msg: Message, send: Callable[[Message], None]) -> Message:
        """One request -> one reply (a run may send progress messages first)."""
        handler = getattr(self, f"_op_{msg.op}", None)
        if handler is None:
            return error_message("unknown_op", f"unknown request {msg.op!r}")
        try:
            reply = handler(msg, send)
        except StoreError as exc:
            return error_message(exc.code, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return error_message("bad_request", f"malformed {msg.op} request: {type(exc).__name__}: {exc}")
        except OSError as exc:  # errno and request only: the board's paths stay on the board
            err = os_error(exc, f"the {str(msg.op)[:40]} request's files")
            return error_message(err.code, str(err))
        return reply if isinstance(reply, Message) else Message(reply)

    # -- requests ---------------------------------------------------------------------------
    def _runtime(self) -> Dict[str, Any]:
        if self._runtime_info is None:
            from device_agent.runtime import RuntimeNotFound, load_runtime

            try:
                rt = load_runtime(self.config.runtime)
                self._runtime_info = {"name": rt.name, "version": rt.version, "tflite_level": rt.tflite_level,
                                      "custom_ops": list(rt.custom_ops)}
            except RuntimeNotFound as exc:
                self._runtime_info = {"name": None, "error": str(exc)}
        return self._runtime_info

    def _op_hello(self, msg: Message, send: Any) -> Dict[str, Any]:
        external = self.delegates.hello(self.config.runtime, self.config.memory_limit)
        return {"op": "hello", "agent_version": __version__, "protocol": VERSION, "python": platform.python_version(),
                "runtime": self._runtime(),
                "delegates": [] if self.config.runtime == "tflite_micro" else
                ["xnnpack"] + [d["name"] for d in external if d["loaded"]],
                "external_delegates": external,
                "cpu": _cpu(), "memory": _meminfo(), "arena_size": self.config.arena_size,
                "store": {"quota": self.store.quota, "used": self.store.usage()},
                "limits": {"max_frame": self.config.max_frame, "max_blob": self.store.quota,
                           "run_timeout": self.config.run_timeout},
                "pid": os.getpid(), "time_ns": time.time_ns()}

    def _op_has(self, msg: Message, send: Any) -> Dict[str, Any]:
        """Installed means present *and* hash-verified (a tampered blob is removed and reported absent)."""
        installed, offset = self.store.has(msg.header["sha256"], msg.header.get("encoding", "raw"))
        return {"op": "ok", "installed": installed, "offset": offset}

    def _op_put_begin(self, msg: Message, send: Any) -> Dict[str, Any]:
        h = msg.header
        if self.store.verified(check_name(h["sha256"])):
            return {"op": "ok", "installed": True, "offset": 0}
        installed, offset = self.store.begin(h["sha256"], h["size"], h.get("encoding", "raw"), h["wire_size"])
        return {"op": "ok", "installed": installed, "offset": offset}

    def _op_put(self, msg: Message, send: Any) -> Dict[str, Any]:
        h = msg.header
        return {"op": "ok", "offset": self.store.write(h["sha256"], h.get("encoding", "raw"), h["offset"], msg.body)}

    def _op_put_end(self, msg: Message, send: Any) -> Dict[str, Any]:
        h = msg.header
        return {"op": "ok", "size": self.store.finish(h["sha256"], h.get("encoding", "raw"))}

    def _op_list(self, msg: Message, send: Any) -> Dict[str, Any]:
        return {"op": "ok", "blobs": [{"sha256": b.sha256, "size": b.size, "last_used": b.last_used}
                                      for b in self.store.list()]}

    def _op_delete(self, msg: Message, send: Any) -> Dict[str, Any]:
        return {"op": "ok", "deleted": self.store.delete(msg.header["sha256"])}

    def _op_run(self, msg: Message, send: Callable[[Message], None]) -> Dict[str, Any]:
        h = msg.header
        kind = h.get("kind")
        if kind not in RUN_KINDS:
            return {"op": "error", "code": "bad_request", "message": f"run kind must be one of {RUN_KINDS}, not {kind!r}"}
        model = check_name(h["model"])
        self.store.get(model)  # hash check; raises not_found / corrupt_blob
        dataset = check_name(h["dataset"]) if h.get("dataset") else None
        if dataset:
            self.store.get(dataset)
        opts = h.get("options") or {}
        try:
            delegates = self.delegates.resolve(opts.get("delegates"))
        except DelegateRefused as exc:
            return {"op": "error", "code": "bad_request", "message": str(exc)}
        request = {
            "kind": kind,
            "model_path": str(self.store.blobs / model),
            "model_sha256": model,
            "dataset_path": str(self.store.blobs / dataset) if dataset else None,
            "dataset_sha256": dataset,
            "runtime": opts.get("runtime") or self.config.runtime,
            "threads": opts.get("threads"),
            "xnnpack": opts.get("xnnpack", True),
            "delegates": delegates,
            "warmup": int(opts.get("warmup", 5)),
            "runs": int(opts.get("runs", 50)),
            "min_seconds": float(opts.get("min_seconds", 1.0)),
            "output": _output_name(opts.get("output")),
            "state": _state(opts.get("state")),
            "arena_size": opts.get("arena_size") or self.config.arena_size,
        }
        timeout = float(opts.get("timeout", self.config.run_timeout))
        result = run_in_worker(request, timeout, self.config.memory_limit,
                               progress=lambda p: send(Message({"op": "progress", **p})))
        return {"op": "result", "schema_version": 1, "agent_version": __version__, **result}


def _output_name(value: Any) -> Optional[str]:
    """The `output` run option: a bounded string (the worker checks it is one of the model's outputs)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_OUTPUT_NAME or not value.isprintable():
        raise ValueError(f"option output must be a printable output name of 1..{MAX_OUTPUT_NAME} characters")
    return value


def _state(value: Any) -> str:
    """The `state` run option: how eval treats variable tensors between samples (reset unless asked)."""
    if value is None:
        return "reset"
    if value not in STATES:
        raise ValueError(f"option state must be one of {', '.join(STATES)}")
    return str(value)


def main_stdio(config: AgentConfig) -> None:
    from device_agent.streams import FdStream

    stdin, stdout = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the frame stream
    Agent(config).serve(FdStream(stdin, stdout))
