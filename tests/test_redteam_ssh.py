"""Red team, SSH: hostile known_hosts lines, a tampered agent zipapp, shell metacharacters, file modes.

Every test talks to its own real OpenSSH sshd on 127.0.0.1 (sdk/emulate/sshd.py) and the real
agent zipapp. Tests that tamper with the board's agent file point sdk.transport.ssh.AGENT_DIR at this
test's own directory (an absolute path on the "board", which is this machine), so the login
user's real ~/.edgeship, which other test runs share, is never touched. Each blocking step runs
in a thread joined with a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import paramiko
import pytest

from edgeship.sdk.agentbuild import build_zipapp
from edgeship.sdk.boards import Board, open_session
from edgeship.sdk.emulate.sshd import Sshd
from edgeship.sdk.errors import HostKeyError, LinkError, UsageError
from edgeship.sdk.transport import ssh as ssh_transport
from edgeship.sdk.transport.ssh import SSHTarget, connect
from tests.conftest import in_thread, one_error_line, run_cli

PYTHON = sys.executable  # the board's interpreter: this venv has numpy and ai-edge-litert
STEP_TIMEOUT = 60.0


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with Sshd(tmp_path / "sshd") as server:
        yield server


def bounded(fn: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
    """fn's value, failing (not hanging) if it runs past timeout."""
    return in_thread(fn, timeout)


def target(server: Sshd, known_hosts: Path, **changes: Any) -> SSHTarget:
    return SSHTarget("127.0.0.1", server.port, user=server.user, key_filename=server.user_key_path,
                     known_hosts=known_hosts, connect_timeout=5.0, **changes)


def board_url(server: Sshd, known_hosts: Path, store: str, python: str = PYTHON) -> str:
    return (f"ssh://{server.user}@127.0.0.1:{server.port}?python={quote(python, safe='/')}"
            f"&key={server.user_key_path}&known_hosts={known_hosts}&store={quote(store, safe='/')}")


def host_key_fields(server: Sshd) -> str:
    """``ssh-ed25519 AAAA...`` of the server's current host key."""
    return " ".join(server.host_key_path.read_text().split()[:2])


def other_key_fields(tmp_path: Path, name: str) -> str:
    private = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True,
                   capture_output=True)
    return " ".join(Path(str(private) + ".pub").read_text().split()[:2])


# -- boards over the real sshd, with this test's own agent directory --------------------------------


def hostile_zipapp(marker: Path) -> bytes:
    """A zipapp that, if it ever ran, would create ``marker`` and then pretend to be nothing."""
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__main__.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    return buf.getvalue()


@pytest.fixture
def agent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own agent directory on the board (never the login user's shared ~/.edgeship)."""
    d = tmp_path / "board-home" / ".edgeship"
    monkeypatch.setattr(ssh_transport, "AGENT_DIR", str(d))
    return d


def ssh_board(sshd: Sshd, tmp_path: Path) -> Board:
    known = tmp_path / "known_hosts"
    if not known.exists():
        known.write_text(sshd.known_hosts_line() + "\n")
    return Board.parse(board_url(sshd, known, str(tmp_path / "store")))


def ping(board: Board) -> dict[str, Any]:
    def go() -> dict[str, Any]:
        session = open_session(board)
        try:
            return dict(session.info)
        finally:
            session.close()
            session.stream.close()

    return dict(bounded(go))


# -- known_hosts the way OpenSSH reads it -----------------------------------------------------


def test_cert_authority_unknown_marker_and_malformed_lines_are_skipped(sshd: Sshd, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """paramiko's loader raised InvalidHostKey on one bad line (every SSH board broke): now only that line is skipped."""
    known = tmp_path / "known_hosts"
    ca = other_key_fields(tmp_path, "ca")
    lines = [
        "# a comment",
        f"@cert-authority *.example.com {ca}",
        "pi.example.com ssh-ed25519 AAAA!!not-base64!!",
        "short-line ssh-ed25519",
        f"@frobnicate 10.1.2.3 {ca}",
        "\t",
        f"10.9.9.9 ssh-ed25519 {'QUFBQQ=='}",  # base64, but not an ed25519 key blob
        "10.8.8.8 sk-ssh-future@example.com QUFBQQ==",  # a key type paramiko does not read: kept as unreadable
    ]
    known.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.DEBUG, logger="edgeship.sdk.transport.ssh"), \
            pytest.raises(HostKeyError, match="is not known"):  # no entry for this host: unknown, not a crash
        bounded(lambda: connect(target(sshd, known)))
    warned = {r.getMessage().split(": ")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert warned == {f"{known}:3", f"{known}:4", f"{known}:5", f"{known}:7"}
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(f"{known}:2" in m and "@cert-authority" in m for m in debug)
    assert any(f"{known}:8" in m and "sk-ssh-future" in m for m in debug)

    # The same file plus a real (hashed) entry for the server: the connection is made.
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{sshd.port}")
    known.write_text(known.read_text() + f"{hashed} {host_key_fields(sshd)}\n")
    client = bounded(lambda: connect(target(sshd, known)))
    client.close()

    # ... and with --accept-new-host the malformed lines stay as they were: one new line appended, nothing lost.
    before = known.read_text().splitlines()
    sshd.rotate_host_key()
    with pytest.raises(HostKeyError, match="CHANGED"):
        bounded(lambda: connect(target(sshd, known, accept_new_host=True)))
    assert known.read_text().splitlines() == before


def test_wildcard_and_negated_patterns_match_like_openssh(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    name = f"[127.0.0.1]:{sshd.port}"
    known.write_text(f"[127.0.0.?]:*,!{name} {host_key_fields(sshd)}\n")  # negated: no entry for this host
    with pytest.raises(HostKeyError, match="is not known"):
        bounded(lambda: connect(target(sshd, known)))
    known.write_text(f"10.0.0.1,[127.0.0.?]:* {host_key_fields(sshd)}\n")
    bounded(lambda: connect(target(sshd, known))).close()

    # The host is on file only with a key type paramiko cannot read: not "unknown", so never appended to.
    text = f"{name} sk-ssh-future@example.com QUFBQQ==\n"
    known.write_text(text)
    with pytest.raises(HostKeyError, match=r"CHANGED.*sk-ssh-future"):
        bounded(lambda: connect(target(sshd, known, accept_new_host=True)))
    assert known.read_text() == text


class TwoKeySshd(Sshd):
    """An sshd with an ECDSA host key besides the ed25519 one, as a Raspberry Pi OS board has."""

    def _write_config(self) -> None:
        super()._write_config()
        ecdsa = self.workdir / "host_ecdsa"
        if not ecdsa.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True,
                           capture_output=True)
        with open(self.config_path, "a") as f:
            f.write(f"HostKey {ecdsa}\n")


def test_the_key_type_on_file_is_the_one_asked_for(tmp_path: Path) -> None:
    """known_hosts holds only the board's ECDSA key: that key is negotiated and accepted, not seen as changed."""
    with TwoKeySshd(tmp_path / "sshd") as server:
        ecdsa = " ".join((server.workdir / "host_ecdsa.pub").read_text().split()[:2])
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {ecdsa}\n")
        client = bounded(lambda: connect(target(server, known)))
        try:
            assert client.get_transport().get_remote_server_key().get_name().startswith("ecdsa-")
        finally:
            client.close()
        known.write_text(server.known_hosts_line() + "\n")  # the ed25519 one: also fine
        bounded(lambda: connect(target(server, known))).close()


def test_revoked_key_is_refused_even_when_also_trusted_and_with_accept_new_host(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    text = f"{sshd.known_hosts_line()}\n@revoked * {host_key_fields(sshd)}\n"
    known.write_text(text)
    for accept in (False, True):
        with pytest.raises(HostKeyError) as info:
            bounded(lambda: connect(target(sshd, known, accept_new_host=accept)))  # noqa: B023 (called at once)
        message = str(info.value)
        assert "REVOKED" in message and f"{known}:2" in message and sshd.host_key_fingerprint() in message
    assert known.read_text() == text

    # Revoked and otherwise unknown: --accept-new-host must not record it.
    known.write_text(f"@revoked [127.0.0.1]:{sshd.port} {host_key_fields(sshd)}\n")
    with pytest.raises(HostKeyError, match="REVOKED"):
        bounded(lambda: connect(target(sshd, known, accept_new_host=True)))
    assert known.read_text().count("\n") == 1

    # A revoked line for another key does not refuse this one.
    known.write_text(f"@revoked * {other_key_fields(tmp_path, 'old')}\n{sshd.known_hosts_line()}\n")
    bounded(lambda: connect(target(sshd, known))).close()


def test_accept_new_host_writes_known_hosts_0600_in_a_0700_directory(sshd: Sshd, tmp_path: Path) -> None:
    """Even under umask 000: the modes are given explicitly, not left to the umask."""
    known = tmp_path / "fresh" / "dotssh" / "known_hosts"
    old_umask = os.umask(0)
    try:
        bounded(lambda: connect(target(sshd, known, accept_new_host=True))).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(known.parent.parent.stat().st_mode) == 0o700  # every directory it created


def test_cli_host_key_refusals_are_one_line_exit_1(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    board = board_url(sshd, known, str(tmp_path / "store"))
    known.write_text(f"@revoked * {host_key_fields(sshd)}\n{sshd.known_hosts_line()}\n")
    revoked = run_cli("boards", "ping", board, "--accept-new-host")
    assert revoked.returncode == 1
    assert "REVOKED" in one_error_line(revoked.stderr) and f"{known}:1" in revoked.stderr

    ca = other_key_fields(tmp_path, "ca")
    known.write_text(f"@cert-authority * {ca}\nbroken line\n")
    unknown = run_cli("boards", "ping", board)
    assert unknown.returncode == 1
    assert "is not known" in one_error_line(unknown.stderr)
    assert f"{known}:2" in unknown.stderr  # the malformed line is named in its warning

    known.write_text(f"@cert-authority * {ca}\nbroken line\n{sshd.known_hosts_line()}\n")
    ok = run_cli("boards", "ping", board)
    assert ok.returncode == 0, ok.stderr
    assert "Traceback" not in ok.stderr


def test_cli_non_ssh_server_is_one_line(tmp_path: Path) -> None:
    """paramiko's transport thread logs the banner error with a traceback; the CLI must print one line."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def answer() -> None:
            for _ in range(4):
                try:
                    conn, _addr = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        proc = run_cli("boards", "ping", f"ssh://u@127.0.0.1:{port}?known_hosts={tmp_path / 'kh'}")
    assert proc.returncode == 1
    assert "SSH handshake" in one_error_line(proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- shell metacharacters in what reaches the remote command line --------------------------------


def test_store_metacharacters_are_quoted_not_run(sshd: Sshd, tmp_path: Path, agent_dir: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n")
    marker = tmp_path / "PWNED"
    payloads = [f"s;touch {marker}", f"s$(touch {marker})", f"s`touch {marker}`", f"s with 'spaces' && touch {marker}",
                f's"|touch {marker}|"', f"s\\';touch {marker};'"]
    for payload in payloads:
        store = tmp_path / "stores" / payload
        board = Board.parse(board_url(sshd, known, str(store)))
        assert ping(board)["agent_version"], payload
        assert store.is_dir(), payload  # the agent got the literal path
        assert not marker.exists(), payload
    print(f"store metacharacters: {len(payloads)} payloads, 0 ran")

    for bad in ("s\ntouch " + str(marker), "s\x00x"):
        with pytest.raises(UsageError, match="control character"):
            Board.parse(board_url(sshd, known, str(tmp_path / bad)))

    # Once through the CLI, with a payload in the store and one in python=.
    cli = run_cli("boards", "ping", board_url(sshd, known, f"{tmp_path}/cli;touch {marker}"))
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / f"cli;touch {marker}").is_dir() and not marker.exists()
    refused = run_cli("boards", "ping", board_url(sshd, known, str(tmp_path / "s"), python=f"python3;touch {marker}"))
    assert refused.returncode == 2 and "python='python3;touch" in one_error_line(refused.stderr)
    assert not marker.exists()


@pytest.mark.parametrize("python", ["python3;id", "$(id)", "`id`", "python3 -c 1", "-c", "./python3", "py\nthon",
                                    "/usr/bin/python3 ", "~/venv/bin/python"])
def test_python_must_be_an_absolute_path_or_a_plain_command(python: str) -> None:
    with pytest.raises(UsageError) as info:
        Board.parse(f"ssh://pi@host?python={quote(python, safe='/')}")
    assert repr(python) in str(info.value)


@pytest.mark.parametrize("python", ["python3", "python3.11", "/usr/bin/python3", "/home/pi/.venv/bin/python",
                                    "/opt/py-3.9+x/bin/python_x"])
def test_plain_interpreters_are_accepted(python: str) -> None:
    assert Board.parse(f"ssh://pi@host?python={quote(python, safe='/')}").python == python


# -- the agent zipapp on the board --------------------------------------------------------------


def test_tampered_zipapp_is_replaced_and_never_runs(sshd: Sshd, tmp_path: Path, agent_dir: Path) -> None:
    agent = build_zipapp()
    sha = hashlib.sha256(agent).hexdigest()
    pyz = agent_dir / f"agent-{sha[:16]}.pyz"
    marker = tmp_path / "PWNED"
    board = ssh_board(sshd, tmp_path)

    assert ping(board)["agent_version"]
    assert pyz.read_bytes() == agent
    assert stat.S_IMODE(pyz.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent_dir.stat().st_mode) == 0o700

    trials = 0
    for tamper in ("hostile", "truncated", "world-writable"):
        if tamper == "hostile":
            pyz.write_bytes(hostile_zipapp(marker))
        elif tamper == "truncated":
            pyz.write_bytes(agent[: len(agent) // 2])
        else:
            pyz.chmod(0o666)
            agent_dir.chmod(0o777)
        info = ping(board)
        trials += 1
        assert info["agent_version"] and info["protocol"]  # the real agent answered
        assert pyz.read_bytes() == agent, tamper
        assert stat.S_IMODE(pyz.stat().st_mode) == 0o600, tamper
        assert not stat.S_IMODE(agent_dir.stat().st_mode) & 0o022, tamper
        assert not marker.exists(), tamper
    assert sorted(p.name for p in agent_dir.iterdir()) == [pyz.name]  # no .tmp left behind

    # A model runs on the re-placed agent (its worker child is started from the verified zipapp).
    from tests.helpers_models import float_model

    pyz.write_bytes(hostile_zipapp(marker))

    def bench() -> dict[str, Any]:
        session = open_session(board)
        try:
            sha_model = session.upload(float_model()).sha256
            return session.run("bench", sha_model, None, {"runs": 3, "warmup": 1}, timeout=60)
        finally:
            session.close()
            session.stream.close()

    result = bounded(bench)
    trials += 1
    assert result["status"] == "ok" and result["runtime"]["name"] == "ai_edge_litert"
    assert pyz.read_bytes() == agent and not marker.exists()
    print(f"tampered zipapp: {trials} trials, 0 ran, {trials} re-placed")


def test_zipapp_changed_after_the_check_is_refused_by_the_board_itself(sshd: Sshd, tmp_path: Path, agent_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the host's sha256 check and the exec, the file is swapped: the remote command re-checks and refuses."""
    agent = build_zipapp()
    sha = hashlib.sha256(agent).hexdigest()
    pyz = agent_dir / f"agent-{sha[:16]}.pyz"
    marker = tmp_path / "PWNED"
    board = ssh_board(sshd, tmp_path)
    ping(board)  # placed

    real_remote_file = ssh_transport.remote_file

    def check_then_swap(client: Any, path: str) -> Any:
        found = real_remote_file(client, path)  # the genuine check passes ...
        pyz.write_bytes(hostile_zipapp(marker))  # ... then the file changes before the exec
        return found

    monkeypatch.setattr(ssh_transport, "remote_file", check_then_swap)
    with pytest.raises(LinkError) as info:
        ping(board)
    message = str(info.value)
    assert "does not match its sha256" in message and "Connect again" in message
    assert not marker.exists()
