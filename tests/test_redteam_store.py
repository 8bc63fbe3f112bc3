"""Red team: the agent's store under kill -9, two agents on one store, quota and disk limits, tampering.

Every scenario drives real agent processes (`python -m edgeship.device_agent --stdio --store DIR`) and
counts deaths (an agent that exited without being killed or told `bye`), hangs (a request
without an answer, or the scenario's watchdog firing), corrupt installs (a file in `blobs/`
that does not hash to its name), losses (a push that should have completed and did not) and
tracebacks (on an agent's stderr); each must be zero. Seeds fix the trials, and each scenario
prints its figures on a `REDTEAM` line (`pytest -s`) for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edgeship.device_agent.protocol import Link, Message
from edgeship.sdk.client import LinkProfile, Session
from edgeship.sdk.errors import AgentError, LinkError
from edgeship.sdk.transport.local import LocalStream

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_SECONDS = 60.0  # per scenario: past it every agent is killed and the scenario counts a hang


class AgentStream(LocalStream):
    """The `local` board's stream, but keeping the agent's stderr (a traceback there is a finding)."""

    def __init__(self, store: Path, args: tuple[str, ...], umask: int | None = None) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the agent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        old = os.umask(umask) if umask is not None else None
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgeship.device_agent", "--stdio", "--store", str(store), *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        finally:
            if old is not None:
                os.umask(old)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdout.fileno()
        self._out = self.proc.stdin

    def stderr_text(self) -> str:
        if self.stderr.closed:
            return self._stderr_seen
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def close(self) -> None:
        super().close()
        if not self.stderr.closed:  # the agent has exited: keep what it wrote, close the file
            self._stderr_seen = self.stderr_text()
            self.stderr.close()


@dataclass
class Tally:
    name: str
    trials: int = 0
    deaths: int = 0
    hangs: int = 0
    corrupt_installs: int = 0
    losses: int = 0
    tracebacks: int = 0
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, note: str = "") -> None:
        """Add one to a figure (hosts in threads count at once)."""
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)
            if note:
                self.notes.append(note)

    def line(self) -> str:
        return (f"REDTEAM {self.name}: trials={self.trials} deaths={self.deaths} hangs={self.hangs} "
                f"corrupt_installs={self.corrupt_installs} losses={self.losses} tracebacks={self.tracebacks}")


class Lab:
    """Starts agents, kills them on purpose, and at the end counts what died, hung or left a traceback."""

    def __init__(self, tally: Tally, tmp: Path) -> None:
        self.tally = tally
        self.tmp = tmp
        self.sessions: list[Session] = []
        self.killed: set[int] = set()
        self.messages: list[str] = []  # every agent error message seen: none may quote a board path
        self._lock = threading.Lock()
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        self.tally.count("hangs", "the watchdog fired")
        for s in list(self.sessions):
            self.kill(s)

    def start(self, store: Path, quota: int, *args: str, chunk: int | None = None, umask: int | None = None) -> Session:
        stream = AgentStream(store, ("--quota", str(quota), *args), umask=umask)
        session = Session(stream, LinkProfile(chunk=chunk) if chunk else None)
        with self._lock:
            self.sessions.append(session)
        session.hello()
        return session

    def kill(self, session: Session) -> None:
        proc = session.stream.proc
        with self._lock:
            self.killed.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self, session: Session) -> None:
        if session.stream.proc.poll() is None:
            session.close()
        session.stream.close()

    def error(self, exc: AgentError) -> str:
        """Record an agent error (for the path check) and return its code."""
        self.messages.append(str(exc))
        return exc.code

    def finish(self) -> None:
        self._watchdog.cancel()
        for s in self.sessions:
            self.close(s)
            code = s.stream.proc.wait()
            if s.stream.proc.pid not in self.killed and code != 0:
                self.tally.deaths += 1
                self.tally.notes.append(f"agent exited {code}")
            if "Traceback" in s.stream.stderr_text():
                self.tally.tracebacks += 1
                self.tally.notes.append(s.stream.stderr_text()[-800:])

    def leaked_paths(self) -> list[str]:
        return [m for m in self.messages if str(self.tmp) in m or "/blobs" in m or "/partial" in m]


@pytest.fixture()
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    tally = Tally(request.node.name)
    lab = Lab(tally, tmp_path)
    try:
        yield lab
    finally:
        lab.finish()
        print("\n" + tally.line())
    assert lab.leaked_paths() == [], f"agent errors quote board paths: {lab.leaked_paths()[:3]}"
    assert (tally.deaths, tally.hangs, tally.corrupt_installs, tally.losses, tally.tracebacks) == (0, 0, 0, 0, 0), \
        f"{tally.line()}\n" + "\n".join(tally.notes)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs (a disk that really fills up, or that can be made read-only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], check=True)


def corrupt_installs(store: Path) -> int:
    """Files in blobs/ whose bytes do not hash to their name."""
    return sum(hashlib.sha256(p.read_bytes()).hexdigest() != p.name for p in (store / "blobs").iterdir())


def compressible(rng: random.Random, n: int) -> bytes:
    """4 bits of entropy per byte: zlib halves it, so it travels zlib in several chunks."""
    return bytes(0x40 | (b & 0x0F) for b in rng.randbytes(n))


def push(lab: Lab, session: Session, data: bytes, tally: Tally, progress: Callable[[int, int], None] | None = None) -> bool:
    """A push that must complete: anything else is a loss (or a hang, when the agent stopped answering)."""
    try:
        up = session.upload(data, progress)
    except LinkError as exc:
        if "did not answer" in str(exc):
            tally.count("hangs")
        tally.count("losses", f"push lost: {exc}")
        return False
    except AgentError as exc:
        lab.error(exc)
        tally.count("losses", f"push lost: {exc.code}: {exc}")
        return False
    return up.sha256 == hashlib.sha256(data).hexdigest()


def installed(session: Session, data: bytes) -> bool:
    return bool(session.request({"op": "has", "sha256": hashlib.sha256(data).hexdigest()}).header["installed"])


# -- kill -9 -------------------------------------------------------------------------------------
def _push_and_kill(lab: Lab, session: Session, data: bytes, kill_at: float, delay: float) -> None:
    """Push `data` and kill -9 the agent `delay` s after the host saw `kill_at` of it acknowledged."""
    timers: list[threading.Timer] = []

    def progress(done: int, total: int) -> None:
        if not timers and done >= kill_at * total:
            timers.append(threading.Timer(delay, lab.kill, (session,)))
            timers[0].start()

    with contextlib.suppress(LinkError):  # the expected end of this push
        session.upload(data, progress)
    for t in timers:
        t.join()
    lab.kill(session)  # killed after it finished, if the timer came late: the next trial must cope either way


def test_kill_9_at_random_points_of_uploads(lab: Lab, tmp_path: Path) -> None:
    """30 uploads (15 raw, 15 zlib), each agent killed at a seeded point: mid-put, or around put_end."""
    rng = random.Random(1101)
    store = tmp_path / "store"
    tally = lab.tally
    previous: bytes | None = None
    for trial in range(30):
        tally.trials += 1
        size = rng.randint(150_000, 400_000)
        data = rng.randbytes(size) if trial % 2 == 0 else compressible(rng, size)
        session = lab.start(store, 32 << 20)
        # the killed push resumes and completes on the next agent
        if previous is not None and push(lab, session, previous, tally) and not installed(session, previous):
            tally.count("losses", "a completed push is not installed")
        tally.corrupt_installs += corrupt_installs(store)
        kill_at = 1.0 if rng.random() < 0.3 else rng.random()  # 1.0: after the last put, i.e. during put_end
        _push_and_kill(lab, session, data, kill_at, rng.uniform(0.0, 0.02))
        previous = data
    final = lab.start(store, 32 << 20)
    assert previous is not None
    push(lab, final, previous, tally)
    tally.corrupt_installs += corrupt_installs(store)
    assert final.request({"op": "has", "sha256": hashlib.sha256(previous).hexdigest()}).header["installed"]
    assert list((store / "tmp").iterdir()) == []  # what the killed agents left was recovered


# -- two agents on one store ------------------------------------------------------------------------
def _race(lab: Lab, store: Path, hosts: dict[Session, list[bytes]], newcomer_delay: float) -> None:
    """Each host pushes its blobs in its own thread, all at once, while a third agent starts on the store."""
    gate = threading.Barrier(len(hosts) + 1)

    def host(session: Session) -> None:
        gate.wait()
        for data in hosts[session]:
            push(lab, session, data, lab.tally)

    def newcomer() -> None:
        gate.wait()
        threading.Event().wait(newcomer_delay)
        lab.close(lab.start(store, 64 << 20))  # its start-up recovery runs while the others install

    threads = [threading.Thread(target=host, args=(s,)) for s in hosts]
    threads.append(threading.Thread(target=newcomer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_two_agents_on_one_store_push_the_same_and_different_blobs(lab: Lab, tmp_path: Path) -> None:
    """20 rounds: two hosts push one blob at once and one each of their own while a third agent starts up."""
    rng = random.Random(1102)
    store = tmp_path / "store"
    tally = lab.tally
    a = lab.start(store, 64 << 20, chunk=16 * 1024)
    b = lab.start(store, 64 << 20, chunk=16 * 1024)
    pushed: list[bytes] = []
    for rnd in range(20):
        n = rng.randint(60_000, 250_000)
        shared = rng.randbytes(n) if rnd % 2 else compressible(rng, n)
        hosts = {a: [shared, rng.randbytes(100_000)], b: [shared, compressible(rng, 120_000)]}
        _race(lab, store, hosts, rng.uniform(0.0, 0.05))
        tally.trials += 1
        pushed += [shared, hosts[a][1], hosts[b][1]]
        tally.corrupt_installs += corrupt_installs(store)
    for data in pushed:  # nothing pushed was lost
        if not (installed(a, data) and installed(b, data)):
            tally.count("losses", "a pushed blob is not installed")


def test_an_upload_in_progress_is_not_evicted_and_an_abandoned_one_is(lab: Lab, tmp_path: Path) -> None:
    """Reservations: a second host cannot evict a live upload; an abandoned one ages out."""
    rng = random.Random(1103)
    store = tmp_path / "store"
    quota = 1 << 20
    a = lab.start(store, quota)
    b = lab.start(store, quota)
    x, y, z = rng.randbytes(600_000), rng.randbytes(600_000), rng.randbytes(600_000)
    sx = hashlib.sha256(x).hexdigest()
    a.request({"op": "put_begin", "sha256": sx, "size": len(x), "encoding": "raw", "wire_size": len(x)})
    a.request({"op": "put", "sha256": sx, "encoding": "raw", "offset": 0}, x[:300_000])
    lab.tally.trials += 1
    with pytest.raises(AgentError) as err:  # B's 600 kB do not fit beside A's 600 kB reservation
        b.upload(y)
    assert lab.error(err.value) == "over_quota"
    assert a.request({"op": "put", "sha256": sx, "encoding": "raw", "offset": 300_000}, x[300_000:]).header["offset"] == len(x)
    assert a.request({"op": "put_end", "sha256": sx, "encoding": "raw"}).header["size"] == len(x)
    # a host begins z, sends half and dies with its agent; once the upload is old, it gives way
    c = lab.start(store, quota)
    sz = hashlib.sha256(z).hexdigest()
    lab.close(a)
    c.request({"op": "put_begin", "sha256": sz, "size": len(z), "encoding": "raw", "wire_size": len(z)})
    c.request({"op": "put", "sha256": sz, "encoding": "raw", "offset": 0}, z[:200_000])
    lab.kill(c)
    with pytest.raises(AgentError) as err:  # still recent: a cut line resumes it, so it is kept for now
        b.upload(y)
    assert lab.error(err.value) == "over_quota"
    for p in (store / "partial").iterdir():
        os.utime(p, (0, 0))  # abandoned long ago
    lab.tally.trials += 1
    if push(lab, b, y, lab.tally) and not installed(b, y):
        lab.tally.count("losses", "a completed push is not installed")
    assert not (store / "partial" / f"{sz}.raw").exists()
    lab.tally.corrupt_installs += corrupt_installs(store)


# -- the quota -------------------------------------------------------------------------------------
def _zlib_bomb(decoded: int) -> bytes:
    packer = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(decoded >> 20)) + packer.flush()


def _raw_put(session: Session, sha: str, encoding: str, wire: bytes, chunk: int = 64 * 1024) -> None:
    for off in range(0, len(wire), chunk):
        session.request({"op": "put", "sha256": sha, "encoding": encoding, "offset": off}, wire[off:off + chunk])


def test_the_quota_holds_against_zlib_bombs_lying_sizes_and_puts_without_begin(lab: Lab, tmp_path: Path) -> None:
    """A 4 MiB quota on an 8 MiB tmpfs: a 64 MiB zlib bomb, size=0 with a huge wire_size, put without begin."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        store = disk / "store"
        s = lab.start(store, 4 << 20)
        bomb = _zlib_bomb(64 << 20)
        sha = hashlib.sha256(b"anything").hexdigest()
        for announced in (1 << 20, 3 << 20):  # decoding stops at the announced size, far below the disk
            lab.tally.trials += 1
            s.request({"op": "put_begin", "sha256": sha, "size": announced, "encoding": "zlib", "wire_size": len(bomb)})
            _raw_put(s, sha, "zlib", bomb)
            with pytest.raises(AgentError) as err:
                s.request({"op": "put_end", "sha256": sha, "encoding": "zlib"})
            assert lab.error(err.value) == "hash_mismatch" and "more than the announced" in str(err.value)
            assert list((store / "tmp").iterdir()) == [] and list((store / "partial").iterdir()) == []
        for encoding, size, wire in (("raw", 0, 12 << 20), ("zlib", 0, 12 << 20), ("raw", 100, 99), ("zlib", 1 << 20, 4 << 20)):
            lab.tally.trials += 1
            with pytest.raises(AgentError) as err:
                s.request({"op": "put_begin", "sha256": sha, "size": size, "encoding": encoding, "wire_size": wire})
            assert lab.error(err.value) == "bad_request", (encoding, size, wire)
        for bad in (True, -1, 1.5, float("inf"), "7", None):
            with pytest.raises(AgentError) as err:
                s.request({"op": "put_begin", "sha256": sha, "size": bad, "encoding": "raw", "wire_size": 10})
            assert lab.error(err.value) == "bad_request"
        # put without a begin is refused, in this connection and in a later one
        lab.tally.trials += 1
        other = hashlib.sha256(b"never begun").hexdigest()
        with pytest.raises(AgentError) as err:
            s.request({"op": "put", "sha256": other, "encoding": "raw", "offset": 0}, b"x" * 1000)
        assert lab.error(err.value) == "no_upload"
        data = random.Random(1104).randbytes(300_000)
        ds = hashlib.sha256(data).hexdigest()
        s.request({"op": "put_begin", "sha256": ds, "size": len(data), "encoding": "raw", "wire_size": len(data)})
        s.request({"op": "put", "sha256": ds, "encoding": "raw", "offset": 0}, data[:100_000])
        lab.kill(s)
        later = lab.start(store, 4 << 20)
        with pytest.raises(AgentError) as err:  # the persisted begin still bounds a later connection's put
            later.request({"op": "put", "sha256": ds, "encoding": "raw", "offset": 100_000}, data[100_000:] + b"extra")
        assert lab.error(err.value) == "bad_request"
        assert later.request({"op": "put", "sha256": ds, "encoding": "raw", "offset": 100_000},
                             data[100_000:200_000]).header["offset"] == 200_000  # and resumes it
        up = later.upload(data)
        assert up.resumed_from == 200_000 and installed(later, data)
        # two reservations cannot both fit: the second begin is refused while the first is in progress
        lab.tally.trials += 1
        r1, r2 = (random.Random(i).randbytes(2_500_000) for i in (1, 2))
        later.request({"op": "delete", "sha256": ds})
        later.request({"op": "put_begin", "sha256": hashlib.sha256(r1).hexdigest(), "size": len(r1),
                       "encoding": "raw", "wire_size": len(r1)})
        second = lab.start(store, 4 << 20)
        with pytest.raises(AgentError) as err:
            second.request({"op": "put_begin", "sha256": hashlib.sha256(r2).hexdigest(), "size": len(r2),
                            "encoding": "raw", "wire_size": len(r2)})
        assert lab.error(err.value) == "over_quota"
        assert later.upload(r1).resumed_from == 0 and installed(later, r1)
        # and a full quota evicts least recently used blobs for a new push
        lab.tally.trials += 1
        if push(lab, second, r2, lab.tally) and not installed(second, r2):
            lab.tally.count("losses", "a completed push is not installed")
        assert second.hello()["store"]["used"] <= 4 << 20
        lab.tally.corrupt_installs += corrupt_installs(store)
        for session in list(lab.sessions):
            lab.close(session)


# -- environment faults ------------------------------------------------------------------------------
def test_a_full_disk_is_disk_full_and_the_agent_survives(lab: Lab, tmp_path: Path) -> None:
    """A 2 MiB tmpfs under a 64 MiB quota: a raw upload and a zlib install run out of disk."""
    rng = random.Random(1105)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        store = disk / "store"
        s = lab.start(store, 64 << 20)
        lab.tally.trials += 1
        big = rng.randbytes(3 << 20)
        with pytest.raises(AgentError) as err:
            s.upload(big)
        assert lab.error(err.value) == "disk_full", err.value
        # Same session: the replies to the puts still in flight were read, so delete gets its own reply.
        assert s.delete(hashlib.sha256(big).hexdigest())  # the user frees the space the failed push holds
        lab.tally.trials += 1
        base = rng.randbytes(1 << 20)
        assert push(lab, s, base, lab.tally)
        packed = compressible(rng, 1_500_000)
        with pytest.raises(AgentError) as err:  # 1.5 MB decoded beside 1 MiB: the decoded copy does not fit
            s.upload(packed)
        assert lab.error(err.value) == "disk_full", err.value
        lab.close(s)
        s = lab.start(store, 64 << 20)
        assert list((store / "tmp").iterdir()) == [] and not installed(s, packed)
        s.delete(hashlib.sha256(packed).hexdigest())
        assert s.hello()["agent_version"]
        lab.tally.trials += 1
        small = rng.randbytes(200_000)
        if push(lab, s, small, lab.tally) and not installed(s, small):
            lab.tally.count("losses", "a completed push is not installed")
        lab.tally.corrupt_installs += corrupt_installs(store)
        for session in list(lab.sessions):
            lab.close(session)


def test_a_read_only_store_says_so_and_still_serves(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(1106)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        store = disk / "store"
        s = lab.start(store, 8 << 20)
        kept = rng.randbytes(200_000)
        assert push(lab, s, kept, lab.tally)
        lab.close(s)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            ro = lab.start(store, 8 << 20)  # starting on a read-only store is not a death
            lab.tally.trials += 1
            assert installed(ro, kept) and [b["sha256"] for b in ro.list_blobs()] == [hashlib.sha256(kept).hexdigest()]
            with pytest.raises(AgentError) as err:
                ro.upload(rng.randbytes(100_000))
            assert lab.error(err.value) == "store_read_only"
            with pytest.raises(AgentError) as err:
                ro.delete(hashlib.sha256(kept).hexdigest())
            assert lab.error(err.value) == "store_read_only"
            assert ro.hello()["store"]["used"] == len(kept)
            lab.close(ro)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        lab.tally.corrupt_installs += corrupt_installs(store)


def test_tampered_partials_and_blobs_are_never_installed_or_loaded(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(1107)
    store = tmp_path / "store"
    s = lab.start(store, 8 << 20)
    # a tampered partial: the install refuses it, discards it, and the next push completes
    data = rng.randbytes(300_000)
    sha = hashlib.sha256(data).hexdigest()
    s.request({"op": "put_begin", "sha256": sha, "size": len(data), "encoding": "raw", "wire_size": len(data)})
    s.request({"op": "put", "sha256": sha, "encoding": "raw", "offset": 0}, data[:150_000])
    with (store / "partial" / f"{sha}.raw").open("r+b") as f:
        f.seek(1000)
        f.write(b"\xff\x00")
    lab.tally.trials += 1
    with pytest.raises(AgentError) as err:
        s.upload(data)
    assert lab.error(err.value) == "hash_mismatch"
    assert not installed(s, data) and not (store / "blobs" / sha).exists()
    if push(lab, s, data, lab.tally) and not installed(s, data):
        lab.tally.count("losses", "a completed push is not installed")
    # a partial grown past its announced size restarts at 0 instead of being trusted
    other = rng.randbytes(100_000)
    so = hashlib.sha256(other).hexdigest()
    s.request({"op": "put_begin", "sha256": so, "size": len(other), "encoding": "raw", "wire_size": len(other)})
    (store / "partial" / f"{so}.raw").write_bytes(os.urandom(150_000))
    assert s.request({"op": "has", "sha256": so}).header["offset"] == 0
    lab.tally.trials += 1
    up = s.upload(other)
    assert up.resumed_from == 0 and installed(s, other)
    # a tampered installed blob, size and mtime kept: has says absent, run never loads it, a push restores it
    for victim in (data, other):
        lab.tally.trials += 1
        path = store / "blobs" / hashlib.sha256(victim).hexdigest()
        st = path.stat()
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        path.write_bytes(bytes(blob))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        if victim is data:
            assert not installed(s, victim)
        with pytest.raises(AgentError) as err:
            s.run("bench", hashlib.sha256(victim).hexdigest(), None, {"runs": 1})
        assert lab.error(err.value) in {"not_found", "corrupt_blob"}
        up = s.upload(victim)
        assert not up.skipped and installed(s, victim)
    # a tampered dataset is refused before any worker starts
    dataset = rng.randbytes(50_000)
    s.upload(dataset)
    dpath = store / "blobs" / hashlib.sha256(dataset).hexdigest()
    dpath.write_bytes(dataset[::-1])
    lab.tally.trials += 1
    with pytest.raises(AgentError) as err:
        s.run("eval", sha, hashlib.sha256(dataset).hexdigest(), {})
    assert lab.error(err.value) == "corrupt_blob"
    lab.tally.corrupt_installs += corrupt_installs(store)


def test_store_files_are_private_whatever_the_umask(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(1108)
    store = tmp_path / "store"
    s = lab.start(store, 8 << 20, umask=0)
    lab.tally.trials += 1
    assert push(lab, s, rng.randbytes(100_000), lab.tally)
    assert push(lab, s, compressible(rng, 200_000), lab.tally)
    part = rng.randbytes(50_000)
    sp = hashlib.sha256(part).hexdigest()
    s.request({"op": "put_begin", "sha256": sp, "size": len(part), "encoding": "raw", "wire_size": len(part)})
    s.request({"op": "put", "sha256": sp, "encoding": "raw", "offset": 0}, part[:10_000])
    paths = [store, *store.rglob("*")]
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}
    assert any(p.parent.name == "blobs" for p in paths) and any(p.name.endswith(".begin") for p in paths)


def test_a_raw_link_gets_error_frames_for_hostile_store_requests(lab: Lab, tmp_path: Path) -> None:
    """Fields of the wrong type, past the limits, or naming paths: one error frame each, no path in it."""
    store = tmp_path / "store"
    stream = AgentStream(store, ("--quota", str(1 << 20)))
    link = Link(stream, role="host")
    sha = hashlib.sha256(b"x").hexdigest()
    requests: list[dict[str, Any]] = [
        {"op": "put", "sha256": sha, "offset": float("inf")},
        {"op": "put", "sha256": sha, "offset": -5},
        {"op": "put", "sha256": sha, "offset": "0"},
        {"op": "put_end", "sha256": sha, "encoding": "zlib"},
        {"op": "has", "sha256": sha, "encoding": "../x"},
        {"op": "put_begin", "sha256": sha, "size": 1 << 40, "wire_size": 1 << 40},
        {"op": "put_begin", "sha256": sha, "size": 10, "encoding": ["raw"], "wire_size": 10},
        {"op": "delete", "sha256": "/etc/passwd"},
    ]
    try:
        for req in requests:
            lab.tally.trials += 1
            link.send(Message(req, b"body"))
            reply = link.recv(20.0)
            assert reply.op == "error", (req, reply.header)
            lab.messages.append(str(reply.header.get("message")))
        link.send(Message({"op": "hello"}))
        assert link.recv(20.0).header["agent_version"]
    finally:
        stream.close()
        if stream.proc.returncode != 0:
            lab.tally.count("deaths", f"agent exited {stream.proc.returncode}")
        if "Traceback" in stream.stderr_text():
            lab.tally.count("tracebacks", stream.stderr_text()[-800:])


def test_the_worker_refuses_a_dataset_that_changed_after_the_store_checked_it(tmp_path: Path) -> None:
    """The worker re-hashes what it loads: a dataset swapped between `store.get` and the run is refused."""
    from edgeship.device_agent.worker import _run

    model, dataset = os.urandom(1000), os.urandom(1000)
    (tmp_path / "m").write_bytes(model)
    (tmp_path / "d").write_bytes(dataset[::-1])  # what is on disk by the time the worker reads it
    result = _run({"kind": "eval", "model_path": str(tmp_path / "m"), "model_sha256": hashlib.sha256(model).hexdigest(),
                   "dataset_path": str(tmp_path / "d"), "dataset_sha256": hashlib.sha256(dataset).hexdigest()})
    assert result == {"status": "bad_dataset", "message": "dataset bytes do not match their sha256; refusing to load"}
