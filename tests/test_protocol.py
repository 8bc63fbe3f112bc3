"""Unit tests of the Link class over an in-memory lossy pipe (the one place a fake stream is fine).

End-to-end behaviour over real pipes, ptys and sshd is tested elsewhere; here each fault is
placed exactly, to prove the delivery rules: in order, exactly once, bounded retries.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque

import pytest

from edgeship.device_agent.protocol import ACK, MSG, Link, LinkFailed, Message, ProtocolError, encode_frame


class Pipe:
    """One direction of a byte line; `mangle` may drop or alter each written frame."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.cv = threading.Condition()
        self.mangle = lambda data: data

    def put(self, data: bytes) -> None:
        data = self.mangle(data)
        with self.cv:
            if data:
                self.chunks.append(data)
            self.cv.notify_all()

    def get(self, max_bytes: int, timeout: float | None) -> bytes:
        with self.cv:
            if not self.chunks:
                self.cv.wait(timeout)
            if not self.chunks:
                return b""
            data = self.chunks.popleft()
            if len(data) > max_bytes:
                self.chunks.appendleft(data[max_bytes:])
                data = data[:max_bytes]
            return data


class End:
    def __init__(self, rx: Pipe, tx: Pipe) -> None:
        self.rx, self.tx = rx, tx

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        return self.rx.get(max_bytes, timeout)

    def write(self, data: bytes) -> None:
        self.tx.put(data)

    def close(self) -> None:
        pass


def pair(**link_args: object) -> tuple[Link, Link, Pipe, Pipe]:
    h2a, a2h = Pipe(), Pipe()
    host = Link(End(a2h, h2a), role="host", rto=0.2, **link_args)  # type: ignore[arg-type]
    agent = Link(End(h2a, a2h), role="agent", rto=0.2, **link_args)  # type: ignore[arg-type]
    return host, agent, h2a, a2h


def echo(agent: Link, count: int, stop: threading.Event) -> None:
    """Agent side: reply to each message with its index."""
    done = 0
    while done < count and not stop.is_set():
        try:
            msg = agent.recv(0.2)
        except Exception:
            continue
        agent.send(Message({"op": "ok", "i": msg.header["i"]}, msg.body[::-1]))
        done += 1
    with contextlib.suppress(LinkFailed):
        agent.flush(5.0)


def exchange(host: Link, agent: Link, n: int, body_size: int = 3000) -> list[int]:
    stop = threading.Event()
    t = threading.Thread(target=echo, args=(agent, n, stop), daemon=True)
    t.start()
    got = []
    try:
        for i in range(n):
            body = bytes([i % 251]) * body_size
            host.send(Message({"op": "x", "i": i}, body))
        for _ in range(n):
            reply = host.recv(20.0)
            assert reply.body == (bytes([reply.header["i"] % 251]) * body_size)[::-1]
            got.append(reply.header["i"])
    finally:
        stop.set()
        t.join(10)
    return got


def test_clean_line_delivers_in_order() -> None:
    host, agent, _, _ = pair()
    assert exchange(host, agent, 30) == list(range(30))


def test_dropped_flipped_and_duplicated_frames_are_recovered_exactly_once() -> None:
    host, agent, h2a, a2h = pair()
    rng = random.Random(7)

    def noisy(data: bytes) -> bytes:
        r = rng.random()
        if r < 0.15:
            return b""  # dropped
        if r < 0.30:
            b = bytearray(data)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b)  # a flipped bit
        if r < 0.40:
            return data + data  # duplicated
        return data

    h2a.mangle = noisy
    a2h.mangle = noisy
    assert exchange(host, agent, 40) == list(range(40))
    assert host.stats.frames_resent > 0 and host.stats.bad_frames + agent.stats.bad_frames > 0


def test_a_dead_line_fails_after_bounded_retries() -> None:
    host, _agent, h2a, _ = pair(max_retries=3)
    h2a.mangle = lambda data: b""
    t0 = time.monotonic()
    host.send(Message({"op": "x", "i": 0}))
    with pytest.raises(LinkFailed, match="retries"):
        host.recv(30.0)
    assert time.monotonic() - t0 < 5.0


def test_oversize_and_unknown_frames_become_protocol_errors_and_the_link_goes_on() -> None:
    host, agent, h2a, _ = pair()
    agent.max_payload = 1024
    host.send(Message({"op": "first", "i": 0}))
    assert agent.recv(2.0).op == "first"
    h2a.put(encode_frame(MSG, host.session, 1, b"\0" * 5000))  # over the agent's limit
    with pytest.raises(ProtocolError) as err:
        agent.recv(2.0)
    assert err.value.code == "frame_too_large"
    h2a.put(encode_frame(9, host.session, 1, b""))  # unknown frame type
    with pytest.raises(ProtocolError) as err:
        agent.recv(2.0)
    assert err.value.code == "bad_frame_type"
    host._next_seq = 1  # the oversize frame was never accepted; continue at 1
    host.send(Message({"op": "after", "i": 1}))
    assert agent.recv(2.0).op == "after"


def test_a_new_session_resets_the_agent() -> None:
    host, agent, h2a, a2h = pair()
    assert exchange(host, agent, 3) == [0, 1, 2]
    host2 = Link(End(a2h, h2a), role="host", rto=0.2)
    assert host2.session != host.session
    assert exchange(host2, agent, 3) == [0, 1, 2]
    # a stale frame of the old session is ignored, not delivered
    h2a.put(encode_frame(MSG, host.session, 3, Message({"op": "stale"}).encode()))
    h2a.put(encode_frame(ACK, host.session, 99))
    host2.send(Message({"op": "fresh", "i": 9}))
    assert agent.recv(2.0).op == "fresh"


def test_garbage_between_frames_is_skipped() -> None:
    host, agent, h2a, _ = pair()
    h2a.put(b"ES\x01garbage" + bytes(range(256)) * 4)
    host.send(Message({"op": "ok", "i": 0}))
    assert agent.recv(2.0).op == "ok"


def test_bad_message_payload_is_a_protocol_error() -> None:
    _host, agent, h2a, _ = pair()
    h2a.put(encode_frame(MSG, 1234, 0, b"\xff\xff\xff\xff{"))
    with pytest.raises(ProtocolError) as err:
        agent.recv(2.0)
    assert err.value.code == "bad_message"
