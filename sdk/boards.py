"""Boards given inline, as users type them, and opening a Session on one.

Forms: `local`; SSH as `ssh://user@host:port?python=...&key=...`, `user@host[:port][?...]`,
`host.domain[:port]`, or a Host alias of the user's ssh config (`~/.ssh/config`); serial as
`serial://<pyserial URL>?baud=N` or a device path `/dev/ttyUSB0[?baud=N]`. (boards.yaml, with
named boards, builds on this, and its names come first: a bare name is a Host alias only when
no catalogue board has it.) :func:`transport_for` gives the board's Transport (sdk/transport/base.py);
:func:`open_session` opens it, or any Transport, and says hello. For SSH the ssh config is applied
and the agent zipapp is placed first when the board's copy differs (sdk/transport/ssh.py).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from edgeship.sdk.client import LinkProfile, Session
from edgeship.sdk.errors import UsageError
from edgeship.sdk.progress import OnPhase, Phase, board_label
from edgeship.sdk.transport.base import Transport

if TYPE_CHECKING:
    from edgeship.sdk.transport.ssh import SSHTransport

# The board's interpreter: an absolute path or a bare command name, of characters no shell treats specially.
_SAFE_PYTHON = re.compile(r"(?:/[A-Za-z0-9._+-]+)+|[A-Za-z0-9_][A-Za-z0-9._+-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

@dataclass(frozen=True)
class Board:
    """Where a board is and how to reach it."""

    name: str
    transport: str  # local | ssh | serial | emulated (transport_for turns it into a Transport)
    host: str = ""
    port: int | None = None  # None: the ssh config's Port for the host, else 22
    user: str | None = None
    key: Path | None = None
    python: str = "python3"
    known_hosts: Path | None = None
    url: str = ""
    baud: int = 115200
    store: Path | None = None
    spec: Any = None  # the catalogue entry (sdk.catalogue.BoardSpec) for a named board
    agent_args: tuple[str, ...] = ()  # extra agent flags (local boards: --runtime, --arena-size, --quota, --allow-delegate)

    @classmethod
    def from_spec(cls, name: str, spec: Any) -> Board:
        """A named board from its catalogue entry."""
        if spec.transport == "ssh":
            p = spec.ssh
            _check_store(name, str(spec.store.dir))
            port = p.port if "port" in getattr(p, "model_fields_set", {"port"}) else None  # unset: ssh config's
            return cls(name, "ssh", host=p.host, port=port, user=p.user,
                       key=Path(p.key).expanduser() if p.key else None, python=_check_python(name, spec.python),
                       known_hosts=Path(p.known_hosts).expanduser() if p.known_hosts else None, spec=spec,
                       store=Path(spec.store.dir))
        if spec.transport == "serial":
            return cls(name, "serial", url=spec.serial.url, baud=spec.serial.baud, spec=spec)
        if spec.transport == "local":
            args: list[str] = ["--quota", str(spec.store.quota_mb << 20)]
            if spec.runtime:
                args += ["--runtime", spec.runtime]
            if spec.constraints.arena_bytes:
                args += ["--arena-size", str(spec.constraints.arena_bytes)]
            for d in spec.delegates:  # the local agent's allow-list is the board's catalogue entry
                args += ["--allow-delegate", f"{d.name}={d.library}"]
            # `python` set in the entry: the agent runs under that interpreter (default: the one running edgeship)
            python = _check_python(name, spec.python) if "python" in spec.model_fields_set else ""
            return cls(name, "local", store=Path(spec.store.dir).expanduser() if spec.store.dir else None, spec=spec,
                       agent_args=tuple(args), python=python)
        if spec.transport == "emulated":
            return cls(name, "emulated", spec=spec)
        raise UsageError(f"board {name!r}: unknown transport {spec.transport!r}")

    @classmethod
    def parse(cls, spec: str) -> Board:
        """A board from its inline form; UsageError says which forms exist."""
        board = cls.parse_address(spec)
        if board is None:
            raise UsageError(f"unknown board {spec!r}: give 'local', 'user@host[:port]', a Host alias of your "
                             f"~/.ssh/config, 'ssh://user@host:port?python=...&key=...', '/dev/ttyUSB0' or "
                             f"'serial:///dev/ttyUSB0?baud=115200'")
        return board

    @classmethod
    def parse_address(cls, spec: str) -> Board | None:
        """A board from an inline form, or None when ``spec`` is none of them (a name, perhaps mistyped).

        ``ssh://...`` / ``serial://...`` / ``local`` are what they say; a path under ``/dev/`` is a
        serial device; ``user@host``, ``host:port`` and a dotted host name are SSH hosts; another
        bare word is an SSH host only when the ssh config has a Host pattern for it.
        """
        if spec == "local":
            return cls("local", "local")
        if spec.startswith("ssh://"):
            return cls._parse_ssh(spec, spec)
        if spec.startswith("serial://"):
            return cls._parse_serial(spec, spec[len("serial://"):])
        if spec.startswith("/dev/"):
            return cls._parse_serial(spec, spec)
        if "://" in spec or spec.startswith(("/", "-")) or not spec:
            return None
        address = spec.partition("?")[0]
        if "@" in address or ":" in address or "." in address:
            return cls._parse_ssh(spec, "ssh://" + spec)
        from edgeship.sdk.transport.ssh import is_host_alias

        if is_host_alias(address):
            return cls._parse_ssh(spec, "ssh://" + spec)
        return None

    @classmethod
    def _parse_ssh(cls, name: str, url: str) -> Board:
        parts = urlsplit(url)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(q) - {"python", "key", "known_hosts", "store"}
        if unknown:
            raise UsageError(f"board {name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"ssh boards take python, key, known_hosts, store")
        if not parts.hostname:
            raise UsageError(f"board {name!r}: no host; expected ssh://user@host:port or user@host:port")
        try:
            port = parts.port
        except ValueError as exc:
            raise UsageError(f"board {name!r}: bad port; expected a number 1-65535 after the host") from exc
        if port == 0 or parts.path not in ("", "/"):
            raise UsageError(f"board {name!r}: expected [user@]host[:port] with a port 1-65535 and no path")
        python = _check_python(name, q.get("python", "python3"))
        if "store" in q:
            _check_store(name, q["store"])
        # urlsplit lower-cases the host; a Host alias of the ssh config is matched as typed
        host = unquote(parts.netloc.rpartition("@")[2])
        host = host[1:host.index("]")] if host.startswith("[") else host.partition(":")[0]
        return cls(name, "ssh", host=host, port=port, user=unquote(parts.username) if parts.username else None,
                   key=Path(q["key"]).expanduser() if "key" in q else None, python=python,
                   known_hosts=Path(q["known_hosts"]).expanduser() if "known_hosts" in q else None,
                   store=Path(q["store"]) if "store" in q else None)

    @classmethod
    def _parse_serial(cls, name: str, rest: str) -> Board:
        url, _, query = rest.partition("?")
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(q) - {"baud"}
        if unknown or not url:
            raise UsageError(f"board {name!r}: expected serial://<device or pyserial URL>?baud=N or /dev/DEVICE?baud=N")
        try:
            baud = int(q.get("baud", 115200))
        except ValueError as exc:
            raise UsageError(f"board {name!r}: baud must be a number") from exc
        return cls(name, "serial", url=url, baud=baud)


def _check_python(board: str, python: str) -> str:
    """The board's interpreter as given, if it is an absolute path or a plain command name; else UsageError."""
    if not _SAFE_PYTHON.fullmatch(python):
        raise UsageError(f"board {board!r}: python={python!r} is neither an absolute path nor a plain command name "
                         f"(letters, digits, . _ + -); give e.g. python=/usr/bin/python3 or python=python3")
    return python


def _check_store(board: str, store: str) -> None:
    """A store directory may hold any printable characters (it is quoted); control characters are refused."""
    if _CONTROL.search(store):
        raise UsageError(f"board {board!r}: store={store!r} contains a control character; give a plain directory path")


def transport_for(board: Board, *, accept_new_host: bool = False, phase: OnPhase | None = None) -> Transport:
    """The transport that reaches ``board``: the one place a board's kind picks how it is opened.

    ``phase`` goes to the transports that have phases of their own to report (an SSH board
    connects and places the agent; an emulated one may be started first).
    """
    if board.transport == "local":
        from edgeship.sdk.transport.local import DEFAULT_STORE, LocalTransport

        python = board.python if board.spec is not None and board.python else sys.executable
        return LocalTransport(board.store or DEFAULT_STORE, board.agent_args, python=python, name=board.name)
    if board.transport == "serial":
        from edgeship.sdk.transport.serial import SerialTransport

        return SerialTransport(board.url, board.baud, name=board.name)
    if board.transport == "ssh":
        return ssh_transport(board, accept_new_host=accept_new_host, phase=phase)
    if board.transport == "emulated":
        from edgeship.sdk.emulate.services import EmulatedTransport

        return EmulatedTransport.for_spec(board.name, board.spec, phase=phase)
    raise UsageError(f"board {board.name!r}: unknown transport {board.transport!r}; expected local, ssh, serial "
                     f"or emulated")


def ssh_transport(board: Board, *, accept_new_host: bool = False, phase: OnPhase | None = None) -> SSHTransport:
    """An SSH board's transport; besides opening the agent's stream it connects and places the agent (`boards setup`)."""
    from edgeship.sdk.transport.ssh import SSHTransport

    if board.transport != "ssh":
        raise UsageError(f"board {board.name!r} is reached over {board.transport}, not SSH")
    return SSHTransport(board.host, port=board.port, user=board.user, key=board.key, known_hosts=board.known_hosts,
                        python=board.python, store=board.store, accept_new_host=accept_new_host, name=board.name,
                        phase=phase)


def open_session(target: Board | Transport, *, accept_new_host: bool = False, phase: OnPhase | None = None) -> Session:
    """Open a stream to the agent of a board (or any Transport) and say hello.

    ``accept_new_host`` applies to an SSH Board; a Transport given directly carries its own setting.
    ``phase`` hears "connecting" (and, from an SSH or emulated board's transport, "starting" and
    "placing agent"); a transport that was given a phase callback of its own says its own phases.
    """
    transport = (transport_for(target, accept_new_host=accept_new_host, phase=phase) if isinstance(target, Board)
                 else target)
    if phase is not None and getattr(transport, "phase", None) is None:
        phase(Phase("connecting", transport.name, f"connecting to {board_label(transport.name)} "
                                                  f"({_reached_by(transport)})"))
    stream = transport.open()
    try:
        session = Session(stream, LinkProfile.for_rate(transport.bytes_per_second))
        session.hello()
    except BaseException:
        stream.close()
        raise
    return session


def _reached_by(transport: Transport) -> str:
    """How a transport reaches its board, in a few words, for the "connecting" line."""
    kind = type(transport).__name__
    if kind == "LocalTransport":
        return "the agent in a subprocess of this machine"
    if kind == "SerialTransport":
        return f"serial line {getattr(transport, 'url', '')} at {getattr(transport, 'baud', '?')} baud"
    if kind == "MemoryTransport":
        return "the agent in a thread of this process"
    return kind
