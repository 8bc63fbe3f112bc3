"""The `local` board: the agent as a subprocess of this machine, talking over pipes.

Like esptool's --virt, it lets anyone try the whole flow without hardware, and it runs
exactly the agent code a board runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from pathlib import Path

from edgeship import import_root
from edgeship.sdk.errors import LinkError

DEFAULT_STORE = Path(os.environ.get("EDGESHIP_LOCAL_STORE", "~/.edgeship/local-board")).expanduser()


class LocalStream:
    """Pipes to `python -m edgeship.device_agent --stdio`."""

    def __init__(self, store: Path = DEFAULT_STORE, extra_args: tuple[str, ...] = (), *,
                 python: str | Path = sys.executable, agent: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        """Run the agent package (or, given `agent`, a built zipapp) with `python`."""
        if env is None:
            root = import_root()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        entry = [str(agent)] if agent is not None else ["-m", "edgeship.device_agent"]
        try:
            self.proc = subprocess.Popen(
                [str(python), *entry, "--stdio", "--store", str(store), *extra_args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        except OSError as exc:  # a board entry's `python` that is not there, or not executable
            raise LinkError(f"cannot start the local agent with {python}: {exc.strerror or exc}; "
                            f"set the board's `python` to an interpreter that exists") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdout.fileno()
        self._out = self.proc.stdin

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        ready, _, _ = select.select([self._in], [], [], timeout)
        if not ready:
            return b""
        data = os.read(self._in, max_bytes)
        if not data:
            raise LinkError(f"the local agent exited (status {self.proc.poll()})")
        return data

    def write(self, data: bytes) -> None:
        try:
            self._out.write(data)
            self._out.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise LinkError(f"the local agent is gone (status {self.proc.poll()})") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._out.close()
        with contextlib.suppress(OSError):  # an agent still writing (a reply nobody reads) gets EPIPE, not a hang
            self.proc.stdout.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LocalTransport:
    """The `local` board as a Transport: each ``open()`` starts the agent in a fresh subprocess."""

    bytes_per_second: float | None = None  # a pipe: no line rate to pace

    def __init__(self, store: Path = DEFAULT_STORE, extra_args: tuple[str, ...] = (), *,
                 python: str | Path = sys.executable, agent: Path | None = None,
                 env: dict[str, str] | None = None, name: str = "local") -> None:
        """The agent package (or, given `agent`, a built zipapp) run with `python`, serving `store`."""
        self.name = name
        self.store = store
        self.extra_args = extra_args
        self.python = python
        self.agent = agent
        self.env = env

    def open(self) -> LocalStream:
        return LocalStream(self.store, self.extra_args, python=self.python, agent=self.agent, env=self.env)

    def __repr__(self) -> str:
        return f"LocalTransport({self.name!r}, store={str(self.store)!r})"
