"""An in-memory board: the real agent in a thread of this process, for tests and notebooks.

Like httpx's MockTransport, it ships in the library so anyone can drive the whole
push/bench/evaluate flow without a subprocess, a port or a board::

    from edgeship.sdk.boards import open_session
    from edgeship.sdk.transport.memory import MemoryTransport

    with MemoryTransport() as board:          # a temporary store, removed on close
        session = open_session(board)

It is not a fake: each ``open()`` serves the stream with ``device_agent.agent.Agent``, the code
a board runs, over an in-memory duplex byte pipe; its runs happen in real worker subprocesses
as everywhere. Only the agent's own process is replaced by a thread. ``MemoryStream.cut()``
pulls the cable (both directions end at once), for tests of a dropped link.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from edgeship.device_agent.agent import Agent, AgentConfig
from edgeship.device_agent.store import StoreError
from edgeship.device_agent.streams import StreamClosed
from edgeship.sdk.errors import LinkError

_JOIN_S = 10.0  # how long close() waits for the agent's thread to end (a run in flight is stopped first)


class _Pipe:
    """One direction of the pipe: bytes written by one end, read by the other; closed by either."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.data = bytearray()
        self.closed = False  # no more bytes will come; what is buffered may still be read
        self.cut = False  # the line was pulled: what is buffered is lost too

    def close(self, *, cut: bool = False) -> None:
        with self.cond:
            self.closed = True
            if cut:
                self.cut = True
                self.data.clear()
            self.cond.notify_all()


class MemoryStream:
    """One end of an in-memory duplex pipe (a Stream); the end that went away is named in the error.

    The host's end raises LinkError once the agent's end is gone (or this end was closed); the
    agent's end raises StreamClosed, as the agent's own streams do. Writes never block: the wire
    protocol's window bounds what is in flight.
    """

    def __init__(self, incoming: _Pipe, outgoing: _Pipe, error: type[Exception], peer: str) -> None:
        self._in = incoming
        self._out = outgoing
        self._error = error
        self.peer = peer  # how messages name the other end
        self._closed = False
        self.agent: threading.Thread | None = None  # on the host's end: the thread serving the other end

    def _gone(self) -> Exception:
        if self._closed:
            return self._error(f"the stream to {self.peer} was closed by this side")
        if self._in.cut or self._out.cut:
            return self._error(f"the in-memory line to {self.peer} was cut")
        return self._error(f"{self.peer} closed the stream")

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._in.cond:
            while not self._in.data and not self._in.closed and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return b""
                self._in.cond.wait(remaining)
            if self._in.data and not self._closed:
                out = bytes(self._in.data[:max_bytes])
                del self._in.data[:max_bytes]
                return out
        raise self._gone()

    def write(self, data: bytes) -> None:
        with self._out.cond:
            if self._closed or self._out.closed:
                raise self._gone()
            self._out.data += data
            self._out.cond.notify_all()

    def close(self) -> None:
        """Hang up: the peer reads what was sent, then the end of the stream; its writes fail."""
        self._closed = True
        self._out.close()
        self._in.close()  # also wakes a read of this end waiting in another thread
        if self.agent is not None:
            self.agent.join(_JOIN_S)

    def cut(self) -> None:
        """Pull the cable: both directions end now and whatever is in flight is lost."""
        self._out.close(cut=True)
        self._in.close(cut=True)


class MemoryTransport:
    """A board whose agent runs in a thread of this process (see the module docstring).

    ``store``: the agent's store directory; None makes a temporary one, kept across ``open()``
    calls (so a push and a later bench see the same blobs) and removed by :meth:`close`.
    ``config``: the agent's settings (quota, frame limit, run timeout, runtime, delegate
    allow-list, ...) as the agent's command line would give them; its ``store_dir`` is replaced
    by ``store``.
    """

    bytes_per_second: float | None = None  # memory: no line rate to pace

    def __init__(self, store: Path | None = None, *, config: AgentConfig | None = None, name: str = "memory") -> None:
        self.name = name
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeship-memory-board-") if store is None else None
        self.store = Path(self._tmp.name) if self._tmp is not None else store
        assert self.store is not None
        self.config = dataclasses.replace(config or AgentConfig(store_dir=self.store), store_dir=self.store)

    def open(self) -> MemoryStream:
        """A fresh connection: a new agent (on the same store) serves it in a daemon thread."""
        if self._tmp is not None and not Path(self._tmp.name).is_dir():
            raise LinkError(f"the in-memory board {self.name!r} was closed; make a new MemoryTransport")
        try:
            agent = Agent(self.config)  # opens the store here, so a bad store fails open(), not the thread
        except (OSError, StoreError) as exc:
            raise LinkError(f"the in-memory agent of {self.name!r} cannot use its store {self.store}: {exc}; "
                            f"give a writable directory") from exc
        to_agent, to_host = _Pipe(), _Pipe()
        host = MemoryStream(to_host, to_agent, LinkError, f"the in-memory agent of {self.name!r}")
        board = MemoryStream(to_agent, to_host, StreamClosed, "the host")

        def serve() -> None:
            try:
                agent.serve(board)
            finally:  # however the agent ends, the host's next read or write says so instead of waiting
                board.close()

        host.agent = threading.Thread(target=serve, name=f"edgeship memory agent {self.name}", daemon=True)
        host.agent.start()
        return host

    def close(self) -> None:
        """Remove the temporary store (a given store stays)."""
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> MemoryTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryTransport({self.name!r}, store={str(self.store)!r})"
