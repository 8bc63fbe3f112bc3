"""The agent's request loop: hello, has/put blobs, run (bench/eval), list, delete, bye.

Every failure becomes an error frame with a code and a message; nothing a host sends
(bad frames, bad names, corrupt models, wrong datasets, hostile options) stops the agent:
an exception no handler expected is still an error frame (`internal_error`), and a reply
too big for the frame limit is replaced by one. It never runs code from the host: a run is
a model through the TFLite runtime in a worker process.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edgeship.device_agent import __version__
from edgeship.device_agent.delegates import AllowList, DelegateRefused
from edgeship.device_agent.options import RESULT_SCHEMA_VERSION, OptionError, RunOptions, integer_option
from edgeship.device_agent.protocol import (
    MAX_FRAME_PAYLOAD,
    VERSION,
    Link,
    LinkFailed,
    LinkTimeout,
    Message,
    ProtocolError,
    clip,
    error_message,
)
from edgeship.device_agent.store import Store, StoreError, check_name, os_error
from edgeship.device_agent.streams import Stream, StreamClosed

RUN_KINDS = ("bench", "eval")
#: On a line that serves host after host, a frame left incomplete this long (a host cut
#: mid-frame) is dropped so it cannot swallow the next host's frames.
SERIAL_PARTIAL_TIMEOUT = 2.0
LIST_PAGE = 500  # blobs per `list` reply, at most (fewer when the frame limit is small)
_LIST_ENTRY_BYTES = 140  # a generous upper bound of one encoded list entry


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
    write_timeout: Optional[float] = 60.0  # a peer that accepts no reply byte this long ends the session


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
        self._numpy_info: Optional[Dict[str, Any]] = None
        # Whether the request being handled is still wanted (False once another host took the
        # line over); a run polls it and stops its worker. Set per request by _session.
        self._still_wanted: Callable[[], bool] = _always

    # -- serving ---------------------------------------------------------------------------
    def serve(self, stream: Stream, *, forever: bool = False) -> None:
        """Answer requests on a stream; with forever=True (serial) survive hosts coming and going.

        One link serves every host on the stream, so bytes of the next host that arrived with
        the last one's (its hello right behind a bye) are not thrown away with a new link.
        """
        link = Link(stream, role="agent", max_payload=self.config.max_frame,
                    partial_timeout=SERIAL_PARTIAL_TIMEOUT if forever else None)
        while True:
            try:
                self._session(link)
                if not forever:
                    return
            except (LinkFailed, StreamClosed):
                if not forever:
                    return
                link.abandon()  # the host went away; wait for the next one on the same line
                time.sleep(0.1)

    @property
    def reply_limit(self) -> int:
        """The largest reply payload: what this agent and a default host both accept."""
        return min(self.config.max_frame, MAX_FRAME_PAYLOAD)

    def _reply(self, link: Link, session: int, reply: Message) -> None:
        """Send a reply to the host of ``session`` (dropped if another host took over), bounded in size."""
        try:
            size = len(reply.encode())
        except (TypeError, ValueError, RecursionError) as exc:  # a value JSON cannot carry: still one reply
            sys.stderr.write(f"edgeship-agent: internal error encoding a {clip(reply.op, 20)} reply: {type(exc).__name__}\n")
            reply, size = error_message("internal_error", f"the agent could not encode its {clip(reply.op, 20)} "
                                                          f"reply ({type(exc).__name__}); it goes on serving"), 0
        if size > self.reply_limit:
            reply = error_message("reply_too_large", f"the reply to this {clip(reply.op, 20)} request would be {size} "
                                                     f"bytes, over the frame limit of {self.reply_limit}")
        link.send(reply, session=session)

    def _session(self, link: Link) -> None:
        while True:
            try:
                msg = link.recv(timeout=None)
            except ProtocolError as exc:
                self._reply(link, link.session, error_message(exc.code, str(exc)))
                continue
            except LinkTimeout:
                continue
            if msg.op == "bye":
                link.send(Message({"op": "ok"}), session=link.session)
                link.flush(10.0)
                return
            self._request(link, msg, link.session)

    def _request(self, link: Link, msg: Message, session: int) -> None:
        """Answer one request of the host of ``session``; a run stops if another host takes the line."""

        def still_wanted() -> bool:
            link.poll()  # ACKs for progress, resends, and a new host's first frame
            return link.session == session

        self._still_wanted = still_wanted
        try:
            reply = self.handle(msg, lambda m: link.send(m, session=session))
        finally:
            self._still_wanted = _always
        self._reply(link, session, reply)

    def handle(self, msg: Message, send: Callable[[Message], Any]) -> Message:
        """One request -> one reply (a run may send progress messages first); never raises for the request's sake."""
        handler = getattr(self, f"_op_{msg.op}", None)
        if handler is None:
            return error_message("unknown_op", f"unknown request {clip(msg.op)}; this agent answers "
                                               f"{', '.join(self.ops())}")
        try:
            reply = handler(msg, send)
        except (LinkFailed, StreamClosed):
            raise  # the host is gone: the session ends, not the request
        except StoreError as exc:
            return error_message(exc.code, str(exc))
        except OptionError as exc:  # a request the agent refuses as it stands; the message says what is allowed
            return error_message("bad_request", str(exc))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            return error_message("bad_request", f"malformed {msg.op} request: {type(exc).__name__}: {clip(exc, 200)}")
        except OSError as exc:  # errno and request only: the board's paths stay on the board
            err = os_error(exc, f"the {clip(msg.op, 40)} request's files")
            return error_message(err.code, str(err))
        except Exception as exc:  # the promise: nothing a host sends stops the agent
            sys.stderr.write(f"edgeship-agent: internal error in {msg.op}: {type(exc).__name__}\n")
            return error_message("internal_error", f"the agent failed on this {msg.op} request "
                                                   f"({type(exc).__name__}); it goes on serving")
        return reply if isinstance(reply, Message) else Message(reply)

    def ops(self) -> "list[str]":
        """The requests this agent answers."""
        return sorted([name[4:] for name in dir(self) if name.startswith("_op_")] + ["bye"])

    # -- requests ---------------------------------------------------------------------------
    def _runtime(self) -> Dict[str, Any]:
        if self._runtime_info is None:
            from edgeship.device_agent.runtime import RuntimeNotFound, load_runtime

            try:
                rt = load_runtime(self.config.runtime)
                self._runtime_info = {"name": rt.name, "version": rt.version, "tflite_level": rt.tflite_level,
                                      "custom_ops": list(rt.custom_ops)}
            except RuntimeNotFound as exc:
                self._runtime_info = {"name": None, "error": str(exc)}
        return self._runtime_info

    def _numpy(self) -> Dict[str, Any]:
        """{"version"} of the board's numpy, or {"version": None, "error"}: runs need it, hello does not."""
        if self._numpy_info is None:
            try:
                import numpy

                self._numpy_info = {"version": str(numpy.__version__)}
            except ImportError as exc:  # reported in hello, so the host can say "install numpy" in one line
                self._numpy_info = {"version": None, "error": f"{type(exc).__name__}: {clip(exc, 300)}"}
        return self._numpy_info

    def _op_hello(self, msg: Message, send: Any) -> Dict[str, Any]:
        external = self.delegates.hello(self.config.runtime, self.config.memory_limit)
        return {"op": "hello", "agent_version": __version__, "protocol": VERSION, "python": platform.python_version(),
                "numpy": self._numpy(), "runtime": self._runtime(),
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
        """One page of installed blobs, by name; `next` is the `after` of the next page (null: no more)."""
        h = msg.header
        after = check_name(h["after"]) if h.get("after") is not None else ""
        page = max(1, min(LIST_PAGE, (self.reply_limit - 256) // _LIST_ENTRY_BYTES))
        limit = integer_option(h, "limit", 1, 1 << 30)
        limit = page if limit is None else min(limit, page)
        names = sorted(n for n in os.listdir(self.store.blobs) if n > after)  # recover() keeps only sha256 names
        shown = []
        for name in names[:limit]:  # only this page is stat'ed: paging a big store stays linear
            try:
                st = (self.store.blobs / name).stat()
            except FileNotFoundError:
                continue  # deleted meanwhile
            shown.append({"sha256": name, "size": st.st_size, "last_used": st.st_mtime})
        return {"op": "ok", "blobs": shown, "next": names[limit - 1] if len(names) > limit else None}

    def _op_delete(self, msg: Message, send: Any) -> Dict[str, Any]:
        return {"op": "ok", "deleted": self.store.delete(msg.header["sha256"])}

    def _op_run(self, msg: Message, send: Callable[[Message], None]) -> Dict[str, Any]:
        h = msg.header
        kind = h.get("kind")
        if kind not in RUN_KINDS:
            return {"op": "error", "code": "bad_request", "message": f"run kind must be one of {RUN_KINDS}, not {clip(kind)}"}
        model = check_name(h["model"])
        self.store.get(model)  # hash check; raises not_found / corrupt_blob
        dataset = check_name(h["dataset"]) if h.get("dataset") else None
        if dataset:
            self.store.get(dataset)
        try:  # the board's allow-list turns delegate names into its libraries, and refuses any other
            opts = RunOptions.from_json(h.get("options"), self.config.run_timeout, delegates=self.delegates.resolve)
        except DelegateRefused as exc:
            return {"op": "error", "code": "bad_request", "message": str(exc)}
        if self._numpy()["version"] is None:  # the worker (and every TFLite runtime) needs numpy
            return {"op": "result", "schema_version": RESULT_SCHEMA_VERSION, "agent_version": __version__,
                    "status": "no_runtime",
                    "message": f"numpy is not installed for the board's Python ({self._numpy()['error']}); "
                               f"install numpy and a TFLite runtime there (edgeship boards setup does)"}
        from edgeship.device_agent.worker import run_in_worker

        resolved = opts.resolved(runtime=self.config.runtime, arena_size=self.config.arena_size,
                                 run_timeout=self.config.run_timeout)
        request = {
            "kind": kind,
            "model_path": str(self.store.blobs / model),
            "model_sha256": model,
            "dataset_path": str(self.store.blobs / dataset) if dataset else None,
            "dataset_sha256": dataset,
            "options": resolved.to_json(),
        }
        timeout = float(resolved.timeout or self.config.run_timeout)
        result = run_in_worker(request, timeout, self.config.memory_limit,
                               progress=lambda p: send(Message({**p, "op": "progress"})),
                               cancelled=lambda: not self._still_wanted())
        # The reply's own fields last: nothing in a result can turn the reply into another op.
        return {**result, "op": "result", "schema_version": RESULT_SCHEMA_VERSION, "agent_version": __version__}


def _always() -> bool:
    return True


def main_stdio(config: AgentConfig) -> None:
    from edgeship.device_agent.streams import FdStream

    stdin, stdout = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the frame stream
    stream = FdStream(stdin, stdout, config.write_timeout)
    try:
        Agent(config).serve(stream)
    finally:
        stream.close()
