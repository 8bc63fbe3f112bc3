"""OpenSSH conventions: ~/.ssh/config aliases, `user@host` addresses, ProxyJump, and boards without SFTP.

Every test runs against real OpenSSH sshd processes on 127.0.0.1 (sdk/emulate/sshd.py) and the
real agent zipapp, with a throwaway HOME that holds its own ~/.ssh/config, keys and known_hosts
(the real user's are never read: HOME points elsewhere, SSH_AUTH_SOCK and EDGESHIP_SSH_CONFIG
are cleared). In-process tests point sdk.transport.ssh.AGENT_DIR at this test's directory; blocking
steps run in a thread joined with a timeout, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import paramiko
import pytest

from edgeship.sdk.boards import Board, open_session
from edgeship.sdk.catalogue import resolve
from edgeship.sdk.emulate.sshd import Sshd
from edgeship.sdk.errors import HostKeyError, TransportError, UsageError
from edgeship.sdk.transport import ssh as ssh_transport
from edgeship.sdk.transport.ssh import connect, is_host_alias, resolve_target
from tests.conftest import in_thread, one_error_line, run_cli

PYTHON = sys.executable  # the board's interpreter: this venv has numpy and ai-edge-litert
STEP_TIMEOUT = 60.0


def bounded(fn: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
    """fn's value, failing (not hanging) if it runs past timeout."""
    return in_thread(fn, timeout)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway HOME with an empty 0700 ~/.ssh; the developer's agent and config stay out."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("EDGESHIP_SSH_CONFIG", raising=False)
    return h


@pytest.fixture
def agent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own agent directory on the board (never the login user's shared ~/.edgeship)."""
    d = tmp_path / "board-home" / ".edgeship"
    monkeypatch.setattr(ssh_transport, "AGENT_DIR", str(d))
    return d


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with Sshd(tmp_path / "sshd") as server:
        yield server


def write_config(home: Path, text: str) -> Path:
    path = home / ".ssh" / "config"
    path.write_text(text)
    return path


def host_block(alias: str, server: Sshd, *extra: str) -> str:
    lines = [f"Host {alias}", "  HostName 127.0.0.1", f"  Port {server.port}", f"  User {server.user}",
             f"  IdentityFile {server.user_key_path}", "  IdentitiesOnly yes", *(f"  {x}" for x in extra)]
    return "\n".join(lines) + "\n"


def trust(home: Path, *servers: Sshd) -> Path:
    known = home / ".ssh" / "known_hosts"
    known.write_text("".join(s.known_hosts_line() + "\n" for s in servers))
    return known


def board_query(tmp_path: Path) -> str:
    return f"python={quote(PYTHON, safe='/')}&store={quote(str(tmp_path / 'store'), safe='/')}"


def ping(board: Board, accept_new_host: bool = False) -> dict[str, Any]:
    def go() -> dict[str, Any]:
        session = open_session(board, accept_new_host=accept_new_host)
        try:
            return dict(session.info)
        finally:
            session.close()
            session.stream.close()

    return dict(bounded(go))


# -- Host aliases ------------------------------------------------------------------------------


def test_host_alias_gives_hostname_user_port_and_identity_file(sshd: Sshd, home: Path, tmp_path: Path,
                                                               agent_dir: Path) -> None:
    # a catch-all block first, as many configs have: it must not make every word an alias
    write_config(home, "Host *\n  ServerAliveInterval 30\n\n" + host_block("mypi", sshd))
    trust(home, sshd)
    target = resolve_target("mypi", python=PYTHON)
    assert (target.host, target.port, target.user) == ("127.0.0.1", sshd.port, sshd.user)
    assert target.identity_files == (sshd.user_key_path,) and target.identities_only
    assert target.known_hosts == home / ".ssh" / "known_hosts"  # OpenSSH's default, in this HOME

    board = Board.parse(f"mypi?{board_query(tmp_path)}")
    assert (board.transport, board.host, board.port) == ("ssh", "mypi", None)
    info = ping(board)
    assert info["runtime"]["name"] and info["python"]
    assert len(list(agent_dir.glob("agent-*.pyz"))) == 1

    with pytest.raises(UsageError, match="unknown board 'otherpi'"):
        Board.parse("otherpi")  # matched only by `Host *`: not an alias


def test_include_lines_are_named_in_a_warning(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_config(home, "Include ~/.ssh/config.d/*\nHost mypi\n  HostName 127.0.0.1\n")
    with caplog.at_level("WARNING", logger="edgeship.sdk.transport.ssh"):
        assert is_host_alias("mypi") and not is_host_alias("elsewhere")
    assert any("does not follow Include" in r.getMessage() for r in caplog.records)


def test_catalogue_name_wins_over_a_host_alias_of_the_same_name(sshd: Sshd, home: Path, tmp_path: Path) -> None:
    write_config(home, host_block("mypi", sshd))
    catalogue = tmp_path / "boards.yaml"
    catalogue.write_text("schema_version: 1\nboards:\n  mypi: {description: the local agent, transport: local}\n")
    assert resolve("mypi", catalogue).transport == "local"
    alias = resolve("mypi")
    assert (alias.transport, alias.host) == ("ssh", "mypi")

    # a catalogue SSH entry is completed from the config; a port it sets itself wins
    catalogue.write_text("schema_version: 1\nboards:\n"
                         "  desk: {description: d, transport: ssh, ssh: {host: mypi}}\n"
                         "  pinned: {description: p, transport: ssh, ssh: {host: mypi, port: 2022}}\n")
    desk, pinned = resolve("desk", catalogue), resolve("pinned", catalogue)
    assert resolve_target(desk.host, port=desk.port).port == sshd.port
    assert resolve_target(pinned.host, port=pinned.port).port == 2022


def test_user_known_hosts_files_are_read_and_the_first_one_written(sshd: Sshd, home: Path, tmp_path: Path,
                                                                   agent_dir: Path) -> None:
    first, second = home / "kh-first", home / "kh-second"
    write_config(home, host_block("mypi", sshd, f"UserKnownHostsFile {first} {second}"))
    second.write_text(sshd.known_hosts_line() + "\n")
    client = bounded(lambda: connect(resolve_target("mypi")))  # known from the second file only
    client.close()
    assert not first.exists()

    second.unlink()
    with pytest.raises(HostKeyError, match="is not known"):
        bounded(lambda: connect(resolve_target("mypi")))
    client = bounded(lambda: connect(resolve_target("mypi", accept_new_host=True)))
    client.close()
    assert first.read_text().split()[:2] == sshd.known_hosts_line().split()[:2]  # recorded in the first file
    assert stat.S_IMODE(first.stat().st_mode) == 0o600


# -- addresses as users type them, through the CLI ---------------------------------------------


def test_cli_pings_a_user_at_host_board_with_default_keys_of_home(sshd: Sshd, home: Path, tmp_path: Path) -> None:
    shutil.copy(sshd.user_key_path, home / ".ssh" / "id_ed25519")  # found the way ssh finds it
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    trust(home, sshd)
    env = {"HOME": str(home), "EDGESHIP_SSH_CONFIG": ""}
    board = f"{sshd.user}@127.0.0.1:{sshd.port}?{board_query(tmp_path)}"
    ok = run_cli("boards", "ping", board, "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert '"runtime"' in ok.stdout and "Traceback" not in ok.stderr

    (home / ".ssh" / "known_hosts").unlink()
    refused = run_cli("boards", "ping", board, env=env)
    assert refused.returncode == 1
    assert "is not known" in one_error_line(refused.stderr) and str(home / ".ssh" / "known_hosts") in refused.stderr


def test_cli_bad_config_line_is_one_error_naming_file_and_line(home: Path) -> None:
    config = write_config(home, "Host mypi\n  HostName\n  User pi\n")
    env = {"HOME": str(home), "EDGESHIP_SSH_CONFIG": ""}
    proc = run_cli("boards", "ping", "mypi", env=env)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert f"{config}:2" in line and "HostName" in line and "EDGESHIP_SSH_CONFIG=none" in line

    write_config(home, "Host mypi\n  HostName 127.0.0.1\n  Port twenty-two\n")
    proc = run_cli("boards", "ping", "mypi", env=env)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert f"{config}:3" in line and "not a port number" in line

    other = home / "other_config"  # EDGESHIP_SSH_CONFIG points at another file; `none` reads no file
    other.write_text("Host mypi\n  ProxyCommand nc %h %p\n")
    proc = run_cli("boards", "ping", "mypi", env={**env, "EDGESHIP_SSH_CONFIG": str(other)})
    assert proc.returncode == 1 and "ProxyCommand is not supported" in one_error_line(proc.stderr)
    marker = home / "ran"
    other.write_text(f"Host mypi\n  HostName 127.0.0.1\n\nMatch exec \"touch {marker}\"\n  User root\n")
    proc = run_cli("boards", "ping", "mypi", env={**env, "EDGESHIP_SSH_CONFIG": str(other)})
    assert proc.returncode == 1 and f"{other}:4: 'Match exec' is not supported" in one_error_line(proc.stderr)
    assert not marker.exists()  # the command in the config never ran
    proc = run_cli("boards", "ping", "mypi", env={**env, "EDGESHIP_SSH_CONFIG": "none"})
    assert proc.returncode == 2 and "unknown board 'mypi'" in one_error_line(proc.stderr)


# -- ProxyJump ---------------------------------------------------------------------------------


@pytest.fixture
def jump(tmp_path: Path) -> Iterator[Sshd]:
    with Sshd(tmp_path / "jump") as server:
        yield server


def test_proxy_jump_checks_both_host_keys_and_runs_through_the_jump(sshd: Sshd, jump: Sshd, home: Path,
                                                                    tmp_path: Path, agent_dir: Path) -> None:
    write_config(home, host_block("jumpbox", jump) + host_block("behind", sshd, "ProxyJump jumpbox"))
    target = resolve_target("behind")
    assert target.jump is not None and (target.jump.host, target.jump.port) == ("127.0.0.1", jump.port)
    board = Board.parse(f"behind?{board_query(tmp_path)}")

    known = trust(home, sshd)  # the board is known, the jump host is not: refused by default
    with pytest.raises(HostKeyError, match=f"^ProxyJump host 127.0.0.1:{jump.port} .*127.0.0.1:{jump.port} is "
                                           f"not known"):
        ping(board)
    assert "Accepted publickey" not in sshd.log_text()  # nothing reached the board

    known.write_text(jump.known_hosts_line() + "\n")  # the jump host is known, the board is not
    with pytest.raises(HostKeyError, match=f"^The SSH host key of 127.0.0.1:{sshd.port} is not known"):
        ping(board)

    known.write_text(jump.known_hosts_line() + "\n" + sshd.known_hosts_line().split()[0] + " "
                     + " ".join(jump.known_hosts_line().split()[1:]) + "\n")  # the board's entry: a wrong key
    with pytest.raises(HostKeyError, match="CHANGED"):
        ping(board, accept_new_host=True)

    known.unlink()  # --accept-new-host applies to both hops, as for a direct host
    info = ping(board, accept_new_host=True)
    assert info["runtime"]["name"]
    names = {line.split()[0] for line in known.read_text().splitlines()}
    assert names == {f"[127.0.0.1]:{jump.port}", f"[127.0.0.1]:{sshd.port}"}
    assert "Accepted publickey" in jump.log_text()

    client = bounded(lambda: connect(resolve_target("behind")))
    try:  # the board's SSH session rides on a channel of the jump host's connection
        assert isinstance(client.get_transport().sock, paramiko.Channel)
    finally:
        client.close()
    jump.stop()
    with pytest.raises(TransportError, match=f"127.0.0.1:{jump.port}"):
        bounded(lambda: connect(resolve_target("behind", connect_timeout=5.0)))


# -- no SFTP on the board ----------------------------------------------------------------------


def test_board_without_sftp_gets_the_agent_through_the_exec_channel(tmp_path: Path, home: Path,
                                                                    agent_dir: Path) -> None:
    with Sshd(tmp_path / "nosftp", sftp=False) as server:
        known = trust(home, server)
        url = (f"ssh://{server.user}@127.0.0.1:{server.port}?key={server.user_key_path}&known_hosts={known}&"
               f"{board_query(tmp_path)}")
        client = bounded(lambda: connect(resolve_target("127.0.0.1", port=server.port, user=server.user,
                                                        key_filename=server.user_key_path, known_hosts=known)))
        try:
            with pytest.raises(paramiko.SSHException):
                client.open_sftp()  # the board really has no SFTP
        finally:
            client.close()

        info = ping(Board.parse(url))
        assert info["runtime"]["name"]
        placed = list(agent_dir.glob("agent-*.pyz"))
        assert len(placed) == 1 and not list(agent_dir.glob("*.tmp"))
        assert stat.S_IMODE(placed[0].stat().st_mode) == 0o600
        assert stat.S_IMODE(agent_dir.stat().st_mode) == 0o700
        first = placed[0].stat().st_mtime_ns

        ping(Board.parse(url))  # the board's copy is hashed on the board and found current: not sent again
        assert placed[0].stat().st_mtime_ns == first

        placed[0].write_bytes(b"not the agent")  # a changed copy is replaced, then hash-checked and run
        info = ping(Board.parse(url))
        assert info["runtime"]["name"] and placed[0].read_bytes().startswith(b"#!")
        assert "subsystem request for sftp" in server.log_text().lower()


# -- addresses: the forms and what they become ------------------------------------------------


@pytest.mark.parametrize(("spec", "transport", "host", "port", "user", "url", "baud"), [
    ("pi@raspberrypi.local", "ssh", "raspberrypi.local", None, "pi", "", 115200),
    ("pi@192.168.1.20:2222?python=/usr/bin/python3", "ssh", "192.168.1.20", 2222, "pi", "", 115200),
    ("raspberrypi.local", "ssh", "raspberrypi.local", None, None, "", 115200),
    ("pi@[fe80::1]:2200", "ssh", "fe80::1", 2200, "pi", "", 115200),
    ("ssh://pi@MyPi", "ssh", "MyPi", None, "pi", "", 115200),  # as typed: an alias is matched as written
    ("/dev/ttyUSB0", "serial", "", None, None, "/dev/ttyUSB0", 115200),
    ("/dev/ttyACM0?baud=921600", "serial", "", None, None, "/dev/ttyACM0", 921600),
])
def test_address_forms(spec: str, transport: str, host: str, port: int | None, user: str | None, url: str,
                       baud: int, home: Path) -> None:
    board = Board.parse(spec)
    assert (board.name, board.transport, board.host, board.port, board.user, board.url, board.baud) == \
        (spec, transport, host, port, user, url, baud)


@pytest.mark.parametrize("spec", ["pi@host:22x", "pi@:22", "pi@host:0", "pi@host/path", "pi@host?python=a;b",
                                  "/dev/ttyUSB0?speed=9600"])
def test_malformed_addresses_are_usage_errors(spec: str, home: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(f"board {spec!r}")):
        Board.parse(spec)


def test_cli_pings_a_serial_board_by_its_device_path(tmp_path: Path) -> None:
    from edgeship.sdk.emulate.relay import SerialRelay

    with SerialRelay(115200) as relay:
        agent = subprocess.Popen([sys.executable, "-m", "edgeship.device_agent", "--serial", relay.board_port, "--baud",
                                  "115200", "--store", str(tmp_path / "store")], stderr=subprocess.DEVNULL)
        try:
            assert relay.host_port.startswith("/dev/")
            proc = run_cli("boards", "ping", relay.host_port, "--json")
        finally:
            agent.terminate()
            agent.wait(10)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["board"] == relay.host_port
