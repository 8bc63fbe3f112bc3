"""Boards given inline, as users type them, and opening a Session on one.

Forms: `local`; SSH as `ssh://user@host:port?python=...&key=...`, `user@host[:port][?...]`,
`host.domain[:port]`, or a Host alias of the user's ssh config (`~/.ssh/config`); serial as
`serial://<pyserial URL>?baud=N` or a device path `/dev/ttyUSB0[?baud=N]`. (boards.yaml, with
named boards, builds on this, and its names come first: a bare name is a Host alias only when
no catalogue board has it.) Opening a board gives a Session with the agent on it; for SSH the
ssh config is applied (sdk.transport.ssh.resolve_target) and the agent zipapp is placed first
when the board's copy differs.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from edgeship.sdk.client import LinkProfile, Session
from edgeship.sdk.errors import UsageError

AGENT_DIR = ".edgeship"

# The board's interpreter: an absolute path or a bare command name, of characters no shell treats specially.
_SAFE_PYTHON = re.compile(r"(?:/[A-Za-z0-9._+-]+)+|[A-Za-z0-9_][A-Za-z0-9._+-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# What runs on the board: the interpreter checks the zipapp's sha256 itself, in the process that
# then runs it, so a file changed after the host's check (or one the host never checked) does not
# run. argv: the zipapp, its sha256, then the agent's own flags. Single line, no single quotes, so
# shlex.quote makes it one word for any POSIX login shell; Python 3.9 syntax.
_VERIFY_AND_RUN = (
    "import hashlib,runpy,sys;p,h=sys.argv[1:3];"
    "ok=hashlib.sha256(open(p,\"rb\").read()).hexdigest()==h;"
    "ok or sys.exit(\"edgeship: the agent file \"+p+\" on the board does not match its sha256 \"+h[:16]+\"; "
    "it changed after the host checked it. Connect again to place a fresh copy.\");"
    "sys.path[:1]=[x for x in sys.path[:1] if x];"  # drop the -c cwd entry: `python file.pyz` does not search it
    "sys.argv=[p]+sys.argv[3:];runpy.run_path(p,run_name=\"__main__\")"
)


@dataclass(frozen=True)
class Board:
    """Where a board is and how to reach it."""

    name: str
    transport: str  # local | ssh | serial
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

    @property
    def bytes_per_second(self) -> float | None:
        return self.baud / 10 if self.transport == "serial" else None


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


def open_session(board: Board, *, accept_new_host: bool = False) -> Session:
    """Connect to a board's agent and say hello."""
    if board.transport == "local":
        from edgeship.sdk.transport.local import DEFAULT_STORE, LocalStream

        python = board.python if board.spec is not None and board.python else sys.executable
        session = Session(LocalStream(board.store or DEFAULT_STORE, board.agent_args, python=python))
    elif board.transport == "emulated":
        from edgeship.sdk.emulate.services import open_emulated

        stream, rate = open_emulated(board)
        session = Session(stream, LinkProfile.for_rate(rate))
    elif board.transport == "serial":
        from edgeship.sdk.transport.serial import open_serial

        session = Session(open_serial(board.url, board.baud), LinkProfile.for_rate(board.bytes_per_second))
    else:
        session = Session(_open_ssh(board, accept_new_host))
    try:
        session.hello()
    except BaseException:
        session.stream.close()
        raise
    return session


def connect_ssh(board: Board, *, accept_new_host: bool = False) -> Any:
    """An authenticated SSH connection (paramiko client) to an SSH board, host key checked."""
    from edgeship.sdk.transport.ssh import connect, resolve_target

    # The ssh config fills in what the board leaves open (HostName, User, Port, IdentityFile,
    # ProxyJump, known_hosts files); nothing from it reaches the remote command line.
    return connect(resolve_target(board.host, port=board.port, user=board.user, key_filename=board.key,
                                  known_hosts=board.known_hosts, python=board.python,
                                  accept_new_host=accept_new_host))


def place_agent(client: Any, *, check_only: bool = False) -> tuple[str, str, bool]:
    """Make sure the board holds this host's agent zipapp: (its path on the board, its sha256, whether it was missing).

    Placed (0600, in a private AGENT_DIR) when missing, different, or writable by others;
    ``check_only`` only says whether it would be. The board re-checks the hash before it runs it.
    """
    from edgeship.sdk.agentbuild import build_zipapp
    from edgeship.sdk.transport.ssh import private_dir, put_file, remote_file

    agent = build_zipapp()
    sha = hashlib.sha256(agent).hexdigest()
    remote = f"{AGENT_DIR}/agent-{sha[:16]}.pyz"
    if not check_only:
        private_dir(client, AGENT_DIR)
    on_board = remote_file(client, remote)  # None when missing (AGENT_DIR too)
    missing = on_board is None or on_board.sha256 != sha or bool(on_board.mode & 0o022)
    if missing and not check_only:
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".pyz") as f:
            f.write(agent)
            f.flush()
            put_file(client, Path(f.name), remote, mode=0o600)
    return remote, sha, missing


def _open_ssh(board: Board, accept_new_host: bool) -> Any:
    from edgeship.sdk.transport.ssh import open_exec

    client = connect_ssh(board, accept_new_host=accept_new_host)
    try:
        remote, sha, _ = place_agent(client)
        store = _remote_path(board.store)
        command = " ".join([shlex.quote(board.python), "-c", shlex.quote(_VERIFY_AND_RUN), shlex.quote(remote), sha,
                            "--stdio", "--store", store])
        label = f"{shlex.quote(board.python)} {shlex.quote(remote)} --stdio --store {store}"  # what messages show
        return open_exec(client, command, owns_client=True, label=label)
    except BaseException:
        client.close()
        raise


def _remote_path(store: Path | None) -> str:
    """The board's store directory for its shell: ~/ kept for the remote shell to expand, the rest quoted."""
    text = str(store) if store is not None else f"{AGENT_DIR}/store"
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:])
    return shlex.quote(text)
