"""A real OpenSSH server on loopback for the emulated Pi and the tests: ``/usr/sbin/sshd -D -e`` on 127.0.0.1, a free port, throwaway keys.

Usage (directly or from a fixture)::

    with Sshd(tmp_path) as server:
        target = SSHTarget("127.0.0.1", server.port, key_filename=server.user_key_path, ...)

Everything lives in ``workdir``: the config, a per-run ed25519 host key, a per-run user key
pair authorised through ``authorized_keys``, the pid file and sshd's log (``sshd.log``,
its stderr; read it with :meth:`Sshd.log_text` when a test fails). sshd logs to a file,
not a pipe, so a chatty server can never block on a full pipe.

Readiness is a bounded poll of the port that also requires the SSH banner, so a test never
talks to a half-started server, and an sshd that dies on start-up fails fast with its log.
``rotate_host_key()`` replaces the host key and restarts on the same port, which is how a
test meets a *changed* host key. ``Sshd(workdir, sftp=False)`` leaves out the ``Subsystem sftp``
line, like a dropbear board without sftp-server: an SFTP request is refused.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"


class SshdError(RuntimeError):
    """The test sshd could not be started."""


def free_port() -> int:
    """A port that was free a moment ago (sshd retries if it is taken in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def keygen(private: Path, comment: str = "edgeship-test") -> Path:
    """Generate an unencrypted ed25519 key pair; return the private key path (public is ``.pub``)."""
    for p in (private, private.with_name(private.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
                   check=True, capture_output=True)
    return private


def fingerprint(pub_path: Path) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key file."""
    blob = base64.b64decode(pub_path.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class Sshd:
    """A real sshd bound to 127.0.0.1; a context manager that always stops the server."""

    def __init__(self, workdir: Path, start_timeout: float = 10.0, sftp: bool = True) -> None:
        self.workdir = Path(workdir)
        self.sftp = sftp
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.user = getpass.getuser()
        self.config_path = self.workdir / "sshd_config"
        self.pid_path = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        self.host_key_private = self.workdir / "host_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.user_key_path = self.workdir / "user_ed25519"
        self.port = 0
        self._proc: Optional[subprocess.Popen[bytes]] = None
        if not SSHD.exists():
            raise SshdError(f"{SSHD} is missing; `make test` installs openssh-server (apt-get install openssh-server)")
        keygen(self.host_key_private, "edgeship-test-host")
        keygen(self.user_key_path, "edgeship-test-user")
        self.authorized_keys.write_text(self.user_key_path.with_name(self.user_key_path.name + ".pub").read_text())
        self.authorized_keys.chmod(0o600)

    # -- what tests read ---------------------------------------------------------------

    @property
    def host_key_path(self) -> Path:
        """The server's public host key."""
        return self.host_key_private.with_name(self.host_key_private.name + ".pub")

    @property
    def user_pub_path(self) -> Path:
        return self.user_key_path.with_name(self.user_key_path.name + ".pub")

    def host_key_fingerprint(self) -> str:
        return fingerprint(self.host_key_path)

    def known_hosts_line(self) -> str:
        """``[127.0.0.1]:PORT ssh-ed25519 AAAA...`` for a known_hosts file (no newline)."""
        keytype, b64 = self.host_key_path.read_text().split()[:2]
        return f"[{HOST}]:{self.port} {keytype} {b64}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def make_key(self, name: str) -> Path:
        """A fresh key pair in workdir that is NOT authorised (for wrong-key tests); returns the private key."""
        return keygen(self.workdir / name, f"edgeship-test-{name}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life cycle --------------------------------------------------------------------

    def _write_config(self) -> None:
        self.config_path.write_text("\n".join([
            f"ListenAddress {HOST}",
            f"Port {self.port}",
            f"HostKey {self.host_key_private}",
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "LogLevel VERBOSE",
            *(["Subsystem sftp internal-sftp"] if self.sftp else []),
            "UseDNS no",
            "PrintMotd no",
            "",
        ]))

    def start(self) -> Sshd:
        """Start sshd (on a new free port unless one is already chosen) and wait until it speaks SSH."""
        if self.running:
            return self
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        keep_port = self.port != 0
        last_log = ""
        for _attempt in range(3):
            if not keep_port:
                self.port = free_port()
            self._write_config()
            self.pid_path.unlink(missing_ok=True)
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config_path)],
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_ready():
                return self
            last_log = self.log_text()
            self._stop_process()
            if keep_port and "Address already in use" not in last_log:
                break
        raise SshdError(f"sshd did not start on {HOST}:{self.port}; its log:\n{last_log}")

    def _wait_ready(self) -> bool:
        """Poll until the port answers with an SSH banner; False if sshd exits or time runs out."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    if s.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(delay)  # back-off between polls, bounded by the deadline above
            delay = min(delay * 2, 0.1)
        return False

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        self._stop_process()

    def restart(self) -> Sshd:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def rotate_host_key(self) -> Path:
        """Replace the host key with a new one and restart on the same port; returns the new public key path."""
        self.stop()
        keygen(self.host_key_private, "edgeship-test-host-rotated")
        self.start()
        return self.host_key_path

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
