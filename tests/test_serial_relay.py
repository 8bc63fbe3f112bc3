"""The pty serial relay (sdk/emulate/relay.py) and SerialStream (sdk/transport/serial.py), on real ptys.

No mocks: every byte goes host SerialStream -> pty A -> relay thread -> pty B -> board
SerialStream (and back), so these also prove the ptys are raw and pyserial opens them.
"""

from __future__ import annotations

import gc
import os
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from edgeship.sdk.emulate.relay import BOARD_TO_HOST, HOST_TO_BOARD, SerialRelay
from edgeship.sdk.errors import LinkError, TransportError, UsageError
from edgeship.sdk.transport.serial import SerialStream, open_serial

FAST = 1_000_000  # 100 kB/s: paced, but quick enough for the functional tests
# Every byte value, then the ones a cooked tty would eat or rewrite: NUL, LF, CR, ^C, XON/XOFF, 0xff.
SPECIAL = b"\x00\x0a\x0d\x03\x11\x13\xff\x0d\x0a\x00\x1a\x1c\x7f\x04"
BINARY = bytes(range(256)) * 4 + SPECIAL * 16


def read_exactly(stream: SerialStream, n: int, timeout: float = 5.0) -> bytes:
    """Read until n bytes came or the timeout passed; returns what arrived."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        out += stream.read(n - len(out), timeout=left)
    return bytes(out)


def arrivals(stream: SerialStream, n: int, timeout: float = 10.0) -> list[tuple[float, int]]:
    """(monotonic time, total bytes so far) after every read, until n bytes came."""
    marks: list[tuple[float, int]] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total < n and time.monotonic() < deadline:
        chunk = stream.read(4096, timeout=0.2)
        if chunk:
            total += len(chunk)
            marks.append((time.monotonic(), total))
    return marks


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


Line = tuple[SerialRelay, SerialStream, SerialStream]


@pytest.fixture
def fast_line() -> Iterator[Line]:
    with SerialRelay(FAST, seed=1) as relay, open_serial(relay.host_port) as host, \
            open_serial(relay.board_port) as board:
        yield relay, host, board


def test_binary_passes_unchanged_both_ways_at_once(fast_line: Line) -> None:
    """Full duplex, raw ptys: every byte value (NUL, CR, LF, ^C, XON/XOFF, 0xff) arrives as sent."""
    relay, host, board = fast_line
    up = BINARY
    down = bytes(reversed(BINARY))
    got: dict[str, bytes] = {}
    t = threading.Thread(target=lambda: got.setdefault("board", read_exactly(board, len(up))))
    t.start()
    board.write(down)
    host.write(up)
    got["host"] = read_exactly(host, len(down))
    t.join()
    assert got["board"] == up
    assert got["host"] == down
    relay.drain()
    relay.wait_for(HOST_TO_BOARD, len(up), timeout=0)
    relay.wait_for(BOARD_TO_HOST, len(down), timeout=0)
    assert relay.stats(HOST_TO_BOARD).passed == len(up)
    assert relay.stats(BOARD_TO_HOST).passed == len(down)
    assert relay.injected == []


def test_board_side_as_a_plain_fd_is_raw_too() -> None:
    """An agent that just open()s board_port, with no termios of its own, gets bytes unchanged (no echo, no CR/LF)."""
    with SerialRelay(FAST) as relay, open_serial(relay.host_port) as host:
        fd = os.open(relay.board_port, os.O_RDWR | os.O_NOCTTY)
        try:
            host.write(BINARY)
            got = bytearray()
            deadline = time.monotonic() + 5.0
            while len(got) < len(BINARY) and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.1)[0]:
                    got += os.read(fd, 4096)
            assert bytes(got) == BINARY
            assert host.read(100, timeout=0.1) == b""  # nothing echoed back
            os.write(fd, SPECIAL)
            assert read_exactly(host, len(SPECIAL)) == SPECIAL
        finally:
            os.close(fd)


def test_pacing_follows_baud_rate_in_each_direction() -> None:
    """20 000 bytes at 115200 baud (10 bits/byte) take 20000/11520 s, both directions at once."""
    n = 20_000
    expected = n / 11_520
    with SerialRelay(115_200) as relay, open_serial(relay.host_port) as host, open_serial(relay.board_port) as board:
        marks: dict[str, list[tuple[float, int]]] = {}
        readers = [threading.Thread(target=lambda s=s, k=k: marks.setdefault(k, arrivals(s, n)))
                   for s, k in ((board, "board"), (host, "host"))]
        writer = threading.Thread(target=board.write, args=(bytes(n),))
        t0 = time.monotonic()
        for t in readers:
            t.start()
        writer.start()
        host.write(bytes(n))
        writer.join()
        for t in readers:
            t.join()
    for side in ("board", "host"):
        assert marks[side][-1][1] == n
        elapsed = marks[side][-1][0] - t0
        assert expected * 0.9 <= elapsed <= expected * 1.1, f"{side}: {elapsed:.3f} s, expected {expected:.3f} s"
        # Paced all along, not one burst at the end: half the bytes come at about half the time.
        t_half = next(t for t, total in marks[side] if total >= n // 2) - t0
        assert expected * 0.4 <= t_half <= expected * 0.6


def test_drop_and_flip_at_explicit_offsets(fast_line: Line) -> None:
    relay, host, board = fast_line
    relay.set_faults(HOST_TO_BOARD, drop_at=[0, 100, 101, 1999], flip_at={5: 0x01, 50: 0x80, 101: 0xFF, 1000: 0xFF})
    relay.set_faults(BOARD_TO_HOST, flip_at=[3, 7])  # a plain list flips bit 0
    data = bytes(i % 251 for i in range(2000))
    expected = bytearray()
    for i, b in enumerate(data):
        if i in (0, 100, 101, 1999):
            continue
        expected.append(b ^ {5: 0x01, 50: 0x80, 1000: 0xFF}.get(i, 0))
    host.write(data)
    assert read_exactly(board, len(expected)) == bytes(expected)
    assert board.read(10, timeout=0.1) == b""  # and not one byte more
    board.write(b"\x00" * 10)
    assert read_exactly(host, 10) == b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00"
    relay.wait_for(HOST_TO_BOARD, 2000)
    log = [(e.direction, e.kind, e.offset, e.detail) for e in relay.injected]
    assert sorted(log) == sorted([
        (HOST_TO_BOARD, "drop", 0, data[0]), (HOST_TO_BOARD, "flip", 5, 0x01), (HOST_TO_BOARD, "flip", 50, 0x80),
        (HOST_TO_BOARD, "drop", 100, data[100]), (HOST_TO_BOARD, "drop", 101, data[101]),  # drop wins over flip
        (HOST_TO_BOARD, "flip", 1000, 0xFF), (HOST_TO_BOARD, "drop", 1999, data[1999]),
        (BOARD_TO_HOST, "flip", 3, 1), (BOARD_TO_HOST, "flip", 7, 1),
    ])
    up = relay.stats(HOST_TO_BOARD)
    assert (up.taken, up.offset, up.passed, up.dropped, up.flipped, up.lost) == (2000, 2000, 1996, 4, 3, 0)


def _noisy_run(seed: int) -> tuple[bytes, list[tuple[str, int, float]]]:
    with SerialRelay(None, seed=seed) as relay, open_serial(relay.host_port) as host, \
            open_serial(relay.board_port) as board:
        relay.set_faults(HOST_TO_BOARD, drop_prob=0.02, flip_prob=0.02)
        data = bytes(range(256)) * 16
        host.write(data)
        relay.wait_for(HOST_TO_BOARD, len(data))
        log = [(e.kind, e.offset, e.detail) for e in relay.injected]
        got = read_exactly(board, len(data) - sum(kind == "drop" for kind, _, _ in log))
        assert board.read(100, timeout=0.05) == b""
        return got, log


def test_random_faults_are_deterministic_given_a_seed() -> None:
    got_a, log_a = _noisy_run(seed=7)
    got_b, log_b = _noisy_run(seed=7)
    _, log_c = _noisy_run(seed=8)
    assert got_a == got_b and log_a == log_b
    assert log_a != log_c
    drops = sum(kind == "drop" for kind, _, _ in log_a)
    flips = sum(kind == "flip" for kind, _, _ in log_a)
    assert 30 <= drops <= 140 and 30 <= flips <= 140  # 2 % of 4096 is 82
    assert len(got_a) == 4096 - drops
    assert all(bin(int(mask)).count("1") == 1 for kind, _, mask in log_a if kind == "flip")


def test_cut_stops_both_directions_and_reconnect_resumes(fast_line: Line) -> None:
    relay, host, board = fast_line
    relay.set_faults(HOST_TO_BOARD, cut_at=500)
    data = bytes(i % 256 for i in range(1000))
    host.write(data)
    assert read_exactly(board, 1000, timeout=0.5) == data[:500]
    assert relay.is_cut
    board.write(b"anyone there?")  # the other direction is dead too
    assert host.read(100, timeout=0.3) == b""
    assert relay.wait_for(HOST_TO_BOARD, 1000).lost == 500
    assert relay.wait_for(BOARD_TO_HOST, 13).lost == 13

    relay.reconnect()
    host.write(b"after")
    assert read_exactly(board, 5) == b"after"
    board.write(b"back")
    assert read_exactly(host, 4) == b"back"

    relay.cut()  # unplug by hand, at whatever offset the line is
    host.write(b"lost")
    assert board.read(10, timeout=0.3) == b""
    relay.reconnect()
    host.write(b"found")
    assert read_exactly(board, 5) == b"found"
    assert [(e.direction, e.kind, e.offset) for e in relay.injected] == [
        (HOST_TO_BOARD, "cut", 500), ("both", "reconnect", -1), ("both", "cut", -1), ("both", "reconnect", -1)]


def test_stall_holds_the_line_at_an_offset() -> None:
    with SerialRelay(115_200) as relay, open_serial(relay.host_port) as host, open_serial(relay.board_port) as board:
        relay.set_faults(HOST_TO_BOARD, stall_at={1000: 0.5})
        data = bytes(i % 256 for i in range(2000))
        t0 = time.monotonic()
        host.write(data)
        marks = arrivals(board, 2000)
    assert marks[-1][1] == 2000
    t_1000 = next(t for t, total in marks if total >= 1000)
    t_after = next(t for t, total in marks if total > 1000)
    assert 0.45 <= t_after - t_1000 <= 0.7, "the 0.5 s stall must sit exactly before byte 1000"
    expected = 2000 / 11_520 + 0.5
    assert expected * 0.9 <= marks[-1][0] - t0 <= expected * 1.15
    assert [(e.kind, e.offset, e.detail) for e in relay.injected] == [("stall", 1000, 0.5)]


def test_read_returns_what_is_there_without_waiting_for_max_bytes(fast_line: Line) -> None:
    _, host, board = fast_line
    host.write(b"0123456789")
    time.sleep(0.05)
    t0 = time.monotonic()
    assert board.read(1000, timeout=2.0) == b"0123456789"
    assert time.monotonic() - t0 < 0.5
    assert board.read(0, timeout=1.0) == b""


def test_read_timeout_returns_empty_in_time(fast_line: Line) -> None:
    _, host, _ = fast_line
    for timeout in (0.0, 0.2):
        t0 = time.monotonic()
        assert host.read(100, timeout=timeout) == b""
        assert time.monotonic() - t0 < timeout + 0.15
    t0 = time.monotonic()
    host.read(100, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19


def test_stalled_line_turns_write_into_link_error() -> None:
    """Nobody takes the bytes (line stalled): write gives up after write_timeout with LinkError."""
    with SerialRelay(None) as relay, open_serial(relay.board_port):
        relay.set_faults(HOST_TO_BOARD, stall_at={0: 30.0})
        with SerialStream(relay.host_port, write_timeout=0.3) as host:
            t0 = time.monotonic()
            with pytest.raises(LinkError, match=r"accepted nothing for 0\.3 s") as err:
                host.write(bytes(1 << 20))
            assert time.monotonic() - t0 < 5.0
            assert relay.host_port in str(err.value)


def test_loop_url() -> None:
    with open_serial("loop://", 9600) as s:
        s.write(SPECIAL)
        assert read_exactly(s, len(SPECIAL), timeout=1.0) == SPECIAL
        t0 = time.monotonic()
        assert s.read(10, timeout=0.1) == b""
        assert time.monotonic() - t0 < 0.5


def test_socket_url_returns_everything_buffered() -> None:
    """socket:// (ser2net and the like): one read returns all that arrived, and refusal is a LinkError."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    with open_serial(f"socket://127.0.0.1:{port}") as s:
        s.write(SPECIAL)
        time.sleep(0.1)
        assert s.read(1000, timeout=1.0) == SPECIAL
        assert s.read(10, timeout=0.05) == b""
    t.join(timeout=2.0)
    srv.close()
    with pytest.raises(LinkError, match=f"socket://127.0.0.1:{port}"):
        open_serial(f"socket://127.0.0.1:{port}")


def test_missing_device_is_a_link_error_naming_the_path() -> None:
    path = "/dev/ttyEDGESHIP-does-not-exist"
    with pytest.raises(LinkError) as err:
        open_serial(path)
    assert isinstance(err.value, TransportError)
    assert path in str(err.value) and "does not exist" in str(err.value)
    assert err.value.__cause__ is not None


def test_busy_port_is_a_link_error() -> None:
    with SerialRelay(None) as relay, open_serial(relay.host_port):
        with pytest.raises(LinkError, match="busy") as err:
            open_serial(relay.host_port)
        assert relay.host_port in str(err.value)


def test_unknown_url_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="nope://x"):
        open_serial("nope://x")


def test_closed_stream_raises_link_error() -> None:
    s = open_serial("loop://")
    s.close()
    s.close()
    with pytest.raises(LinkError, match="closed"):
        s.read(1, timeout=0)


def test_relay_leaks_no_fds_or_threads() -> None:
    gc.collect()  # files earlier tests left to the collector must not count for (or against) this relay
    before = open_fds()
    threads_before = threading.active_count()
    with SerialRelay(FAST) as relay, open_serial(relay.host_port) as host, open_serial(relay.board_port) as board:
        host.write(b"x")
        assert read_exactly(board, 1) == b"x"
    assert relay.closed
    # Forgotten without close(): garbage collection stops it too.
    forgotten = SerialRelay(FAST)
    forgotten.set_faults("both", drop_prob=0.5)
    del forgotten
    gc.collect()
    deadline = time.monotonic() + 3.0
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == threads_before
    assert open_fds() == before
