"""SSH to a board: host-key checking like OpenSSH, an exec byte stream, atomic SFTP upload.

This is the only module of edgeship that imports paramiko; its exceptions are translated
here, once, into :mod:`sdk.errors` (``raise ... from exc`` keeps the cause for ``--debug``):

    unknown host key (not accepted)     HostKeyError  names the fingerprint, says --accept-new-host
    changed host key                    HostKeyError  always refused; says how to remove the stale entry
    credentials refused                 AuthError     names user, host and the key file tried
    refused / timed out / handshake     LinkError     names host:port
    exec stream ended or broke          LinkError     carries the exit status and the stderr tail

Host keys follow OpenSSH's ``StrictHostKeyChecking``: the default is ``yes`` (an unknown
host is refused, paramiko's RejectPolicy semantics); ``accept_new_host`` is ``accept-new``
(an unknown host's key is appended to known_hosts). A *changed* key is refused in both
modes. Entries for a port other than 22 are looked up and written as ``[host]:port``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import getpass
import hashlib
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
from typing import Optional

import paramiko

from sdk.errors import AuthError, HostKeyError, LinkError, TransportError

__all__ = [
    "SSHStream",
    "SSHTarget",
    "connect",
    "fingerprint",
    "known_hosts_name",
    "open_exec",
    "put_file",
    "remote_sha256",
]

STDERR_TAIL_BYTES = 64 * 1024  # how much of a remote command's stderr is kept (the last bytes)
STDOUT_BUFFER_BYTES = 1024 * 1024  # stdout read ahead of the caller before back-pressure applies
STDERR_TAIL_LINES = 10  # stderr lines quoted in an error message
_SEND_CHUNK = 32 * 1024
_SETTLE_S = 2.0  # after EOF: how long to wait for the exit status and the last stderr bytes


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

    @property
    def address(self) -> str:
        """``host:port`` as messages print it."""
        return f"{self.host}:{self.port}"

    @property
    def login(self) -> str:
        return self.user or getpass.getuser()


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


def _read_known_hosts(path: Path) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if path.is_file():
        try:
            keys.load(str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise HostKeyError(f"Cannot read the known_hosts file {path}: {exc}. Fix its permissions or point "
                               f"edgeship at another known_hosts file.") from exc
    return keys


def _unknown_host_message(target: SSHTarget, key: paramiko.PKey) -> str:
    return (f"The SSH host key of {target.address} is not known: the board presents {_describe(key)}, and "
            f"{target.known_hosts} has no entry for {known_hosts_name(target.host, target.port)}. Check that "
            f"fingerprint on the board itself (ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_stem(key)}_key.pub), "
            f"then pass --accept-new-host to trust it; it will be added to {target.known_hosts}.")


def _changed_host_message(target: SSHTarget, offered: paramiko.PKey, known: Optional[paramiko.PKey]) -> str:
    name = known_hosts_name(target.host, target.port)
    was = _describe(known) if known is not None else "a different key"
    return (f"The SSH host key of {target.address} has CHANGED: {target.known_hosts} has {was} for {name}, "
            f"but the board now presents {_describe(offered)}. Someone could be intercepting the connection, "
            f"or the board was reinstalled. edgeship refuses a changed key even with --accept-new-host. If you "
            f"know why it changed, remove the stale entry with: ssh-keygen -R {shlex.quote(name)} -f "
            f"{shlex.quote(str(target.known_hosts))} and connect again with --accept-new-host.")


def _key_file_stem(key: paramiko.PKey) -> str:
    name = key.get_name()
    if name == "ssh-ed25519":
        return "ed25519"
    if name.startswith("ecdsa-"):
        return "ecdsa"
    return "rsa"


def _append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append ``name keytype base64`` to known_hosts, creating it (and a 0700 parent) if needed."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
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
    """Decides about a host paramiko found no entry for: refuse, or accept-new and record it.

    paramiko calls this only when known_hosts has no key for the name; the file is read again
    here so that an entry written meanwhile (another edgeship, an ssh) still counts, and any
    key on file for the host makes this a *changed* key, which is always refused.
    """

    def __init__(self, target: SSHTarget, known_hosts: Path) -> None:
        self.target = target
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        on_file = _read_known_hosts(self.known_hosts).lookup(hostname)
        if on_file:
            same = on_file.get(key.get_name())
            if same is not None and same == key:
                return  # written by someone else since we loaded the file
            known = same if same is not None else next(iter(on_file.values()))
            raise HostKeyError(_changed_host_message(self.target, key, known))
        if not self.target.accept_new_host:
            raise HostKeyError(_unknown_host_message(self.target, key))
        try:
            _append_known_host(self.known_hosts, hostname, key)
        except OSError as exc:
            raise HostKeyError(f"Cannot record the host key of {self.target.address} in {self.known_hosts}: "
                               f"{exc.strerror or exc}. Fix the permissions of that file or its directory.") from exc
        client.get_host_keys().add(hostname, key.get_name(), key)


# -- connecting ----------------------------------------------------------------------------


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


def _auth_message(target: SSHTarget, key_file: Optional[Path], exc: BaseException) -> str:
    tried = f"the key file {key_file} and any ssh-agent keys" if key_file else \
        "any ssh-agent keys and ~/.ssh/id_rsa, id_ecdsa, id_ed25519"
    if isinstance(exc, paramiko.PasswordRequiredException):
        hint = f"The key file is passphrase-protected: load it into the agent first (ssh-add {key_file})."
    else:
        pub = f"{key_file}.pub" if key_file else "~/.ssh/id_ed25519.pub"
        hint = (f"Install the matching public key on the board (ssh-copy-id -i {shlex.quote(pub)} -p {target.port} "
                f"{target.login}@{target.host}) or pass the right key file.")
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


def connect(target: SSHTarget) -> paramiko.SSHClient:
    """Open an authenticated SSH connection to ``target``; see the module docstring for the errors."""
    known_hosts = target.known_hosts.expanduser()
    if known_hosts != target.known_hosts:
        target = replace(target, known_hosts=known_hosts)
    key_file = target.key_filename.expanduser() if target.key_filename is not None else None
    if key_file is not None and not key_file.is_file():
        raise AuthError(f"SSH key file {key_file} for {target.login}@{target.address} does not exist.")

    client = paramiko.SSHClient()
    host_keys = client.get_host_keys()
    for name, keys in _read_known_hosts(known_hosts).items():
        for key_type, key in keys.items():
            host_keys.add(name, key_type, key)
    client.set_missing_host_key_policy(_KnownHostsPolicy(target, known_hosts))
    try:
        client.connect(
            hostname=target.host,
            port=target.port,
            username=target.login,
            key_filename=str(key_file) if key_file is not None else None,
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            channel_timeout=target.connect_timeout,
            allow_agent=True,
            look_for_keys=key_file is None,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(_changed_host_message(target, exc.key, exc.expected_key)) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthError(_auth_message(target, key_file, exc)) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        # After the host key is verified, what fails is authentication (an unreadable key file, no
        # usable method); before that, or with the link gone, it is the link.
        auth_phase = _past_key_exchange(client)
        client.close()
        if auth_phase:
            raise AuthError(_auth_message(target, key_file, exc)) from exc
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


def _peer(client: paramiko.SSHClient) -> str:
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

    def __init__(self, channel: paramiko.Channel, command: str, peer: str) -> None:
        self._chan = channel
        self.command = command
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
    def open(cls, client: paramiko.SSHClient, command: str, timeout: float = 30.0) -> SSHStream:
        """Run ``command`` (through the remote login shell) on a new session channel."""
        transport = _require_transport(client)
        peer = _peer(client)
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise LinkError(f"Cannot start `{_short(command)}` on {peer}: {exc or type(exc).__name__}.") from exc
        return cls(channel, command, peer)

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
            raise LinkError(f"The stream to `{_short(self.command)}` on {self.peer} was closed by this side.")
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
            raise LinkError(f"The stream to `{_short(self.command)}` on {self.peer} was closed by this side.")
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
            raise LinkError(f"The stream to `{_short(self.command)}` on {self.peer} was closed by this side.")
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
        message = f"`{_short(self.command)}` on {self.peer} {how}" + (f" {when}" if when else "") + "."
        lines = self.stderr_tail().decode("utf-8", "replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        if lines:
            message += " Its last stderr lines:\n" + "\n".join(f"  {line}" for line in lines)
        return LinkError(message)


def open_exec(client: paramiko.SSHClient, command: str) -> SSHStream:
    """Run ``command`` on the board and return a byte stream to its stdin/stdout."""
    return SSHStream.open(client, command)


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
            sftp.mkdir(prefix, 0o755)
            continue
        if mode is not None and not stat.S_ISDIR(mode):
            raise OSError(errno.ENOTDIR, f"{prefix} exists and is not a directory")


def put_file(client: paramiko.SSHClient, local: Path, remote: str) -> None:
    """Upload ``local`` to ``remote`` atomically: write ``remote + ".tmp"``, then posix-rename over it.

    A relative ``remote`` is relative to the login directory; missing parent directories are
    created. A reader on the board sees either the old file or the complete new one.
    """
    local = Path(local)
    if not local.is_file():
        raise TransportError(f"Cannot upload {local}: no such file.")
    peer = _peer(client)
    tmp = remote + ".tmp"
    sftp = _open_sftp(client)
    try:
        _sftp_makedirs(sftp, posixpath.dirname(remote))
        sftp.put(str(local), tmp, confirm=True)
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


def _run(client: paramiko.SSHClient, command: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """Run a short command with stderr merged into stdout; its exit status (-1 if none) and output."""
    transport = _require_transport(client)
    channel = transport.open_session(timeout=timeout)
    try:
        channel.set_combine_stderr(True)
        channel.settimeout(timeout)
        channel.exec_command(command)
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


def remote_sha256(client: paramiko.SSHClient, path: str) -> Optional[str]:
    """The hex SHA-256 of a file on the board, or None if it does not exist.

    Hashes on the board with ``sha256sum`` (no file transfer); if the board lacks it, the file
    is read back over SFTP and hashed here.
    """
    peer = _peer(client)
    sftp = _open_sftp(client)
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
        if status == 0 and match:
            return match.group(1).decode("ascii").lower()
        digest = hashlib.sha256()
        with sftp.open(path, "rb") as f:
            f.prefetch()
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                digest.update(block)
        return digest.hexdigest()
    except TransportError:
        raise
    except (OSError, paramiko.SSHException, EOFError) as exc:
        if _link_down(client):
            raise LinkError(f"The SSH connection to {peer} broke while hashing {path}.") from exc
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TransportError(f"Cannot read {path} on {peer}: {reason}.") from exc
    finally:
        sftp.close()
