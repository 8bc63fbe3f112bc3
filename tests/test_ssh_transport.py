"""sdk.transport.ssh against a real OpenSSH sshd (tests/sshd.py): host keys, auth, link errors, streams, files.

No mocks: every test talks to its own /usr/sbin/sshd on 127.0.0.1 (stopped when the test
ends), through paramiko, with throwaway keys. Blocking operations run in threads joined
with a timeout, so a deadlock fails the test instead of hanging the run.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko
import pytest

from edgeship.sdk.emulate.sshd import Sshd, free_port, keygen
from edgeship.sdk.errors import AuthError, HostKeyError, LinkError
from edgeship.sdk.transport.ssh import SSHTarget, connect, open_exec, put_file, remote_sha256
from tests.conftest import in_thread

MB = 1024 * 1024


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with Sshd(tmp_path / "sshd") as server:
        yield server


def target_for(server: Sshd, tmp_path: Path, **changes: Any) -> SSHTarget:
    fields: dict[str, Any] = {"user": server.user, "key_filename": server.user_key_path,
                              "known_hosts": tmp_path / "dotssh" / "known_hosts", "connect_timeout": 5.0}
    fields.update(changes)
    return SSHTarget("127.0.0.1", server.port, **fields)


def trust(server: Sshd, target: SSHTarget) -> None:
    target.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    target.known_hosts.write_text(server.known_hosts_line() + "\n")


@pytest.fixture
def client(sshd: Sshd, tmp_path: Path) -> Iterator[paramiko.SSHClient]:
    target = target_for(sshd, tmp_path)
    trust(sshd, target)
    c = connect(target)
    try:
        yield c
    finally:
        c.close()


# -- host keys -----------------------------------------------------------------------------


def test_unknown_host_is_refused_by_default_and_nothing_is_written(sshd: Sshd, tmp_path: Path) -> None:
    target = target_for(sshd, tmp_path)
    with pytest.raises(HostKeyError) as info:
        connect(target)
    message = str(info.value)
    assert "--accept-new-host" in message
    assert sshd.host_key_fingerprint() in message
    assert f"127.0.0.1:{sshd.port}" in message
    assert not target.known_hosts.exists() and not target.known_hosts.parent.exists()


def test_accept_new_host_records_the_key_and_then_strict_checking_passes(sshd: Sshd, tmp_path: Path) -> None:
    target = target_for(sshd, tmp_path, accept_new_host=True)
    connect(target).close()
    assert target.known_hosts.read_text().splitlines() == [sshd.known_hosts_line()]
    assert target.known_hosts.parent.stat().st_mode & 0o777 == 0o700

    strict = target_for(sshd, tmp_path)  # accept_new_host=False
    c = connect(strict)
    try:
        with open_exec(c, "echo ok") as s:
            assert s.read(100, timeout=10) == b"ok\n"
    finally:
        c.close()
    assert target.known_hosts.read_text().splitlines() == [sshd.known_hosts_line()]  # not appended twice


def test_accept_new_host_appends_after_existing_entries(sshd: Sshd, tmp_path: Path) -> None:
    target = target_for(sshd, tmp_path, accept_new_host=True)
    target.known_hosts.parent.mkdir()
    other = "[10.0.0.9]:2200 " + " ".join(Path(str(keygen(tmp_path / "other")) + ".pub").read_text().split()[:2])
    target.known_hosts.write_text("# mine\n" + other)  # no trailing newline
    connect(target).close()
    assert target.known_hosts.read_text().splitlines() == ["# mine", other, sshd.known_hosts_line()]


def test_hashed_known_hosts_entries_are_honoured(sshd: Sshd, tmp_path: Path) -> None:
    """Debian's ssh writes hashed names (HashKnownHosts yes); such an entry must count as known."""
    target = target_for(sshd, tmp_path)
    trust(sshd, target)
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(target.known_hosts)], check=True, capture_output=True)
    assert target.known_hosts.read_text().startswith("|1|")
    connect(target).close()
    sshd.rotate_host_key()
    with pytest.raises(HostKeyError, match=r"(?i)changed"):
        connect(replace(target, accept_new_host=True))


def test_changed_host_key_is_refused_even_with_accept_new_host(sshd: Sshd, tmp_path: Path) -> None:
    target = target_for(sshd, tmp_path, accept_new_host=True)
    trust(sshd, target)
    old_fp = sshd.host_key_fingerprint()
    sshd.rotate_host_key()
    new_fp = sshd.host_key_fingerprint()
    assert new_fp != old_fp

    with pytest.raises(HostKeyError) as info:
        connect(target)
    message = str(info.value)
    assert "changed" in message.lower()
    assert old_fp in message and new_fp in message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f" in message
    assert str(target.known_hosts) in message
    assert target.known_hosts.read_text().splitlines()[0].startswith(f"[127.0.0.1]:{sshd.port} ")
    assert len(target.known_hosts.read_text().splitlines()) == 1  # the stale entry is not "fixed" behind our back


def test_known_key_of_another_type_counts_as_changed(sshd: Sshd, tmp_path: Path) -> None:
    """known_hosts has only an ECDSA key for the host, the server offers ed25519: refused, not accepted as new."""
    target = target_for(sshd, tmp_path, accept_new_host=True)
    target.known_hosts.parent.mkdir()
    ecdsa = tmp_path / "ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True, capture_output=True)
    keytype, b64 = Path(str(ecdsa) + ".pub").read_text().split()[:2]
    target.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {keytype} {b64}\n")
    with pytest.raises(HostKeyError, match=r"(?i)changed"):
        connect(target)


# -- auth and link -------------------------------------------------------------------------


def test_wrong_user_key_is_an_auth_error_naming_user_host_and_key(sshd: Sshd, tmp_path: Path) -> None:
    wrong = sshd.make_key("not_authorized")
    target = target_for(sshd, tmp_path, key_filename=wrong)
    trust(sshd, target)
    with pytest.raises(AuthError) as info:
        connect(target)
    message = str(info.value)
    assert repr(sshd.user) in message
    assert f"127.0.0.1:{sshd.port}" in message
    assert str(wrong) in message


def test_missing_key_file_is_an_auth_error(sshd: Sshd, tmp_path: Path) -> None:
    target = target_for(sshd, tmp_path, key_filename=tmp_path / "nope")
    trust(sshd, target)
    with pytest.raises(AuthError, match="does not exist"):
        connect(target)


def test_closed_port_is_a_link_error(tmp_path: Path) -> None:
    port = free_port()
    target = SSHTarget("127.0.0.1", port, known_hosts=tmp_path / "known_hosts", connect_timeout=5)
    with pytest.raises(LinkError, match=f"127.0.0.1:{port}"):
        connect(target)


def test_a_server_that_is_not_ssh_is_a_link_error(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        target = SSHTarget("127.0.0.1", port, known_hosts=tmp_path / "known_hosts", connect_timeout=3)
        with pytest.raises(LinkError, match=f"127.0.0.1:{port}"):
            in_thread(lambda: connect(target), timeout=15)


# -- exec streams --------------------------------------------------------------------------


def test_cat_echoes_5_mb_byte_exact(client: paramiko.SSHClient) -> None:
    payload = os.urandom(5 * MB)
    stream = open_exec(client, "cat")
    received = bytearray()

    def writer() -> None:
        view = memoryview(payload)
        step = 3 * 1024 + 17  # odd chunk sizes: frames must not matter
        for start in range(0, len(view), step):
            stream.write(bytes(view[start:start + step]))

    def reader() -> None:
        while len(received) < len(payload):
            received.extend(stream.read(64 * 1024, timeout=20))

    try:
        w = threading.Thread(target=writer, daemon=True)
        w.start()
        in_thread(reader, timeout=40)
        w.join(5)
        assert not w.is_alive()
    finally:
        stream.close()
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


FLOOD = """
import sys
out = bytes(range(256)) * 256          # 64 KiB
err = b"".join(b"err line %06d\\n" % i for i in range(4681))[:65536]
for i in range(128):                   # 8 MiB on each stream, interleaved
    sys.stdout.buffer.write(out)
    sys.stderr.buffer.write(err)
sys.stdout.flush()
sys.stderr.buffer.write(b"FINAL STDERR LINE\\n")
sys.stderr.flush()
sys.exit(3)
"""


def test_8_mb_on_stdout_and_stderr_does_not_deadlock(client: paramiko.SSHClient) -> None:
    stream = open_exec(client, f"{shlex.quote(sys.executable)} -c {shlex.quote(FLOOD)}")
    got = bytearray()

    def drain() -> LinkError:
        while True:
            try:
                got.extend(stream.read(256 * 1024, timeout=20))
            except LinkError as end:
                return end

    try:
        end = in_thread(drain, timeout=45)
    finally:
        stream.close()
    assert len(got) == 8 * MB
    assert bytes(got) == bytes(range(256)) * 256 * 128
    message = str(end)
    assert "status 3" in message and "FINAL STDERR LINE" in message
    tail = stream.stderr_tail()
    assert tail.endswith(b"FINAL STDERR LINE\n")
    assert 0 < len(tail) <= 64 * 1024


def test_read_times_out_with_empty_bytes_and_the_exit_status_ends_the_stream(client: paramiko.SSHClient) -> None:
    with open_exec(client, "read line; echo got:$line; echo bye >&2; exit 7") as stream:
        t0 = time.monotonic()
        assert stream.read(100, timeout=0.3) == b""
        assert 0.25 <= time.monotonic() - t0 < 5
        stream.write(b"hello\n")
        assert stream.read(100, timeout=10) == b"got:hello\n"
        with pytest.raises(LinkError, match="status 7") as info:
            stream.read(100, timeout=10)
        assert "bye" in str(info.value)
        assert stream.exit_status == 7


def test_read_and_write_after_close_raise_link_error(client: paramiko.SSHClient) -> None:
    stream = open_exec(client, "cat")
    stream.write(b"ping")
    assert stream.read(4, timeout=10) == b"ping"
    stream.close()
    stream.close()  # idempotent
    with pytest.raises(LinkError, match="closed"):
        stream.read(1, timeout=1)
    with pytest.raises(LinkError, match="closed"):
        stream.write(b"x")


# -- files ---------------------------------------------------------------------------------


def test_put_file_is_atomic_and_remote_sha256_matches(client: paramiko.SSHClient, tmp_path: Path) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(MB + 123))
    remote = tmp_path / "board" / "models" / "m1" / "model.tflite"  # parents do not exist yet
    assert remote_sha256(client, str(remote)) is None

    put_file(client, local, str(remote))
    assert remote.read_bytes() == local.read_bytes()
    assert not Path(str(remote) + ".tmp").exists()
    assert remote_sha256(client, str(remote)) == hashlib.sha256(local.read_bytes()).hexdigest()

    local.write_bytes(b"second version")  # replacing an existing file
    put_file(client, local, str(remote))
    assert remote.read_bytes() == b"second version"
    assert remote_sha256(client, str(remote)) == hashlib.sha256(b"second version").hexdigest()
    assert sorted(p.name for p in remote.parent.iterdir()) == ["model.tflite"]
