"""Emulated boards as services: started on demand for one command, or kept up between commands.

``edgeship emulate up NAME`` runs the board's services (relay and agent for emu-serial;
the qemu root for emu-pi) in a background process and records how to reach them in
~/.edgeship/emulate/NAME.json; a command that uses the board connects to them. Without
``up``, the board is started for the command and stopped after it, as a real board that is
simply there would be used. :class:`EmulatedTransport` is such a board as a Transport
(sdk/transport/base.py); it reaches the services through the serial and SSH transports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgeship import import_root
from edgeship.sdk.errors import EdgeshipError, UsageError
from edgeship.sdk.progress import OnPhase, Phase, board_label
from edgeship.sdk.transport.base import Stream, Transport

STATE_DIR = Path(os.environ.get("EDGESHIP_EMULATE_DIR", "~/.edgeship/emulate")).expanduser()
EMULATORS = ("emu-serial", "emu-pi")


class EmuSerial:
    """The agent serving on a pty behind a relay paced at the board's baud rate."""

    def __init__(self, store: Path, baud: int = 115200) -> None:
        self.store = store
        self.baud = baud
        self.relay: Any = None
        self.agent: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, Any]:
        from edgeship.sdk.emulate.relay import SerialRelay

        self.relay = SerialRelay(self.baud)
        root = import_root()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.agent = subprocess.Popen([sys.executable, "-m", "edgeship.device_agent", "--serial", self.relay.board_port,
                                       "--baud", str(self.baud), "--store", str(self.store)],
                                      stderr=subprocess.DEVNULL, env=env)
        return {"url": self.relay.host_port, "baud": self.baud}

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        if self.relay is not None:
            self.relay.close()


def _state_file(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(name: str) -> dict[str, Any] | None:
    """The connection info of a board kept up by `emulate up`, or None."""
    path = _state_file(name)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state.get("pid", 0))):
        path.unlink(missing_ok=True)
        return None
    return dict(state)


class EmuPi:
    """An aarch64 board under qemu, reached over a real OpenSSH sshd on 127.0.0.1 whose command runs its Python."""

    def __init__(self, store: Path, baud: int = 0) -> None:
        self.store = store
        self.sshd: Any = None

    def start(self) -> dict[str, Any]:
        from edgeship.sdk.emulate import pi
        from edgeship.sdk.emulate.sshd import Sshd

        root = pi.provision(pi.DEFAULT_CACHE)
        work = STATE_DIR / "emu-pi-sshd"
        work.mkdir(parents=True, exist_ok=True)
        self.sshd = Sshd(work).start()
        known = work / "known_hosts"
        known.write_text(self.sshd.known_hosts_line() + "\n")
        return {"host": "127.0.0.1", "port": self.sshd.port, "user": self.sshd.user, "key": str(self.sshd.user_key_path),
                "known_hosts": str(known), "python": str(root.launcher)}

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()


def make(name: str, store: Path, baud: int = 115200) -> EmuSerial | EmuPi:
    if name == "emu-serial":
        return EmuSerial(store, baud)
    if name == "emu-pi":
        return EmuPi(store)
    raise UsageError(f"unknown emulator {name!r}; known: {', '.join(EMULATORS)}")


def serve_forever(name: str, store: Path, baud: int) -> None:
    """The body of `emulate up`'s background process: start, record, wait for SIGTERM, stop."""
    service = make(name, store, baud)
    info = service.start()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    _state_file(name).write_text(json.dumps({"pid": os.getpid(), "name": name, **info}))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        service.stop()
        _state_file(name).unlink(missing_ok=True)


def up(name: str, store: Path, baud: int = 115200, timeout: float = 30.0) -> dict[str, Any]:
    """Start a board's services in a background process and wait until they are recorded."""
    state = running(name)
    if state is not None:
        return state
    root = import_root()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "edgeship.sdk.emulate", "serve", name, str(store), str(baud)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = running(name)
        if state is not None:
            return state
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
            raise EdgeshipError(f"{name} did not start: {err[-1] if err else 'exited with ' + str(proc.returncode)}")
        time.sleep(0.05)
    proc.terminate()
    raise EdgeshipError(f"{name} did not start within {timeout:.0f} s")


def down(name: str, timeout: float = 15.0) -> bool:
    state = running(name)
    if state is None:
        return False
    os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(int(state["pid"])):
        time.sleep(0.05)
    if _alive(int(state["pid"])):
        os.kill(int(state["pid"]), signal.SIGKILL)
    _state_file(name).unlink(missing_ok=True)
    return True


class _OwnedStream:
    """A stream whose close() also stops the services started for it."""

    def __init__(self, inner: Stream, service: EmuSerial | EmuPi | None) -> None:
        self.inner = inner
        self.service = service

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        return bytes(self.inner.read(max_bytes, timeout))

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self.service is not None:
                self.service.stop()


class EmulatedTransport:
    """An emulated board as a Transport: the services kept up by `emulate up`, or ones started for each stream.

    emu-serial is reached through the serial transport at the relay's baud rate, emu-pi through
    the same SSH transport (agent placement included) a real Pi uses.
    """

    def __init__(self, name: str, emulator: str, store: str, baud: int = 115200, phase: OnPhase | None = None) -> None:
        self.name = name
        self.phase = phase  # hears "starting" (when the services are not up), then the inner transport's phases
        self.emulator = emulator
        self.store = store  # as the catalogue gives it: expanded here for emu-serial, by the board's shell for emu-pi
        self.baud = baud
        self.bytes_per_second: float | None = baud / 10 if emulator == "emu-serial" else None

    @classmethod
    def for_spec(cls, name: str, spec: Any, phase: OnPhase | None = None) -> EmulatedTransport:
        """The transport of a catalogue entry (sdk.catalogue.BoardSpec) with ``transport: emulated``."""
        return cls(name, spec.emulator, str(spec.store.dir), spec.serial.baud if spec.serial is not None else 115200,
                   phase=phase)

    def open(self) -> Stream:
        say = self.phase or (lambda _phase: None)
        state = running(self.emulator)
        service = None
        if state is None:
            what = "Debian arm64 under qemu" if self.emulator == "emu-pi" else f"a relay paced at {self.baud} baud"
            say(Phase("starting", self.name, f"starting emulated board {board_label(self.name)} ({what})"))
            service = make(self.emulator, Path(self.store).expanduser(), self.baud)
            state = service.start()
        try:
            inner: Transport
            if self.emulator == "emu-pi":
                from edgeship.sdk.transport.ssh import SSHTransport

                inner = SSHTransport(state["host"], port=int(state["port"]), user=state["user"], key=Path(state["key"]),
                                     known_hosts=Path(state["known_hosts"]), python=state["python"],
                                     store=Path(self.store), name=self.name, phase=self.phase)
            else:
                from edgeship.sdk.transport.serial import SerialTransport

                inner = SerialTransport(state["url"], int(state["baud"]), name=self.name)
                self.bytes_per_second = inner.bytes_per_second  # the running relay's rate, which `up` chose
                say(Phase("connecting", self.name, f"connecting to {board_label(self.name)} (serial line {inner.url} at "
                                                   f"{inner.baud} baud)"))
            return _OwnedStream(inner.open(), service)
        except BaseException:
            if service is not None:
                service.stop()
            raise
