"""The transport seam: every board kind is a Transport, and the in-memory one runs the real agent.

MemoryTransport serves its stream with device_agent's Agent in a thread of this process; the
digits bundle is uploaded and benchmarked and evaluated through it (in real worker processes)
exactly as on a board, and a line that is cut or closed ends in LinkError, never a hang.
"""

from __future__ import annotations

import ast
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeship.device_agent.agent import AgentConfig
from edgeship.sdk.boards import Board, open_session, ssh_transport, transport_for
from edgeship.sdk.catalogue import resolve
from edgeship.sdk.client import Session
from edgeship.sdk.emulate.services import EmulatedTransport
from edgeship.sdk.errors import AgentError, LinkError, UsageError
from edgeship.sdk.transport.base import Stream, Transport
from edgeship.sdk.transport.local import LocalTransport
from edgeship.sdk.transport.memory import MemoryTransport
from edgeship.sdk.transport.serial import SerialTransport
from edgeship.sdk.transport.ssh import SSHTransport


def test_a_digits_bundle_runs_through_the_memory_transport(convert_digits: Any, digits: Path, tmp_path: Path) -> None:
    bundle = convert_digits("int8")
    model = bundle.model_path.read_bytes()
    with MemoryTransport(tmp_path / "store") as board:
        session = open_session(board)
        try:
            assert isinstance(session.stream, Stream)
            agent = session.stream.agent  # type: ignore[attr-defined]
            assert isinstance(agent, threading.Thread) and agent.is_alive()  # the agent is a thread here, no process
            assert session.info["agent_version"] and session.info["runtime"]["name"] == "ai_edge_litert"
            up = session.upload(model)
            assert not up.skipped and (tmp_path / "store" / "blobs" / up.sha256).read_bytes() == model
            data = session.upload((digits / "test.npz").read_bytes())
            bench = session.run("bench", up.sha256, None, {"runs": 20, "min_seconds": 0})
            assert bench["status"] == "ok", bench
            assert bench["latency_ms"]["count"] >= 20 and bench["model_sha256"] == up.sha256
            result = session.run("eval", up.sha256, data.sha256, {})
            assert result["status"] == "ok", result
            assert result["accuracy"] == bundle.manifest.accuracy.model  # the host's own score of this model
        finally:
            session.close()
        assert not agent.is_alive()  # bye ended the agent's thread
        again = open_session(board)  # a new connection, the same store: nothing is sent twice
        try:
            assert again.upload(model).skipped
        finally:
            again.close()


def test_a_temporary_store_goes_with_the_transport() -> None:
    board = MemoryTransport(config=AgentConfig(store_dir=Path("/nonexistent"), quota=1 << 20))
    assert board.store != Path("/nonexistent") and board.config.store_dir == board.store
    session = open_session(board)
    try:
        with pytest.raises(AgentError) as err:
            session.upload(os.urandom(2 << 20))  # the agent runs with the config given: a 1 MiB quota
        assert err.value.code == "over_quota"
    finally:
        session.close()
    board.close()
    assert not board.store.exists()
    with pytest.raises(LinkError, match="was closed"):
        board.open()


def _cut_session() -> tuple[MemoryTransport, Any, Session]:
    board = MemoryTransport()
    stream = board.open()
    session = Session(stream)
    session.hello()
    return board, stream, session


def test_a_cut_line_is_a_link_error_at_once() -> None:
    board, stream, session = _cut_session()
    stream.cut()
    started = time.monotonic()
    with pytest.raises(LinkError, match="was cut"):
        session.upload(b"some model bytes" * 1000)
    assert time.monotonic() - started < 1.0
    stream.agent.join(5)
    assert not stream.agent.is_alive()  # the agent's end saw the cut as well, and stopped serving
    stream.close()
    board.close()


def test_a_closed_stream_is_a_link_error_on_both_sides() -> None:
    board, stream, session = _cut_session()
    session.abort()  # close without a goodbye: the agent's end reads the end of the stream
    assert not stream.agent.is_alive()
    with pytest.raises(LinkError, match="closed by this side"):
        stream.read(10, 0.1)
    with pytest.raises(LinkError, match="closed by this side"):
        stream.write(b"x")
    board.close()


def test_an_agent_that_went_away_is_a_link_error_not_a_hang() -> None:
    board, stream, session = _cut_session()
    session.request({"op": "bye"})  # the agent answers and its thread ends, as an agent process exits
    stream.agent.join(5)
    started = time.monotonic()
    with pytest.raises(LinkError, match="closed the stream"):
        session.hello()
    assert time.monotonic() - started < 1.0
    stream.close()
    board.close()


def test_every_board_kind_is_a_transport(tmp_path: Path) -> None:
    with MemoryTransport() as memory:
        kinds: list[Any] = [
            LocalTransport(tmp_path / "store"), SerialTransport("loop://", 9600), SSHTransport("board.example"),
            EmulatedTransport("emu", "emu-serial", str(tmp_path / "emu")), memory,
            transport_for(Board.parse("local")), transport_for(Board.parse("serial://loop://?baud=57600")),
            transport_for(Board.parse("ssh://pi@board.example:2222?python=/usr/bin/python3")),
            transport_for(resolve("emu-serial")), transport_for(resolve("emu-pi")),
        ]
        for transport in kinds:
            assert isinstance(transport, Transport), transport
            assert transport.name
    assert [type(t) for t in kinds[5:]] == [LocalTransport, SerialTransport, SSHTransport, EmulatedTransport,
                                            EmulatedTransport]
    assert [t.bytes_per_second for t in kinds[5:]] == [None, 5760.0, None, 11520.0, None]
    ssh = kinds[7]
    assert (ssh.host, ssh.port, ssh.user, ssh.python) == ("board.example", 2222, "pi", "/usr/bin/python3")
    with pytest.raises(UsageError, match="not SSH"):
        ssh_transport(Board.parse("local"))


def test_opened_streams_are_streams(tmp_path: Path) -> None:
    serial = SerialTransport("loop://", 115200).open()
    local = LocalTransport(tmp_path / "store").open()
    try:
        for stream in (serial, local):
            assert isinstance(stream, Stream), stream
        serial.write(b"ping")
        assert serial.read(4, 1.0) == b"ping"
    finally:
        serial.close()
        local.close()
    session = open_session(LocalTransport(tmp_path / "store", name="here"))  # open_session takes any Transport
    try:
        assert session.info["agent_version"]
    finally:
        session.close()


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_emulated_boards_do_not_reach_back_into_boards() -> None:
    root = Path(__file__).resolve().parent.parent
    assert "edgeship.sdk.emulate.services" in _imports(root / "sdk" / "boards.py")  # boards -> services, one way
    assert not {m for m in _imports(root / "sdk" / "emulate" / "services.py") if m.startswith("edgeship.sdk.boards")}
    transports = {m for f in (root / "sdk" / "transport").glob("*.py") for m in _imports(f)}
    assert not {m for m in transports if m.startswith(("edgeship.sdk.boards", "edgeship.sdk.emulate"))}
