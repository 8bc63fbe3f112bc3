"""Red team on the wire: hostile frames, names and options against the real agent, on stdio and on a pty serial line.

Every loop counts deaths (the agent exited or restarted), hangs (no answer within BOUND s),
tracebacks (on the agent's stderr) and internal errors, prints its tally (the figures of
docs/reliability.md's red-team table) and asserts the first three are zero, then that the
agent still answers hello. Inputs are seeded, so the figures are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgeship.device_agent.protocol import ACK, HEADER_SIZE, MSG, Link, LinkFailed, LinkTimeout, Message, ProtocolError, encode_frame
from edgeship.device_agent.streams import FdStream, StreamClosed
from edgeship.device_agent.worker import run_in_worker
from edgeship.sdk.client import LinkProfile, Session

SEED = 20261201
BOUND = 10.0  # seconds: an answer later than this is a hang
ROOT = Path(__file__).resolve().parent.parent
SHA_RE = re.compile(r"[0-9a-f]{64}(\.(raw|zlib))?")
PROFILE = LinkProfile(chunk=16384, window=4, rto=0.5, max_retries=8)


@dataclass(frozen=True)
class Raw(Message):
    """A message whose payload is given byte for byte: JSON the host library would never write."""

    payload: bytes = b""

    def encode(self) -> bytes:
        return self.payload


def raw_json(text: str | bytes) -> Raw:
    data = text.encode() if isinstance(text, str) else text
    return Raw({}, b"", struct.pack("<I", len(data)) + data)


@dataclass
class Tally:
    name: str
    trials: int = 0
    deaths: int = 0
    hangs: int = 0
    internal_errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def report(self, agent: AgentProc) -> None:
        tracebacks = agent.tracebacks()
        print(f"\nREDTEAM {self.name} [{agent.transport}]: trials={self.trials} deaths={self.deaths} "
              f"hangs={self.hangs} tracebacks={tracebacks} internal_errors={self.internal_errors} "
              f"codes={dict(sorted(self.codes.items()))}")
        assert (self.deaths, self.hangs, tracebacks, self.internal_errors) == (0, 0, 0, 0), agent.stderr()[-2000:]


class AgentProc:
    """The real agent: `--stdio` over pipes, or `--serial` on the slave of a pty whose master the test holds."""

    def __init__(self, tmp: Path, transport: str, *args: str) -> None:
        self.tmp, self.transport, self.args = tmp, transport, args
        self.store = tmp / "store"
        tmp.mkdir(parents=True, exist_ok=True)
        self.err_path = tmp / f"agent-{transport}.err"
        self._err = self.err_path.open("ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        base = [sys.executable, "-m", "edgeship.device_agent", "--store", str(self.store), *args]
        if transport == "stdio":
            to_agent, from_agent = os.pipe(), os.pipe()  # the test owns its ends: one close each
            self.proc = subprocess.Popen([*base, "--stdio"], stdin=to_agent[0], stdout=from_agent[1],
                                         stderr=self._err, env=env, cwd=ROOT)
            os.close(to_agent[0])
            os.close(from_agent[1])
            self.stream = FdStream(from_agent[0], to_agent[1], 5.0)
        else:
            self.master, self._slave = os.openpty()
            self.proc = subprocess.Popen([*base, "--serial", os.ttyname(self._slave), "--baud", "115200"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err, env=env, cwd=ROOT)
            self.stream = FdStream(self.master, self.master, 5.0)
            deadline = time.monotonic() + 30
            while b"serving on" not in self.err_path.read_bytes():
                assert self.proc.poll() is None and time.monotonic() < deadline, self.stderr()
                time.sleep(0.05)
        self.pid = self.proc.pid
        self._open = True

    def hang_up(self) -> None:
        """Close the test's end of the line (once)."""
        if self._open:
            self._open = False
            self.stream.close()

    def link(self, **kw: Any) -> Link:
        return Link(self.stream, role="host", **{"rto": 0.5, "max_retries": 8, **kw})

    def session(self) -> Session:
        return Session(self.stream, PROFILE)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tracebacks(self) -> int:
        return self.stderr().count("Traceback")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def drain(self, quiet: float = 0.3) -> int:
        """Read and discard what the agent wrote, until it is quiet: a new host starts on a clean line."""
        n = 0
        while True:
            data = self.stream.read(1 << 16, quiet)
            if not data:
                return n
            n += len(data)

    def children(self) -> list[int]:
        """Processes whose parent is the agent (its run workers)."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                out.append(int(stat.parent.name))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.hang_up()
        if self.transport == "serial":
            os.close(self._slave)
        self._err.close()


@pytest.fixture(params=["stdio", "serial"])
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentProc]:
    proc = AgentProc(tmp_path, request.param, "--run-timeout", "6", "--max-frame", str(1 << 20))
    yield proc
    proc.close()


def exchange(agent: AgentProc, link: Link, tally: Tally, message: Message, timeout: float = BOUND) -> Message | None:
    """Send one request, wait for its one reply; count a hang or a death instead of raising."""
    tally.trials += 1
    try:
        link.send(message)
        reply = link.recv(timeout)
    except LinkTimeout:
        tally.hangs += 1
        return None
    except ProtocolError as exc:  # the agent's reply frame itself was bad: count as a hang of this request
        tally.hangs += 1
        tally.codes[f"host:{exc.code}"] = tally.codes.get(f"host:{exc.code}", 0) + 1
        return None
    except (LinkFailed, StreamClosed):
        tally.deaths += 0 if agent.alive() else 1
        tally.hangs += 1 if agent.alive() else 0
        return None
    code = str(reply.header.get("code", reply.op)) if reply.op == "error" else reply.op
    tally.codes[code] = tally.codes.get(code, 0) + 1
    if code == "internal_error":
        tally.internal_errors += 1
    return reply


def still_answers(agent: AgentProc, link: Link, tally: Tally) -> None:
    reply = exchange(agent, link, tally, Message({"op": "hello"}))
    assert reply is not None and reply.op == "hello" and reply.header["pid"] == agent.pid, reply
    assert agent.alive()


def answers(agent: AgentProc, link: Link, tally: Tally) -> None:
    """A cheap request (hello probes the board's libraries) answered by the same, living agent."""
    reply = exchange(agent, link, tally, Message({"op": "list"}))
    assert reply is not None and reply.op == "ok" and agent.alive(), reply


def write_raw_frame(link: Link, ftype: int, seq: int, payload: bytes = b"", session: int | None = None) -> None:
    link.stream.write(encode_frame(ftype, link.session if session is None else session, seq, payload))


def test_hostile_frames_never_stop_the_agent(agent: AgentProc) -> None:
    """Random bytes, garbage JSON, deep nesting, non-finite numbers, huge lengths, unknown types and versions,
    wrong sessions, out-of-order and duplicate frames, floods, and an op of 400k backslashes."""
    rng = random.Random(SEED)
    tally = Tally("frames")
    link = agent.link()
    still_answers(agent, link, tally)
    rss_before = _rss_kib(agent.pid)
    # Random bytes between requests: skipped by the magic scan and the header CRC.
    for _ in range(25):
        link.stream.write(rng.randbytes(rng.randint(1, 3000)))
        answers(agent, link, tally)
    # CRC-valid frames whose message is not u32 + JSON object: bad_message, one reply each.
    garbage = [rng.randbytes(rng.randint(0, 200)) for _ in range(20)]
    garbage += [b"\xff\xff\xff\xff", struct.pack("<I", 3) + b"{\"o", raw_json("[1,2]").payload,
                raw_json("\"op\"").payload, raw_json(b"{\"op\": \"\xff\xfe\"}").payload, raw_json("{\"op\":").payload]
    for payload in garbage:
        reply = exchange(agent, link, tally, Raw({}, b"", payload))
        assert reply is None or reply.op == "error", reply
    # Deep nesting and numbers no JSON parser should turn into an exception.
    hostile = ["[" * n + "]" * n for n in (33, 200, 1000, 50_000)]
    hostile += ['{"op": "hello", "x": ' + "[" * 5000 + "]" * 5000 + "}", '{"op": "hello", "x": ' + '{"a":' * 900 + "1" + "}" * 901]
    sha = "ab" * 32
    numbers = ("Infinity", "-Infinity", "NaN", "1e400", "-1e400", "9" * 5000)
    hostile += [f'{{"op": "put", "sha256": "{sha}", "offset": {v}}}' for v in numbers]
    hostile += [f'{{"op": "run", "kind": "bench", "model": "{sha}", "options": {{"{k}": {v}}}}}'
                for k in ("runs", "warmup", "timeout", "min_seconds", "threads") for v in ("Infinity", "NaN", "1e400")]
    for text in hostile:
        reply = exchange(agent, link, tally, raw_json(text))
        assert reply is not None and reply.op == "error" and reply.header["code"] == "bad_message", (text[:60], reply)
    # An op of 400k backslashes: echoed back as a short repr, not a 1.6 MB reply.
    reply = exchange(agent, link, tally, Message({"op": "\\" * 400_000}))
    assert reply is not None and reply.header["code"] == "unknown_op" and len(reply.header["message"]) < 400
    # Huge length fields: refused from the header alone (nothing is allocated for them).
    for length in (0xFFFFFFFF, 0x80000000, (1 << 20) + 1, 50 << 20):
        tally.trials += 1
        head = struct.pack("<2sBBIII", b"ES", 1, MSG, link.session, link._next_seq, length)
        link.stream.write(head + struct.pack("<I", zlib.crc32(head)))
        reply = link.recv(BOUND)
        assert reply.header["code"] == "frame_too_large", reply
    # Unknown frame types and versions, in the current session.
    for ftype in (0, 4, 9, 255):
        tally.trials += 1
        write_raw_frame(link, ftype, link._next_seq)
        reply = link.recv(BOUND)
        assert reply.header["code"] == "bad_frame_type", reply
    for version in (0, 2, 255):
        tally.trials += 1
        head = struct.pack("<2sBBIII", b"ES", version, MSG, link.session, link._next_seq, 0)
        link.stream.write(head + struct.pack("<I", zlib.crc32(head)) + struct.pack("<I", 0))
        assert link.recv(BOUND).header["code"] == "bad_version"
    # Wrong session ids (not a new host: seq > 0), out-of-order and duplicate sequence numbers: never delivered.
    hello = Message({"op": "hello"}).encode()
    for _ in range(10):
        tally.trials += 1
        write_raw_frame(link, MSG, rng.randint(1, 1000), hello, session=rng.getrandbits(32) | 1)
        write_raw_frame(link, MSG, link._next_seq + rng.randint(1, 50), hello)  # a gap: NAKed, dropped
        write_raw_frame(link, MSG, max(0, link._next_seq - rng.randint(1, 5)), hello)  # a duplicate: re-ACKed, dropped
        write_raw_frame(link, ACK, rng.getrandbits(32))  # an ACK for frames never sent
        stranger = rng.getrandbits(32) | 1  # another session's bad frames are not this host's errors
        for version, length in ((2, 0), (1, 50 << 20)):
            head = struct.pack("<2sBBIII", b"ES", version, MSG, stranger, rng.randint(1, 99), length)
            link.stream.write(head + struct.pack("<I", zlib.crc32(head)))
        answers(agent, link, tally)
    with pytest.raises(LinkTimeout):
        link.recv(0.5)  # none of those produced a reply of its own
    # A flood: 300 requests pipelined as fast as the window allows, every reply in order.
    ops = [rng.choice(["list", "nope", "has"]) for _ in range(300)]
    for op in ops:
        link.send(Message({"op": op, "sha256": sha}))
    for op in ops:
        tally.trials += 1
        reply = link.recv(BOUND)
        assert reply.op == {"list": "ok", "has": "ok"}.get(op, "error"), (op, reply)
    # A flood of garbage: 1 MiB of random bytes with frame magics sprinkled in.
    junk = bytearray(rng.randbytes(1 << 20))
    for i in rng.sample(range(len(junk) - 2), 2000):
        junk[i : i + 2] = b"ES"
    link.stream.write(bytes(junk))
    still_answers(agent, link, tally)
    assert _rss_kib(agent.pid) - rss_before < 64 << 10, "the agent's memory grew by more than 64 MiB"
    tally.report(agent)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


HOSTILE_NAMES: list[Any] = ["../../../etc/passwd", "/etc/passwd", "a\x00b", "\x00" * 64, "é" * 64, "x" * 100_000,
                            "..", "%2e%2e%2f" * 8, "ab" * 32 + "/..", "AB" * 32, "ab" * 31 + "../", "\u202e" * 64,
                            "C:\\Windows", 12, -1, 1.5, True, [], {"a": 1}]
NAME_FIELDS = [("has", "sha256"), ("has", "encoding"), ("put_begin", "sha256"), ("put_begin", "encoding"),
               ("put", "sha256"), ("put", "encoding"), ("put_end", "sha256"), ("put_end", "encoding"),
               ("delete", "sha256"), ("list", "after"), ("run", "model"), ("run", "dataset"), ("run", "kind"),
               ("run", "options.runtime"), ("run", "options.output"), ("run", "options.state")]


def test_hostile_names_are_refused_and_touch_nothing_outside_the_store(agent: AgentProc) -> None:
    """Every field that names a blob, a dataset, an encoding, a runtime or an output, given ../, absolute paths,
    NUL, over-long, non-ASCII and non-string values: an error reply, no file outside the store, no board path echoed."""
    tally = Tally("names")
    up = agent.session().upload(b"not a model, but a stored blob a run can name")
    before = sorted(p.name for p in agent.tmp.iterdir())
    link = agent.link()  # a new host from here on
    base = {"has": {"sha256": up.sha256, "encoding": "raw"},
            "put_begin": {"sha256": "cd" * 32, "size": 10, "wire_size": 10, "encoding": "raw"},
            "put": {"sha256": "cd" * 32, "encoding": "raw", "offset": 0},
            "put_end": {"sha256": "cd" * 32, "encoding": "raw"}, "delete": {"sha256": "ef" * 32}, "list": {},
            "run": {"kind": "bench", "model": up.sha256, "dataset": None, "options": {"runs": 1, "min_seconds": 0}}}
    for op, name in NAME_FIELDS:
        for value in HOSTILE_NAMES:
            if name == "dataset" and not value:
                continue  # no dataset: a valid request
            if name == "options.output" and isinstance(value, str) and value.isprintable() and len(value) <= 256:
                continue  # a valid output name (looked up among the model's outputs, never a path)
            header = json.loads(json.dumps({"op": op, **base[op]}))
            if name.startswith("options."):
                header["options"][name.split(".", 1)[1]] = value
            else:
                header[name] = value
            reply = exchange(agent, link, tally, Message(header))
            assert reply is not None and reply.op == "error", (op, name, str(value)[:40], reply)
            message = str(reply.header["message"])
            assert len(message) <= 400 and str(agent.tmp) not in message, message[:200]
    assert sorted(p.name for p in agent.tmp.iterdir()) == before
    for d in ("blobs", "partial", "tmp"):
        assert all(SHA_RE.fullmatch(p.name) for p in (agent.store / d).iterdir()), list((agent.store / d).iterdir())
    still_answers(agent, link, tally)
    tally.report(agent)


BAD_OPTIONS = [
    # the operator's limits and the agent's bounds: refused with bad_request, no worker started
    '{"timeout": -1}', '{"timeout": 0}', '{"timeout": "5"}', '{"timeout": true}', '{"timeout": []}',
    '{"runs": 1000000000000}', '{"runs": -1}', '{"runs": 0}', '{"runs": 1.5}', '{"runs": "50"}', '{"runs": true}',
    '{"warmup": 1000000000}', '{"warmup": -5}', '{"warmup": 2.5}',
    '{"min_seconds": 1000000000}', '{"min_seconds": -1}', '{"min_seconds": "1"}', '{"min_seconds": 7}',
    '{"timeout": 2, "min_seconds": 3}',
    '{"threads": 1000000}', '{"threads": 0}', '{"threads": -1}', '{"threads": 9223372036854775807}', '{"threads": 1e30}',
    '{"arena_size": 1099511627776}', '{"arena_size": 0}', '{"xnnpack": "no"}', '{"runtime": "../../bin/sh"}',
    '{"runz": 5}', '{"__class__": 1}', '{"": 1}', '{"' + "k" * 10000 + '": 1}', '{"timeout": 1, "rm -rf": 1}',
    '"a string"', '[1, 2]', '5', 'true',
]


def test_hostile_run_options_are_refused_and_a_peer_timeout_only_lowers_the_operators(tmp_path: Path,
                                                                                        tiny_model: bytes) -> None:
    """NaN/Infinity/negative timeouts, endless runs and warm-ups, huge thread counts, unknown keys, options that are
    not an object: refused before any worker starts; a huge finite timeout runs within the agent's --run-timeout."""
    agent = AgentProc(tmp_path, "stdio", "--run-timeout", "4")
    try:
        tally = Tally("options")
        up = agent.session().upload(tiny_model)
        link = agent.link()
        for options in BAD_OPTIONS:
            text = f'{{"op": "run", "kind": "bench", "model": "{up.sha256}", "options": {options}}}'
            t0 = time.monotonic()
            reply = exchange(agent, link, tally, raw_json(text))
            assert reply is not None and reply.header.get("code") == "bad_request", (options[:60], reply)
            assert time.monotonic() - t0 < BOUND and not agent.children()
            assert len(reply.header["message"]) < 400
        unknown = exchange(agent, link, tally, raw_json(f'{{"op": "run", "kind": "bench", "model": "{up.sha256}", '
                                                        f'"options": {{"runz": 5}}}}'))
        assert unknown is not None and "min_seconds" in unknown.header["message"]  # it lists the known options
        # A peer asking for 1e308 s gets at most the operator's 4 s.
        t0 = time.monotonic()
        reply = exchange(agent, link, tally, Message({"op": "run", "kind": "bench", "model": up.sha256,
                                                      "options": {"timeout": 1e308, "runs": 1_000_000, "min_seconds": 4}}),
                         timeout=30)
        while reply is not None and reply.op == "progress":
            reply = link.recv(30)
        assert reply is not None and reply.header["status"] == "timeout" and "4 s" in reply.header["message"], reply
        assert time.monotonic() - t0 < 4 + BOUND
        deadline = time.monotonic() + 5
        while agent.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not agent.children(), "a worker outlived its run"
        still_answers(agent, link, tally)
        tally.report(agent)
    finally:
        agent.close()


@pytest.fixture(scope="module")
def tiny_model() -> bytes:
    from tests import helpers_models as hm

    return hm.dense_relu_model()


def test_the_worker_refuses_a_non_finite_timeout_and_stops_when_cancelled() -> None:
    """run_in_worker itself: a NaN or infinite timeout starts no worker; a cancel stops the one it started."""
    for bad in (float("nan"), float("inf"), -1.0, 0.0):
        assert run_in_worker({"kind": "bench"}, bad, 0)["status"] == "bad_request"
    t0 = time.monotonic()
    result = run_in_worker({"kind": "bench", "model_path": "/nonexistent", "model_sha256": "0" * 64}, 30, 0,
                           cancelled=lambda: True)
    assert result["status"] == "cancelled" and time.monotonic() - t0 < BOUND


def test_a_peer_that_stops_reading_ends_the_session_and_a_serial_agent_serves_the_next_host(tmp_path: Path) -> None:
    """The peer sends requests (and ACKs, blind) but never reads: the agent's write times out after --write-timeout;
    a stdio agent exits cleanly, a serial agent drops the session and answers the next host."""
    for transport in ("stdio", "serial"):
        agent = AgentProc(tmp_path / transport, transport, "--write-timeout", "1")
        try:
            tally = Tally("stops-reading")
            request = Message({"op": "x" * 70}).encode()  # a quick reply of about 250 bytes
            session = 0x5EED
            t0 = time.monotonic()
            count = 400 if transport == "stdio" else 250  # replies of 100 kB / 60 kB: more than a pipe or pty holds
            for seq in range(count):
                try:
                    agent.stream.write(encode_frame(MSG, session, seq, request) + encode_frame(ACK, session, seq))
                except StreamClosed:
                    break  # the stdio agent is gone: its stdin is closed
                time.sleep(0.002)
                if transport == "stdio" and not agent.alive():
                    break
            tally.trials += 1
            if transport == "stdio":
                agent.proc.wait(BOUND)
                assert agent.proc.returncode == 0 and time.monotonic() - t0 < 1 + count * 0.002 + BOUND
                assert agent.tracebacks() == 0, agent.stderr()
                print(f"\nREDTEAM stops-reading [stdio]: trials=1 deaths=0 hangs=0 tracebacks={agent.tracebacks()} "
                      f"(exited cleanly after {time.monotonic() - t0:.1f} s)")
            else:
                time.sleep(1.5)  # past the write timeout
                drained = agent.drain()
                assert 0 < drained < count * 200, drained  # replies were given up on: the session was dropped
                link = agent.link()
                still_answers(agent, link, tally)
                tally.report(agent)
        finally:
            agent.close()


def test_serial_cut_mid_frame_does_not_deafen_the_agent(tmp_path: Path) -> None:
    """A host cut inside a put frame (in its header, its JSON, its body): the next host is answered, the agent's
    parser does not swallow its bytes waiting for the rest of the dead frame."""
    agent = AgentProc(tmp_path, "serial")
    try:
        tally = Tally("cut-mid-frame")
        rng = random.Random(SEED)
        put = Message({"op": "put", "sha256": "ab" * 32, "encoding": "raw", "offset": 0}, rng.randbytes(4096)).encode()
        frame = encode_frame(MSG, 0xDEAD, 1, put)
        for cut in (7, HEADER_SIZE + 30, HEADER_SIZE + 200, len(frame) // 2, len(frame) - 3):
            first = agent.link()  # the dying host's hello, then the start of its put
            still_answers(agent, first, tally)
            agent.stream.write(encode_frame(MSG, first.session, 1, put)[:cut])
            t0 = time.monotonic()
            still_answers(agent, agent.link(), tally)  # the next host
            assert time.monotonic() - t0 < BOUND
        tally.report(agent)
    finally:
        agent.close()


class _HostDied(Exception):
    pass


def test_serial_sessions_do_not_cross(tmp_path: Path, tiny_model: bytes) -> None:
    """A host dies mid-bench: the next host's hello gets a hello (not the dead run's progress), its push works and
    the dead host's worker is stopped. A bye and the next hello read in one go: the new host is answered."""
    agent = AgentProc(tmp_path, "serial", "--run-timeout", "60")
    try:
        tally = Tally("session-crossing")
        dying = agent.session()
        dying.hello()
        up = dying.upload(tiny_model)


        def die(progress: dict[str, Any]) -> None:
            raise _HostDied(progress)

        with pytest.raises(_HostDied):  # the bench is under way when this host dies (without a bye)
            dying.run("bench", up.sha256, None, {"runs": 1_000_000, "min_seconds": 30}, progress=die, timeout=BOUND * 2)
        for trial in range(3):
            tally.trials += 1
            nxt = agent.session()
            info = nxt.hello()
            assert info["op"] == "hello" and info["pid"] == agent.pid and info["agent_version"], info
            data = random.Random(SEED + trial).randbytes(3000)
            assert nxt.upload(data).size == len(data)
            assert any(b["sha256"] == up.sha256 for b in nxt.list_blobs())
        deadline = time.monotonic() + BOUND
        while agent.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not agent.children(), "the dead host's worker still runs"
        # bye, then the next host's hello, arriving in one read.
        for _ in range(3):
            tally.trials += 1
            old, new = agent.link(), agent.link()
            old.send(Message({"op": "hello"}))
            assert old.recv(BOUND).op == "hello"
            bye = encode_frame(MSG, old.session, old._next_seq, Message({"op": "bye"}).encode())
            hello = encode_frame(MSG, new.session, 0, Message({"op": "hello"}).encode())
            new._next_seq, new._unacked[0] = 1, hello  # as if `new` had sent it, so it resends it if need be
            agent.stream.write(bye + hello)
            reply = new.recv(BOUND)
            assert reply.op == "hello" and reply.header["pid"] == agent.pid
        still_answers(agent, agent.link(), tally)
        tally.report(agent)
    finally:
        agent.close()


def test_a_stdio_peer_that_disconnects_mid_frame_ends_the_agent_cleanly(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    for trial in range(3):
        agent = AgentProc(tmp_path / str(trial), "stdio")
        try:
            link = agent.link()
            link.send(Message({"op": "hello"}))
            link.recv(BOUND)
            frame = encode_frame(MSG, link.session, 1, Message({"op": "put"}, rng.randbytes(2000)).encode())
            agent.stream.write(frame[: rng.randint(1, len(frame) - 1)])
            agent.hang_up()
            assert agent.proc.wait(BOUND) == 0 and agent.tracebacks() == 0, agent.stderr()
        finally:
            agent.close()
    print("\nREDTEAM disconnect-mid-frame [stdio]: trials=3 deaths=0 hangs=0 tracebacks=0")


def test_list_pages_a_big_store_and_no_reply_outgrows_a_small_frame(tmp_path: Path, tiny_model: bytes) -> None:
    """9,500 blobs (one `list` reply of them overflowed the frame and killed the agent) page under a 4 KiB frame
    limit; a bench result too big for that limit is an error reply, not a dead agent."""
    blobs = tmp_path / "store" / "blobs"
    blobs.mkdir(parents=True)
    names = set()
    for i in range(9500):
        data = i.to_bytes(4, "little")
        name = hashlib.sha256(data).hexdigest()
        (blobs / name).write_bytes(data)
        names.add(name)
    agent = AgentProc(tmp_path, "stdio", "--max-frame", "4096")
    try:
        tally = Tally("list-and-reply-size")
        session = agent.session()
        tally.trials += 1
        listed = session.list_blobs()
        assert [b["sha256"] for b in listed] == sorted(names) and all(b["size"] == 4 for b in listed)
        link = agent.link()
        page = exchange(agent, link, tally, Message({"op": "list", "limit": 10**6}))
        assert page is not None and 0 < len(page.header["blobs"]) < 9500 and page.header["next"]
        assert len(page.encode()) <= 4096
        up = agent.session().upload(tiny_model)
        link = agent.link()
        reply = exchange(agent, link, tally, Message({"op": "run", "kind": "bench", "model": up.sha256,
                                                      "options": {"runs": 600, "min_seconds": 0}}), timeout=30)
        while reply is not None and reply.op == "progress":
            reply = link.recv(30)
        assert reply is not None and reply.header.get("code") == "reply_too_large", reply
        still_answers(agent, link, tally)
        tally.report(agent)
    finally:
        agent.close()


def test_boards_ping_after_a_host_died_mid_bench_shows_the_board(tmp_path: Path, tiny_model: bytes) -> None:
    """The issue's case end to end, through the paced relay at 115200 baud and pyserial: `boards ping --json` after a
    host died mid-bench prints the agent's hello (it printed the dead run's progress), and a push then works."""
    from edgeship.sdk.boards import Board, open_session
    from edgeship.sdk.emulate.relay import SerialRelay
    from tests.conftest import run_cli

    with SerialRelay(115200, seed=SEED) as relay:
        err = (tmp_path / "agent.err").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "edgeship.device_agent", "--serial", relay.board_port, "--baud", "115200",
                                  "--store", str(tmp_path / "store"), "--run-timeout", "60"], stderr=err, cwd=ROOT)
        try:
            url = f"serial://{relay.host_port}?baud=115200"
            dying = open_session(Board.parse(url))
            up = dying.upload(tiny_model)

            def die(progress: dict[str, Any]) -> None:
                raise _HostDied(progress)

            with pytest.raises(_HostDied):
                dying.run("bench", up.sha256, None, {"runs": 1_000_000, "min_seconds": 30}, progress=die, timeout=BOUND * 2)
            dying.stream.close()  # the host process is gone: no bye
            ping = run_cli("boards", "ping", url, "--json")
            assert ping.returncode == 0, ping.stderr
            info = json.loads(ping.stdout)[0]["result"]  # the hello, not a late progress frame; no protocol op
            assert "op" not in info and info["pid"] == agent.pid and "done" not in info, info
            data = random.Random(SEED).randbytes(5000)
            push = open_session(Board.parse(url))
            try:
                assert push.upload(data).size == len(data)
            finally:
                push.close()
            assert agent.poll() is None and "Traceback" not in (tmp_path / "agent.err").read_text()
            print("\nREDTEAM ping-after-dead-bench [serial relay 115200]: trials=1 deaths=0 hangs=0 tracebacks=0")
        finally:
            agent.terminate()
            agent.wait(10)
            err.close()
