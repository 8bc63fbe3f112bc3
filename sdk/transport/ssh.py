"""SSH to a board: host-key checking like OpenSSH, an exec byte stream, atomic SFTP upload.

This is the only module of edgeship that imports paramiko; its exceptions are translated
here, once, into :mod:`sdk.errors` (``raise ... from exc`` keeps the cause for ``--debug``):

    unknown host key (not accepted)     HostKeyError  names the fingerprint, says --accept-new-host
    changed host key                    HostKeyError  always refused; says how to remove the stale entry
    key listed @revoked in known_hosts  HostKeyError  always refused; names the file and line
    credentials refused                 AuthError     names user, host and the key file tried
    refused / timed out / handshake     LinkError     names host:port
    exec stream ended or broke          LinkError     carries the exit status and the stderr tail

Host keys follow OpenSSH's ``StrictHostKeyChecking``: the default is ``yes`` (an unknown
host is refused, paramiko's RejectPolicy semantics); ``accept_new_host`` is ``accept-new``
(an unknown host's key is appended to known_hosts). A *changed* key is refused in both
modes, and so is a key that known_hosts lists as ``@revoked``. Entries for a port other than
22 are looked up and written as ``[host]:port``. known_hosts is parsed here, not by paramiko
(see :class:`_KnownHosts`): hashed names, wildcards and negations match as in OpenSSH;
``@cert-authority`` lines and malformed lines are skipped (a malformed one with a warning
naming ``file:line``) instead of breaking every connection.

OpenSSH's client config is honoured (:func:`resolve_target`): ``~/.ssh/config`` (or the file
``$EDGESHIP_SSH_CONFIG`` names; ``none`` reads no config) gives Host aliases, HostName, User,
Port, IdentityFile, IdentitiesOnly, UserKnownHostsFile, GlobalKnownHostsFile and ProxyJump;
values given explicitly (the board's URL or catalogue entry) win over the config, as on
ssh's command line. A ProxyJump hop is connected first, with the same host-key rules, and the
board's SSH session runs over a ``direct-tcpip`` channel through it. ProxyCommand and Match
exec are refused (edgeship runs no local command from the config); an unparsable line is one
error naming the file and line.

A board without SFTP (dropbear without sftp-server, sshd without the subsystem) still gets its
files: :func:`put_file`, :func:`private_dir` and :func:`remote_file` fall back to the board's
Python over the exec channel (the bytes go to its stdin; it writes a 0600 temp file, fsyncs,
renames and prints the sha256 of what it wrote, which must match).

:class:`SSHTransport` is an SSH board as a Transport (sdk/transport/base.py): ``open()`` connects,
places this host's agent zipapp on the board when the board's copy differs (:func:`place_agent`,
under :data:`AGENT_DIR`), and runs it on an exec channel whose stdin/stdout is the stream.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import getpass
import hashlib
import hmac
import logging
import os
import posixpath
import re
import shlex
import socket
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Optional

import paramiko
from paramiko.hostkeys import InvalidHostKey
from paramiko.pkey import UnknownKeyType

from edgeship.sdk.errors import AuthError, HostKeyError, LinkError, TransportError
from edgeship.sdk.progress import OnPhase, Phase, board_label

__all__ = [
    "AGENT_DIR",
    "RemoteFile",
    "SSHStream",
    "SSHTarget",
    "SSHTransport",
    "config_path",
    "connect",
    "fingerprint",
    "is_host_alias",
    "known_hosts_name",
    "open_exec",
    "place_agent",
    "private_dir",
    "put_file",
    "remote_file",
    "remote_sha256",
    "resolve_target",
    "run_command",
]

STDERR_TAIL_BYTES = 64 * 1024  # how much of a remote command's stderr is kept (the last bytes)
STDOUT_BUFFER_BYTES = 1024 * 1024  # stdout read ahead of the caller before back-pressure applies
STDERR_TAIL_LINES = 10  # stderr lines quoted in an error message
_SEND_CHUNK = 32 * 1024
_log = logging.getLogger(__name__)
_SETTLE_S = 2.0  # after EOF: how long to wait for the exit status and the last stderr bytes


CONFIG_ENV = "EDGESHIP_SSH_CONFIG"  # another ssh_config file, or "none" for no config at all
_MAX_JUMPS = 8  # ProxyJump hops (a loop in the config ends here)
_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


def _default_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to reach a board over SSH."""

    host: str
    port: int = 22
    user: Optional[str] = None  # None: the local user, like ssh
    key_filename: Optional[Path] = None  # None: the ssh agent and ~/.ssh/id_*
    known_hosts: Path = field(default_factory=_default_known_hosts)
    python: str = "python3"  # the board's interpreter for the agent
    accept_new_host: bool = False  # StrictHostKeyChecking=accept-new instead of yes
    connect_timeout: float = 10.0
    keepalive: int = 15  # seconds between keepalives; 0 disables them
    extra_known_hosts: tuple[Path, ...] = ()  # read as well, never written (known_hosts2, the global files)
    identity_files: tuple[Path, ...] = ()  # IdentityFile lines of the config, tried when key_filename is None
    identities_only: bool = False  # IdentitiesOnly yes: no ssh-agent keys
    jump: Optional[SSHTarget] = None  # ProxyJump: the host to reach this one through

    @property
    def address(self) -> str:
        """``host:port`` as messages print it."""
        return f"{self.host}:{self.port}"

    @property
    def login(self) -> str:
        return self.user or getpass.getuser()

    @property
    def known_hosts_files(self) -> str:
        """The known_hosts file(s) consulted, as messages name them."""
        files = [self.known_hosts, *self.extra_known_hosts]
        return str(files[0]) if len(files) == 1 else "the known_hosts files " + ", ".join(map(str, files))


# -- host keys -----------------------------------------------------------------------------


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH files a host under: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint of a key, ``SHA256:<unpadded base64>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {fingerprint(key)}"


@dataclass(frozen=True)
class _HostLine:
    """One usable known_hosts line: its host patterns, key type, key (None: a type paramiko cannot read)."""

    patterns: tuple[str, ...]
    key_type: str
    key: Optional[paramiko.PKey]
    where: str  # "file:line", for messages


@dataclass
class _KnownHosts:
    """A known_hosts file read the way OpenSSH reads it, tolerant of what OpenSSH tolerates.

    paramiko's own loader raises on one bad base64 field (``InvalidHostKey``, which broke every
    SSH board) and treats ``@cert-authority`` / ``@revoked`` lines as host names. Here: comments
    and blank lines are skipped; ``@cert-authority`` lines are skipped (edgeship does not verify
    host certificates) with a debug log; a malformed line is skipped with a warning naming
    ``file:line``; ``@revoked`` keys are collected and refused for every host (stricter than
    OpenSSH, which applies them to the hosts the line's patterns match).
    """

    lines: list[_HostLine] = field(default_factory=list)
    revoked: list[_HostLine] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> _KnownHosts:
        known = cls()
        if not path.is_file():
            return known
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise HostKeyError(f"Cannot read the known_hosts file {path}: {exc.strerror or exc}. Fix its permissions "
                               f"or point edgeship at another known_hosts file.") from exc
        for lineno, raw in enumerate(text.splitlines(), 1):
            where = f"{path}:{lineno}"
            fields = raw.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = ""
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
                if marker == "@cert-authority":
                    _log.debug("%s: skipping an @cert-authority line (edgeship does not check host certificates)",
                               where)
                    continue
                if marker != "@revoked":
                    _log.warning("%s: skipping a line with the unknown marker %s", where, _printable(marker))
                    continue
            if len(fields) < 3:
                _log.warning("%s: skipping a malformed known_hosts line (expected: hosts keytype base64-key)", where)
                continue
            patterns, key_type, b64 = fields[:3]
            try:
                blob = base64.b64decode(b64.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                _log.warning("%s: skipping a malformed known_hosts line (the key is not base64)", where)
                continue
            key: Optional[paramiko.PKey]
            try:
                key = paramiko.PKey.from_type_string(key_type, blob)
            except UnknownKeyType:
                _log.debug("%s: key type %s is not one paramiko reads", where, _printable(key_type))
                key = None
            except (paramiko.SSHException, ValueError, TypeError, IndexError):
                _log.warning("%s: skipping a malformed known_hosts line (not a valid %s key)", where,
                             _printable(key_type))
                continue
            entry = _HostLine(tuple(patterns.split(",")), key_type, key, where)
            (known.revoked if marker == "@revoked" else known.lines).append(entry)
        return known

    @classmethod
    def read_all(cls, paths: list[Path]) -> _KnownHosts:
        """Several known_hosts files as one (OpenSSH reads the user's and the global ones together)."""
        known = cls()
        for path in paths:
            one = cls.read(path)
            known.lines += one.lines
            known.revoked += one.revoked
        return known

    def revoked_entry(self, key: paramiko.PKey) -> Optional[_HostLine]:
        """The @revoked line that lists ``key``, if any."""
        for entry in self.revoked:
            if entry.key is not None and entry.key == key:
                return entry
        return None

    def for_host(self, name: str) -> list[_HostLine]:
        """The lines whose host patterns match ``name`` (``host`` or ``[host]:port``)."""
        return [e for e in self.lines if _host_matches(e.patterns, name)]


def _printable(text: str, limit: int = 60) -> str:
    """A value from a file, safe to log: repr-escaped and cut."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def _host_matches(patterns: tuple[str, ...], name: str) -> bool:
    """OpenSSH's host pattern list: ``*`` and ``?`` wildcards, ``!`` negation, ``|1|salt|hash`` hashed names."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if pattern.startswith("|1|"):
            hit = _hashed_match(pattern, name)
        else:
            hit = _glob_re(pattern.lower()).fullmatch(name.lower()) is not None
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def _hashed_match(pattern: str, name: str) -> bool:
    parts = pattern.split("|")  # "", "1", salt, hash
    if len(parts) != 4:
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        want = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest(), want)


def _glob_re(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def _unknown_host_message(target: SSHTarget, key: paramiko.PKey) -> str:
    return (f"The SSH host key of {target.address} is not known: the board presents {_describe(key)}, and "
            f"{target.known_hosts_files} {'has' if not target.extra_known_hosts else 'have'} no entry for "
            f"{known_hosts_name(target.host, target.port)}. Check that "
            f"fingerprint on the board itself (ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_stem(key)}_key.pub), "
            f"then pass --accept-new-host to trust it; it will be added to {target.known_hosts}.")


def _changed_host_message(target: SSHTarget, offered: paramiko.PKey, known: Optional[_HostLine]) -> str:
    name = known_hosts_name(target.host, target.port)
    if known is None:
        was = "a different key"
    elif known.key is None:
        was = f"a {known.key_type} key (line {known.where.rsplit(':', 1)[1]})"
    else:
        was = f"{_describe(known.key)} (line {known.where.rsplit(':', 1)[1]})"
    where = known.where.rsplit(":", 1)[0] if known is not None else str(target.known_hosts)
    return (f"The SSH host key of {target.address} has CHANGED: {where} has {was} for {name}, "
            f"but the board now presents {_describe(offered)}. Someone could be intercepting the connection, "
            f"or the board was reinstalled. edgeship refuses a changed key even with --accept-new-host. If you "
            f"know why it changed, remove the stale entry with: ssh-keygen -R {shlex.quote(name)} -f "
            f"{shlex.quote(where)} and connect again with --accept-new-host.")


def _revoked_host_message(target: SSHTarget, offered: paramiko.PKey, line: _HostLine) -> str:
    return (f"The SSH host key of {target.address} is REVOKED: the board presents {_describe(offered)}, which "
            f"{line.where} marks @revoked. edgeship never accepts a revoked key, not even with --accept-new-host. "
            f"Give the board a new host key (and check how the old one was exposed), or delete that line if it "
            f"is there by mistake.")


def _key_file_stem(key: paramiko.PKey) -> str:
    name = key.get_name()
    if name == "ssh-ed25519":
        return "ed25519"
    if name.startswith("ecdsa-"):
        return "ecdsa"
    return "rsa"


def _append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append ``name keytype base64`` to known_hosts, creating it 0600 (and missing directories 0700) if needed."""
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    for directory in reversed(missing):  # each one 0700, not only the last (Path.mkdir(parents=True) would)
        directory.mkdir(mode=0o700, exist_ok=True)
    needs_newline = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    line = ("\n" if needs_newline else "") + f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as f:
        f.write(line)


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Every host-key decision: paramiko is given no keys of its own, so it asks here each time.

    A key listed ``@revoked`` is refused first, in every mode; then a key on file for the host
    must match one of its lines, any other key is *changed* and always refused; an unknown
    host is refused, or recorded under ``accept_new_host``.
    """

    def __init__(self, target: SSHTarget, known_hosts: Path, known: _KnownHosts) -> None:
        self.target = target
        self.known_hosts = known_hosts
        self.known = known

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        known = self.known
        revoked = known.revoked_entry(key)
        if revoked is not None:
            raise HostKeyError(_revoked_host_message(self.target, key, revoked))
        on_file = known.for_host(hostname)
        if on_file:
            offered = key.asbytes()
            if any(e.key is not None and e.key.asbytes() == offered for e in on_file):
                return
            readable = [e for e in on_file if e.key is not None]
            same_type = [e for e in readable if e.key_type == key.get_name()]
            raise HostKeyError(_changed_host_message(self.target, key, (same_type or readable or on_file)[0]))
        if not self.target.accept_new_host:
            raise HostKeyError(_unknown_host_message(self.target, key))
        try:
            _append_known_host(self.known_hosts, hostname, key)
        except OSError as exc:
            raise HostKeyError(f"Cannot record the host key of {self.target.address} in {self.known_hosts}: "
                               f"{exc.strerror or exc}. Fix the permissions of that file or its directory.") from exc


# -- connecting ----------------------------------------------------------------------------


def _transport_preferring(key_types: list[str]) -> Callable[..., paramiko.Transport]:
    """A paramiko Transport factory that asks the server first for the host-key types on file.

    Like OpenSSH: a board with ed25519, ECDSA and RSA host keys, known here by its ECDSA key,
    must be asked for that key, not for paramiko's first choice (which would look *changed*).
    """
    wanted: list[str] = []
    for key_type in key_types:
        for algorithm in (["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if key_type == "ssh-rsa" else [key_type]):
            if algorithm not in wanted:
                wanted.append(algorithm)

    def make(sock: Any, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        if wanted:
            options = transport.get_security_options()
            offered = list(options.key_types)
            first = [k for k in wanted if k in offered]
            options.key_types = first + [k for k in offered if k not in first]
        return transport

    return make


def _past_key_exchange(client: paramiko.SSHClient) -> bool:
    """True when the transport is up and has verified a host key, i.e. a failure now is about auth."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        return False
    try:
        transport.get_remote_server_key()
    except paramiko.SSHException:
        return False
    return True


def _auth_message(target: SSHTarget, key_files: list[Path], exc: BaseException) -> str:
    key_file = key_files[0] if key_files else None
    agent = "" if target.identities_only else " and any ssh-agent keys"
    tried = (f"the key file{'s' if len(key_files) > 1 else ''} {', '.join(map(str, key_files))}{agent}" if key_files
             else "any ssh-agent keys and ~/.ssh/id_rsa, id_ecdsa, id_ed25519")
    if isinstance(exc, paramiko.PasswordRequiredException):
        hint = f"The key file is passphrase-protected: load it into the agent first (ssh-add {key_file})."
    else:
        pub = f"{key_file}.pub" if key_file else "~/.ssh/id_ed25519.pub"
        hint = (f"Install the matching public key on the board (ssh-copy-id -i {shlex.quote(pub)} -p {target.port} "
                f"{shlex.quote(f'{target.login}@{target.host}')}) or pass the right key file.")
    detail = str(exc).strip() or type(exc).__name__
    return (f"SSH login as {target.login!r} on {target.address} was refused ({detail}); tried {tried}. {hint}")


def _link_message(target: SSHTarget, exc: BaseException) -> str:
    addr = target.address
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return (f"Cannot connect to {addr}: connection refused. Check that the board is on, that sshd runs on it, "
                f"and that the port is right.")
    if isinstance(exc, socket.gaierror):
        return f"Cannot connect to {addr}: the name {target.host!r} does not resolve ({exc.strerror or exc})."
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return (f"Cannot connect to {addr}: no answer within {target.connect_timeout:g} s. Check the address and that "
                f"the board is reachable from here.")
    if isinstance(exc, paramiko.SSHException):
        return (f"The SSH handshake with {addr} failed: {exc or type(exc).__name__}. Check that {addr} is an SSH "
                f"server and that the network path is stable.")
    if isinstance(exc, OSError):
        return f"Cannot connect to {addr}: {exc.strerror or exc}."
    return f"Cannot connect to {addr}: {exc}."


class _Client(paramiko.SSHClient):
    """An SSHClient that remembers the board's interpreter, whether SFTP works, and its ProxyJump hop.

    Closing it closes the jump host's connection too (the board's session runs inside it).
    """

    def __init__(self, address: str, python: str, jump: Optional[paramiko.SSHClient]) -> None:
        super().__init__()
        self.edgeship_address = address  # the board's host:port (behind a jump, getpeername names the jump host)
        self.edgeship_python = python
        self.edgeship_jump = jump
        self.edgeship_sftp: Optional[bool] = None  # None: not tried yet

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.edgeship_jump is not None:
                self.edgeship_jump.close()


def _through_jump(target: SSHTarget, jump: paramiko.SSHClient) -> paramiko.Channel:
    """A direct-tcpip channel from the jump host to the board (what ``ssh -J`` asks for)."""
    assert target.jump is not None
    try:
        return _require_transport(jump).open_channel("direct-tcpip", (target.host, target.port), ("127.0.0.1", 0),
                                                     timeout=target.connect_timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise LinkError(f"The jump host {target.jump.address} could not reach {target.address} ({detail}). Check "
                        f"the board's address as the jump host sees it, and that the jump host allows TCP "
                        f"forwarding (AllowTcpForwarding).") from exc


def connect(target: SSHTarget) -> paramiko.SSHClient:
    """Open an authenticated SSH connection to ``target`` (through ``target.jump`` first, if set).

    See the module docstring for the errors; each hop's host key is checked the same way.
    """
    known_hosts = target.known_hosts.expanduser()
    if known_hosts != target.known_hosts:
        target = replace(target, known_hosts=known_hosts)
    key_files = [target.key_filename.expanduser()] if target.key_filename is not None else \
        [p.expanduser() for p in target.identity_files if p.expanduser().is_file()]
    if target.key_filename is not None and not key_files[0].is_file():
        raise AuthError(f"SSH key file {key_files[0]} for {target.login}@{target.address} does not exist.")

    known = _KnownHosts.read_all([known_hosts, *(p.expanduser() for p in target.extra_known_hosts)])
    jump = None
    if target.jump is not None:
        try:
            jump = connect(target.jump)
        except (HostKeyError, AuthError, LinkError) as exc:  # say which hop it was
            raise type(exc)(f"ProxyJump host {target.jump.address} (on the way to {target.address}): {exc}") from exc
    client = _Client(target.address, target.python, jump)  # no host keys loaded into paramiko: every decision is the policy's
    client.set_missing_host_key_policy(_KnownHostsPolicy(target, known_hosts, known))
    on_file = [e.key_type for e in known.for_host(known_hosts_name(target.host, target.port)) if e.key is not None]
    try:
        sock = _through_jump(target, jump) if jump is not None else None
        client.connect(
            transport_factory=_transport_preferring(on_file),
            hostname=target.host,
            port=target.port,
            username=target.login,
            key_filename=[str(k) for k in key_files] or None,
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            channel_timeout=target.connect_timeout,
            allow_agent=not target.identities_only,
            look_for_keys=not key_files,
            sock=sock,
        )
    except (HostKeyError, LinkError):
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:  # not raised with no keys loaded; mapped in case it is
        client.close()
        raise HostKeyError(f"The SSH host key of {target.address} was refused: {exc}. Check {known_hosts}.") from exc
    except InvalidHostKey as exc:
        client.close()
        raise HostKeyError(f"A line of {known_hosts} could not be read as a host key ({exc.exc}); fix or delete "
                           f"that line.") from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthError(_auth_message(target, key_files, exc)) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        # After the host key is verified, what fails is authentication (an unreadable key file, no
        # usable method); before that, or with the link gone, it is the link.
        auth_phase = _past_key_exchange(client)
        client.close()
        if auth_phase:
            raise AuthError(_auth_message(target, key_files, exc)) from exc
        raise LinkError(_link_message(target, exc)) from exc
    except BaseException:
        client.close()
        raise
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(target.keepalive)
        # Requests and replies are small messages that wait for each other; with Nagle's
        # algorithm one of them can sit out the peer's delayed ACK (~40 ms a round trip).
        with contextlib.suppress(AttributeError, OSError):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


# -- OpenSSH client config -----------------------------------------------------------------


def config_path() -> Optional[Path]:
    """The ssh_config file edgeship reads: ``$EDGESHIP_SSH_CONFIG`` (``none``: no file), else ``~/.ssh/config``."""
    value = os.environ.get(CONFIG_ENV, "").strip()
    if value.lower() == "none":
        return None
    return Path(value).expanduser() if value else Path.home() / ".ssh" / "config"


def _config_error(path: Path, message: str, line: Optional[str] = None) -> TransportError:
    where = str(path)
    if line is not None:
        with contextlib.suppress(OSError):
            for lineno, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if _config_words(raw) == _config_words(line):
                    where = f"{path}:{lineno}"
                    break
    return TransportError(f"{where}: {message}. Fix that line, or set {CONFIG_ENV}=none to connect without an ssh "
                          f"config.")


def _config_words(line: str) -> list[str]:
    """A config line's words, for finding it again: ``Port = x`` and ``port x`` are the same line."""
    return re.sub(r"\s*=\s*", " ", line.strip(), count=1).lower().split()


def _read_config(path: Optional[Path]) -> Optional[paramiko.SSHConfig]:
    if path is None or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            config = paramiko.SSHConfig()
            config.parse(f)
    except OSError as exc:
        raise TransportError(f"Cannot read the ssh config {path}: {exc.strerror or exc}. Fix its permissions, or set "
                             f"{CONFIG_ENV}=none to connect without an ssh config.") from exc
    except paramiko.ConfigParseError as exc:
        text = str(exc)
        line = text[len("Unparsable line "):] if text.startswith("Unparsable line ") else None
        raise _config_error(path, f"cannot parse {_printable(line) if line is not None else text}", line) from exc
    for block in getattr(config, "_config", []):
        if any(m.get("type") == "exec" for m in block.get("matches", ())):  # paramiko would run it (with invoke)
            raise _config_error(path, "'Match exec' is not supported (edgeship runs no local command from the ssh "
                                "config)", _first_line(path, "match", "exec"))
        if "include" in block.get("config", {}):
            _log.warning("%s: edgeship does not follow Include lines; Host entries in the included files are not "
                         "seen (copy them into this file, or point %s at a file that has them)", path, CONFIG_ENV)
    return config


def _first_line(path: Path, keyword: str, word: str) -> Optional[str]:
    """The first line of the config whose keyword is ``keyword`` and that holds ``word`` (for naming it)."""
    with contextlib.suppress(OSError):
        for raw in path.read_text(errors="replace").splitlines():
            words = _config_words(raw)
            if words[:1] == [keyword] and word in words:
                return raw
    return None


def is_host_alias(name: str) -> bool:
    """True when the ssh config has a ``Host`` pattern other than a bare ``*`` that matches ``name``."""
    config = _read_config(config_path())
    if config is None:
        return False
    for block in getattr(config, "_config", []):
        patterns = tuple(p for p in block.get("host", ()) if p != "*")
        if patterns and any(not p.startswith("!") for p in patterns) and _host_matches(patterns, name):
            return True
    return False


def _lookup(config: Optional[paramiko.SSHConfig], path: Optional[Path], host: str) -> dict[str, Any]:
    if config is None or path is None:
        return {}
    try:
        return dict(config.lookup(host))
    except (paramiko.ConfigParseError, paramiko.ssh_exception.CouldNotCanonicalize, ImportError) as exc:
        raise _config_error(path, f"the settings for {host!r} cannot be applied ({exc})") from exc


def _split_hop(hop: str) -> tuple[Optional[str], str, Optional[int]]:
    """``[user@]host[:port]`` (or ``ssh://`` of it, ``[v6]:port``) as user, host, port."""
    text = hop[len("ssh://"):] if hop.startswith("ssh://") else hop
    user, _, rest = text.rpartition("@")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host or (port_text and not port_text.isdigit()) or (port_text and not 0 < int(port_text) < 65536):
        raise ValueError(hop)
    return user or None, host, int(port_text) if port_text else None


def resolve_target(host: str, *, port: Optional[int] = None, user: Optional[str] = None,
                   key_filename: Optional[Path] = None, known_hosts: Optional[Path] = None, python: str = "python3",
                   accept_new_host: bool = False, connect_timeout: float = 10.0, _depth: int = 0,
                   _jump: Optional[SSHTarget] = None) -> SSHTarget:
    """The SSHTarget for ``host`` as OpenSSH's ``ssh`` would reach it with the user's ssh config.

    ``host`` may be a Host alias. Arguments that are not None win over the config (like options
    on ssh's command line). ``known_hosts`` given: that one file, for every hop; otherwise
    UserKnownHostsFile (default ``~/.ssh/known_hosts ~/.ssh/known_hosts2``; the first is written)
    plus GlobalKnownHostsFile (default ``/etc/ssh/ssh_known_hosts{,2}``, read only).
    """
    path = config_path()
    config = _read_config(path)
    opts = _lookup(config, path, host)
    where = f"{path} (Host {host})"
    if opts.get("proxycommand"):
        raise TransportError(f"{where}: ProxyCommand is not supported by edgeship (it runs no local command from "
                             f"the ssh config); use ProxyJump, or give the board's address directly.")
    if port is None and "port" in opts:
        text = str(opts["port"]).strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise _config_error(path or Path("ssh config"), f"Port {text!r} for {host!r} is not a port number "
                                f"(1-65535)", f"Port {text}")
        port = int(text)
    extra: tuple[Path, ...] = ()
    if known_hosts is not None:
        write = known_hosts
    else:
        files = [Path(p).expanduser() for p in str(opts.get("userknownhostsfile", "")).split()] or \
            [_default_known_hosts(), _default_known_hosts().with_name("known_hosts2")]
        glob = [Path(p).expanduser() for p in str(opts.get("globalknownhostsfile", "")).split()] or \
            [Path(p) for p in _GLOBAL_KNOWN_HOSTS]
        write, extra = files[0], tuple(files[1:] + glob)
    jump = _jump
    proxy = str(opts.get("proxyjump", "")).strip()
    if jump is None and proxy and proxy.lower() != "none":
        if _depth >= _MAX_JUMPS:
            raise TransportError(f"{where}: more than {_MAX_JUMPS} ProxyJump hops; is there a loop in the config?")
        for hop in proxy.split(","):
            try:
                hop_user, hop_host, hop_port = _split_hop(hop.strip())
            except ValueError:
                raise _config_error(path or Path("ssh config"), f"ProxyJump hop {_printable(hop)} is not "
                                    f"[user@]host[:port]", f"ProxyJump {proxy}") from None
            jump = resolve_target(hop_host, port=hop_port, user=hop_user, known_hosts=known_hosts,
                                  accept_new_host=accept_new_host, connect_timeout=connect_timeout,
                                  _depth=_depth + 1, _jump=jump)
    identities_only = str(opts.get("identitiesonly", "no")).lower() == "yes"
    return SSHTarget(host=str(opts.get("hostname") or host), port=port or 22, user=user or opts.get("user"),
                     key_filename=key_filename, known_hosts=write, python=python, accept_new_host=accept_new_host,
                     connect_timeout=connect_timeout, extra_known_hosts=extra,
                     identity_files=tuple(Path(p).expanduser() for p in opts.get("identityfile", ())),
                     identities_only=identities_only, jump=jump)


def _peer(client: paramiko.SSHClient) -> str:
    address = getattr(client, "edgeship_address", None)
    if address:
        return str(address)
    transport = client.get_transport()
    try:
        host, port = transport.getpeername()[:2]
        return f"{host}:{port}"
    except Exception:
        return "the board"


def _require_transport(client: paramiko.SSHClient) -> paramiko.Transport:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise LinkError(f"The SSH connection to {_peer(client)} is closed; connect again.")
    return transport


# -- exec stream ---------------------------------------------------------------------------


class SSHStream:
    """A byte stream to a remote command's stdin/stdout, with its stderr drained in the background.

    Two daemon threads serve the channel: one reads stdout ahead into a bounded buffer (so
    :meth:`read` can honour its timeout, and SSH flow control still applies when the caller
    is slow); the other drains stderr into a ring of its last ``STDERR_TAIL_BYTES`` bytes, so
    a command that floods stderr can never stall the channel window. ``read`` is meant for
    one consumer thread; ``write`` may run concurrently in another.
    """

    def __init__(self, channel: paramiko.Channel, command: str, peer: str,
                 owner: Optional[paramiko.SSHClient] = None, label: Optional[str] = None) -> None:
        self._chan = channel
        self._owner = owner  # closed with the stream: the connection was opened for it alone
        self.command = command
        self._label = label or command  # how messages name the command
        self.peer = peer
        self._cond = threading.Condition()
        self._stdout = bytearray()
        self._stdout_eof = False
        self._stdout_error: Optional[BaseException] = None
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._closed = False
        self._stdout_thread = threading.Thread(target=self._pump_stdout, name=f"ssh-stdout {peer}", daemon=True)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name=f"ssh-stderr {peer}", daemon=True)
        self._stdout_thread.start()
        self._stderr_thread.start()

    @classmethod
    def open(cls, client: paramiko.SSHClient, command: str, timeout: float = 30.0, owns_client: bool = False,
             label: Optional[str] = None) -> SSHStream:
        """Run ``command`` (through the remote login shell) on a new session channel.

        ``owns_client``: :meth:`close` also closes ``client`` (its transport thread and socket).
        ``label``: how error messages name the command (default: the command itself).
        """
        transport = _require_transport(client)
        peer = _peer(client)
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise LinkError(f"Cannot start `{_short(label or command)}` on {peer}: {exc or type(exc).__name__}.") from exc
        return cls(channel, command, peer, client if owns_client else None, label)

    # -- background readers --

    def _pump_stdout(self) -> None:
        try:
            while True:
                with self._cond:
                    while len(self._stdout) >= STDOUT_BUFFER_BYTES and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                data = self._chan.recv(65536)
                with self._cond:
                    if not data:
                        self._stdout_eof = True
                        return
                    self._stdout += data
                    self._cond.notify_all()
        except BaseException as exc:  # the transport died under us: report it as the end of the stream
            with self._cond:
                self._stdout_error = exc
                self._stdout_eof = True
        finally:
            with self._cond:
                self._stdout_eof = True
                self._cond.notify_all()

    def _drain_stderr(self) -> None:
        try:
            while True:
                data = self._chan.recv_stderr(65536)
                if not data:
                    return
                with self._stderr_lock:
                    self._stderr += data
                    excess = len(self._stderr) - STDERR_TAIL_BYTES
                    if excess > 0:
                        del self._stderr[:excess]
        except Exception:  # the channel or transport went away; the tail kept so far stays readable
            return

    # -- public API --

    def write(self, data: bytes) -> None:
        """Send all of ``data`` to the command's stdin (blocks while the SSH window is full)."""
        if self._closed:
            raise LinkError(f"The stream to `{_short(self._label)}` on {self.peer} was closed by this side.")
        view = memoryview(data).cast("B")
        try:
            # One position slides over all of data: each send() fills a whole SSH packet (paramiko
            # sends at most max_packet - 64 bytes per call). Finishing each _SEND_CHUNK piece
            # on its own would add a 64-byte packet after every full one, doubling the packets.
            pos = 0
            while pos < len(view):
                sent = self._chan.send(bytes(view[pos:pos + _SEND_CHUNK]))
                if sent == 0:
                    raise OSError(errno.EPIPE, "channel closed")
                pos += sent
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._ended_error("while writing to it") from exc

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        """Up to ``max_bytes`` of stdout; ``b""`` if nothing came within ``timeout`` seconds (None: wait).

        Raises LinkError once stdout has ended (the command exited or the link broke), naming the
        exit status and quoting the last stderr lines.
        """
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._closed:
            raise LinkError(f"The stream to `{_short(self._label)}` on {self.peer} was closed by this side.")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._stdout and not self._stdout_eof and not self._closed:
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return b""
                    self._cond.wait(remaining)
            if self._stdout:
                out = bytes(self._stdout[:max_bytes])
                del self._stdout[:max_bytes]
                self._cond.notify_all()
                return out
        if self._closed:
            raise LinkError(f"The stream to `{_short(self._label)}` on {self.peer} was closed by this side.")
        raise self._ended_error()

    def stderr_tail(self) -> bytes:
        """The last (up to ``STDERR_TAIL_BYTES``) bytes the command wrote to stderr so far."""
        with self._stderr_lock:
            return bytes(self._stderr)

    @property
    def exit_status(self) -> Optional[int]:
        """The command's exit status once it has arrived, else None (also for a signal death)."""
        if self._chan.exit_status_ready() and self._chan.exit_status >= 0:
            return int(self._chan.exit_status)
        return None

    def close(self) -> None:
        """Close the channel (the remote command sees EOF/hangup); idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(Exception):  # closing a channel whose transport is already gone
            self._chan.close()
        self._stdout_thread.join(timeout=_SETTLE_S)
        self._stderr_thread.join(timeout=_SETTLE_S)
        if self._owner is not None:
            with contextlib.suppress(Exception):
                self._owner.close()

    def __enter__(self) -> SSHStream:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # -- error text --

    def _ended_error(self, when: str = "") -> LinkError:
        """LinkError for a stream whose command ended or whose link broke, with status and stderr tail."""
        self._chan.status_event.wait(_SETTLE_S)  # the exit status follows EOF closely; never wait unbounded
        self._stderr_thread.join(timeout=_SETTLE_S)
        status = self.exit_status
        if status is not None:
            how = f"exited with status {status}"
        elif self._stdout_error is not None:
            how = f"lost its connection ({self._stdout_error or type(self._stdout_error).__name__})"
        else:
            how = "ended without an exit status (killed by a signal, or the connection dropped)"
        message = f"`{_short(self._label)}` on {self.peer} {how}" + (f" {when}" if when else "") + "."
        lines = self.stderr_tail().decode("utf-8", "replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        if lines:
            message += " Its last stderr lines:\n" + "\n".join(f"  {line}" for line in lines)
        return LinkError(message)


def open_exec(client: paramiko.SSHClient, command: str, owns_client: bool = False,
              label: Optional[str] = None) -> SSHStream:
    """Run ``command`` on the board and return a byte stream to its stdin/stdout (see :meth:`SSHStream.open`)."""
    return SSHStream.open(client, command, owns_client=owns_client, label=label)


def _short(command: str, limit: int = 80) -> str:
    """A command as one line of at most ``limit`` characters, for messages."""
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


# -- files ---------------------------------------------------------------------------------


def _open_sftp(client: paramiko.SSHClient) -> paramiko.SFTPClient:
    _require_transport(client)
    try:
        return client.open_sftp()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        if _link_down(client):
            raise LinkError(f"The SSH connection to {_peer(client)} broke while opening SFTP: {exc}.") from exc
        raise TransportError(f"{_peer(client)} offers no SFTP ({exc or type(exc).__name__}); install its SFTP server "
                             f"(openssh-sftp-server) or enable the sftp subsystem in sshd_config.") from exc


def _sftp_or_none(client: paramiko.SSHClient) -> Optional[paramiko.SFTPClient]:
    """An SFTP session, or None when the board offers none (then the exec-channel fallback places files).

    The answer is remembered on the client, so a board without SFTP is asked once per connection.
    """
    if getattr(client, "edgeship_sftp", None) is False:
        _require_transport(client)
        return None
    try:
        sftp = _open_sftp(client)
    except LinkError:
        raise
    except TransportError as exc:
        _log.info("%s; placing files through the exec channel instead", exc)
        with contextlib.suppress(AttributeError):
            client.edgeship_sftp = False  # type: ignore[attr-defined]
        return None
    with contextlib.suppress(AttributeError):
        client.edgeship_sftp = True  # type: ignore[attr-defined]
    return sftp


def _board_python(client: paramiko.SSHClient) -> str:
    return str(getattr(client, "edgeship_python", "python3"))


# The exec-channel fallbacks: small Python 3.9 programs for the board's interpreter, argv from
# the host (each word shell-quoted), one result line with a marker the host parses (a login
# script may print before it). They never take code from the board's side.
_PY_MKDIR = (
    "import os,stat,sys\n"
    "p=sys.argv[1]\n"
    "try:\n"
    " os.umask(0o077);os.makedirs(p,0o700,exist_ok=True);m=os.stat(p).st_mode\n"
    " m&0o022 and os.chmod(p,stat.S_IMODE(m)&~0o022)\n"
    "except OSError as e:sys.exit('edgeship-error: %s' % e)\n"
    "print('edgeship-ok')\n"
)
_PY_STAT = (
    "import hashlib,os,stat,sys\n"
    "p=sys.argv[1]\n"
    "try:st=os.stat(p)\n"
    "except FileNotFoundError:print('edgeship-stat missing');sys.exit(0)\n"
    "except OSError as e:sys.exit('edgeship-error: %s' % e)\n"
    "stat.S_ISREG(st.st_mode) or (print('edgeship-stat notfile'),sys.exit(0))\n"
    "h=hashlib.sha256()\n"
    "with open(p,'rb') as f:\n"
    " for b in iter(lambda:f.read(1<<20),b''):h.update(b)\n"
    "print('edgeship-stat file %o %s' % (stat.S_IMODE(st.st_mode),h.hexdigest()))\n"
)
_PY_PUT = (
    "import hashlib,os,sys\n"
    "t,d,m,n=sys.argv[1],sys.argv[2],int(sys.argv[3],8),int(sys.argv[4])\n"
    "h=hashlib.sha256();r=sys.stdin.buffer\n"
    "try:\n"
    " try:os.unlink(t)\n"
    " except FileNotFoundError:pass\n"
    " fd=os.open(t,os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o600);os.fchmod(fd,m)\n"
    " with os.fdopen(fd,'wb') as f:\n"
    "  while n>0:\n"
    "   b=r.read(min(n,1<<16))\n"
    "   if not b:os.unlink(t);sys.exit('edgeship-error: the upload ended early')\n"
    "   f.write(b);h.update(b);n-=len(b)\n"
    "  f.flush();os.fsync(f.fileno())\n"
    " os.replace(t,d)\n"
    "except OSError as e:sys.exit('edgeship-error: %s' % e)\n"
    "print('edgeship-put %s' % h.hexdigest())\n"
)
_RESULT_RE = re.compile(rb"(?m)^edgeship-(ok|put [0-9a-f]{64}|stat (?:missing|notfile|file [0-7]+ [0-9a-f]{64}))\s*$")
_ERROR_RE = re.compile(rb"(?m)^edgeship-error: (.*)$")


def _exec_python(client: paramiko.SSHClient, program: str, args: list[str], what: str,
                 stdin: Optional[bytes] = None, timeout: float = 60.0) -> str:
    """Run one of the fallback programs with the board's Python; its result line (without the marker)."""
    python = _board_python(client)
    command = " ".join([shlex.quote(python), "-c", shlex.quote(program), *map(shlex.quote, args)])
    peer = _peer(client)
    try:
        status, out = _run(client, command, timeout=timeout, stdin=stdin)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        if _link_down(client):
            raise LinkError(f"The SSH connection to {peer} broke while {what}.") from exc
        raise TransportError(f"Cannot run {python} on {peer} while {what}: {exc or type(exc).__name__}.") from exc
    results = _RESULT_RE.findall(out)
    if status == 0 and results:
        return bytes(results[-1]).decode("ascii")
    errors = _ERROR_RE.findall(out)
    reason = bytes(errors[-1]).decode("utf-8", "replace").strip() if errors else \
        (out.decode("utf-8", "replace").strip().splitlines() or [f"exit status {status}"])[-1]
    raise TransportError(f"Cannot finish {what} on {peer} without SFTP ({python} said: {_printable(reason, 200)}). "
                         f"Check that {python} runs on the board and the directory is writable, or enable SFTP.")


def _link_down(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is None or not transport.is_active()


def _sftp_makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    if directory in ("", "/", "."):
        return
    prefix = "/" if directory.startswith("/") else ""
    for part in [p for p in directory.split("/") if p]:
        prefix = posixpath.join(prefix, part) if prefix else part
        try:
            mode = sftp.stat(prefix).st_mode
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            sftp.mkdir(prefix, 0o700)
            continue
        if mode is not None and not stat.S_ISDIR(mode):
            raise OSError(errno.ENOTDIR, f"{prefix} exists and is not a directory")


def put_file(client: paramiko.SSHClient, local: Path, remote: str, mode: int = 0o600) -> None:
    """Upload ``local`` to ``remote`` atomically: write ``remote + ".tmp"``, chmod it, then posix-rename over it.

    A relative ``remote`` is relative to the login directory; missing parent directories are
    created 0700. The file gets ``mode`` before it appears under its name (not the server's
    umask default). A reader on the board sees either the old file or the complete new one.
    Without SFTP the board's Python writes it from the exec channel's stdin and reports the
    sha256 of what it wrote, which must be the local file's.
    """
    local = Path(local)
    if not local.is_file():
        raise TransportError(f"Cannot upload {local}: no such file.")
    peer = _peer(client)
    tmp = remote + ".tmp"
    sftp = _sftp_or_none(client)
    if sftp is None:
        data = local.read_bytes()
        if posixpath.dirname(remote):
            private_dir(client, posixpath.dirname(remote))
        result = _exec_python(client, _PY_PUT, [tmp, remote, f"{mode:o}", str(len(data))],
                              f"writing {remote}", stdin=data)
        if result != f"put {hashlib.sha256(data).hexdigest()}":
            raise TransportError(f"{remote} on {peer} does not have the sha256 of {local.name} after the upload; "
                                 f"connect again to place a fresh copy.")
        return
    try:
        _sftp_makedirs(sftp, posixpath.dirname(remote))
        sftp.put(str(local), tmp, confirm=True)
        sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, remote)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        if _link_down(client):
            raise LinkError(f"The SSH connection to {peer} broke while uploading {local.name} to {remote}.") from exc
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            sftp.remove(tmp)
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TransportError(f"Cannot write {remote} on {peer}: {reason}. Check that the directory is writable and "
                             f"the board has space.") from exc
    finally:
        sftp.close()


_SHA256_RE = re.compile(rb"(?m)^([0-9a-fA-F]{64})\s")  # any line: a login script may print first


def _run(client: paramiko.SSHClient, command: str, timeout: float = 60.0,
         stdin: Optional[bytes] = None) -> tuple[int, bytes]:
    """Run a short command with stderr merged into stdout; its exit status (-1 if none) and output.

    ``stdin``: bytes sent to the command's stdin, which is then closed.
    """
    transport = _require_transport(client)
    channel = transport.open_session(timeout=timeout)
    try:
        channel.set_combine_stderr(True)
        channel.settimeout(timeout)
        channel.exec_command(command)
        if stdin is not None:
            channel.sendall(stdin)
            channel.shutdown_write()
        out = bytearray()
        while True:
            data = channel.recv(65536)
            if not data:
                break
            out += data
        channel.status_event.wait(_SETTLE_S)
        return (channel.exit_status if channel.exit_status_ready() else -1), bytes(out)
    finally:
        channel.close()


@dataclass(frozen=True)
class RemoteFile:
    """A regular file on the board: its SHA-256 (hex) and permission bits."""

    sha256: str
    mode: int


def private_dir(client: paramiko.SSHClient, path: str) -> None:
    """Make sure directory ``path`` exists on the board and no one but its owner can write to it.

    Created 0700 if missing (parents too); an existing one that is group- or world-writable
    loses those bits. Files placed in it are then safe from other users of the board.
    """
    peer = _peer(client)
    sftp = _sftp_or_none(client)
    if sftp is None:
        _exec_python(client, _PY_MKDIR, [path], f"preparing the directory {path}")
        return
    try:
        _sftp_makedirs(sftp, path)
        mode = sftp.stat(path).st_mode
        if mode is not None and mode & 0o022:
            sftp.chmod(path, stat.S_IMODE(mode) & ~0o022)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        if _link_down(client):
            raise LinkError(f"The SSH connection to {peer} broke while preparing {path}.") from exc
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TransportError(f"Cannot prepare the directory {path} on {peer}: {reason}. Check its owner and "
                             f"permissions on the board.") from exc
    finally:
        sftp.close()


def remote_sha256(client: paramiko.SSHClient, path: str) -> Optional[str]:
    """The hex SHA-256 of a file on the board, or None if it does not exist (see :func:`remote_file`)."""
    found = remote_file(client, path)
    return found.sha256 if found is not None else None


def remote_file(client: paramiko.SSHClient, path: str) -> Optional[RemoteFile]:
    """The SHA-256 and mode of a regular file on the board, or None if it does not exist.

    Hashes on the board with ``sha256sum`` (no file transfer); if the board lacks it, the file
    is read back over SFTP and hashed here. Without SFTP the board's Python hashes it.
    """
    peer = _peer(client)
    sftp = _sftp_or_none(client)
    if sftp is None:
        result = _exec_python(client, _PY_STAT, [path], f"hashing {path}").split()
        if result[1] == "missing":
            return None
        if result[1] == "notfile":
            raise TransportError(f"{path} on {peer} is not a regular file.")
        return RemoteFile(result[3], int(result[2], 8))
    try:
        try:
            mode = sftp.stat(path).st_mode
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if mode is not None and not stat.S_ISREG(mode):
            raise TransportError(f"{path} on {peer} is not a regular file.")
        try:
            status, out = _run(client, f"sha256sum -- {shlex.quote(path)}")
        except (OSError, paramiko.SSHException, EOFError):
            status, out = -1, b""
        match = _SHA256_RE.search(out)
        bits = stat.S_IMODE(mode) if mode is not None else 0
        if status == 0 and match:
            return RemoteFile(match.group(1).decode("ascii").lower(), bits)
        digest = hashlib.sha256()
        with sftp.open(path, "rb") as f:
            f.prefetch()
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                digest.update(block)
        return RemoteFile(digest.hexdigest(), bits)
    except TransportError:
        raise
    except (OSError, paramiko.SSHException, EOFError) as exc:
        if _link_down(client):
            raise LinkError(f"The SSH connection to {peer} broke while hashing {path}.") from exc
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TransportError(f"Cannot read {path} on {peer}: {reason}.") from exc
    finally:
        sftp.close()


def run_command(client: paramiko.SSHClient, command: str, timeout: float = 60.0,
                label: Optional[str] = None) -> tuple[int, str]:
    """Run a short command on the board (stderr merged into stdout): its exit status (-1: none) and output.

    ``timeout`` bounds each wait for output, so a command that keeps printing may run longer but
    a silent, stuck one fails with LinkError. ``label``: how messages name the command.
    """
    peer = _peer(client)
    shown = _short(label or command)
    try:
        status, out = _run(client, command, timeout)
    except socket.timeout as exc:
        raise LinkError(f"`{shown}` on {peer} printed nothing for {timeout:g} s; stopped waiting for it.") from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise LinkError(f"Cannot run `{shown}` on {peer}: {exc or type(exc).__name__}.") from exc
    return status, out.decode("utf-8", "replace")


# -- the agent on the board ----------------------------------------------------------------

AGENT_DIR = ".edgeship"  # on the board, relative to the login's home: the agent zipapps, the store, the venv

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


def place_agent(client: paramiko.SSHClient, *, check_only: bool = False,
                placing: Optional[Callable[[int], None]] = None) -> tuple[str, str, bool]:
    """Make sure the board holds this host's agent zipapp: (its path on the board, its sha256, whether it was missing).

    Placed (0600, in a private AGENT_DIR) when missing, different, or writable by others;
    ``check_only`` only says whether it would be. The board re-checks the hash before it runs it.
    ``placing`` hears the zipapp's size just before it is sent.
    """
    import tempfile

    from edgeship.sdk.agentbuild import build_zipapp

    agent = build_zipapp()
    sha = hashlib.sha256(agent).hexdigest()
    remote = f"{AGENT_DIR}/agent-{sha[:16]}.pyz"
    if not check_only:
        private_dir(client, AGENT_DIR)
    on_board = remote_file(client, remote)  # None when missing (AGENT_DIR too)
    missing = on_board is None or on_board.sha256 != sha or bool(on_board.mode & 0o022)
    if missing and not check_only:
        if placing is not None:
            placing(len(agent))
        with tempfile.NamedTemporaryFile(suffix=".pyz") as f:
            f.write(agent)
            f.flush()
            put_file(client, Path(f.name), remote, mode=0o600)
    return remote, sha, missing


def _remote_path(store: Optional[Path]) -> str:
    """The board's store directory for its shell: ~/ kept for the remote shell to expand, the rest quoted."""
    text = str(store) if store is not None else f"{AGENT_DIR}/store"
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:])
    return shlex.quote(text)


class SSHTransport:
    """An SSH board as a Transport: ``open()`` connects, places the agent and runs it on an exec channel.

    ``host`` may be a Host alias of the ssh config, which fills in what is left None here
    (HostName, User, Port, IdentityFile, ProxyJump, known_hosts files); nothing from it reaches
    the remote command line. ``python`` is the board's interpreter (checked by the caller: an
    absolute path or a plain command name), ``store`` the agent's store on the board (default
    AGENT_DIR/store). ``accept_new_host``: an unknown host key is recorded instead of refused.
    ``phase`` hears "connecting" and "placing agent" (sdk.progress) as ``open()`` goes through them.
    """

    bytes_per_second: Optional[float] = None  # SSH: no line rate to pace

    def __init__(self, host: str, *, port: Optional[int] = None, user: Optional[str] = None,
                 key: Optional[Path] = None, known_hosts: Optional[Path] = None, python: str = "python3",
                 store: Optional[Path] = None, accept_new_host: bool = False, name: Optional[str] = None,
                 phase: Optional[OnPhase] = None) -> None:
        self.name = name or host
        self.phase = phase
        self.host = host
        self.port = port
        self.user = user
        self.key = key
        self.known_hosts = known_hosts
        self.python = python
        self.store = store
        self.accept_new_host = accept_new_host

    def __repr__(self) -> str:
        return f"SSHTransport({self.name!r}, host={self.host!r}, port={self.port})"

    def connect(self) -> paramiko.SSHClient:
        """An authenticated connection (paramiko client), host key checked; the caller closes it."""
        return connect(resolve_target(self.host, port=self.port, user=self.user, key_filename=self.key,
                                      known_hosts=self.known_hosts, python=self.python,
                                      accept_new_host=self.accept_new_host))

    def open(self) -> SSHStream:
        """Connect, place the agent if the board's copy differs, and run it (hash re-checked on the board)."""
        say = self.phase or (lambda _phase: None)
        where = f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"
        label = board_label(self.name)
        say(Phase("connecting", self.name, f"connecting to {label}" + ("" if label == where else f" (ssh {where})")))
        client = self.connect()
        try:
            say(Phase("placing agent", self.name, f"checking the agent on {label}"))
            remote, sha, _ = place_agent(client, placing=lambda size: say(Phase(
                "placing agent", self.name, f"placing the agent on {label} ({size / 1024:.1f} KiB over SFTP)")))
            store = _remote_path(self.store)
            python = shlex.quote(self.python)
            command = " ".join([python, "-c", shlex.quote(_VERIFY_AND_RUN), shlex.quote(remote), sha,
                                "--stdio", "--store", store])
            label = f"{python} {shlex.quote(remote)} --stdio --store {store}"  # what messages show
            return open_exec(client, command, owns_client=True, label=label)
        except BaseException:
            client.close()
            raise
