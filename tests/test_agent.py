"""The agent under bad input, random model corruption and crashes mid-install: real agent processes."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.device_agent.protocol import MSG, Message, encode_frame
from edgeship.device_agent.store import Store
from edgeship.sdk.client import Session
from edgeship.sdk.errors import AgentError, LinkError
from edgeship.sdk.transport.local import LocalStream

RUN_STATUSES = {"ok", "invalid", "op_version", "unsupported_op", "crashed", "timeout", "out_of_memory", "bad_dataset"}


def open_agent(store: Path, *args: str, env: dict[str, str] | None = None) -> Session:
    old = dict(os.environ)
    if env:
        os.environ.update(env)
    try:
        session = Session(LocalStream(store, ("--quota", str(8 << 20), "--max-frame", str(256 * 1024), *args)))
    finally:
        os.environ.clear()
        os.environ.update(old)
    session.hello()
    return session


@pytest.fixture()
def agent(tmp_path: Path) -> Any:
    session = open_agent(tmp_path / "store")
    yield session
    session.close()


@pytest.fixture(scope="module")
def model(convert_digits: Any) -> bytes:
    return convert_digits("int8").model_path.read_bytes()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def assert_store_sound(session: Session, store: Path) -> None:
    """Still answering, and every stored blob is whole: its bytes hash to its name."""
    assert session.hello()["agent_version"]
    for blob in session.list_blobs():
        data = (store / "blobs" / blob["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == blob["sha256"]
    assert list((store / "tmp").iterdir()) == []


def test_good_model_runs(agent: Session, model: bytes, tmp_path: Path) -> None:
    up = agent.upload(model)
    result = agent.run("bench", up.sha256, None, {"runs": 20, "min_seconds": 0})
    assert result["status"] == "ok" and result["latency_ms"]["count"] >= 20
    assert result["runtime"]["name"] == "ai_edge_litert" and result["model_sha256"] == up.sha256


@pytest.mark.parametrize("mutation", ["truncated", "random_bytes", "header_only"])
def test_corrupt_models_are_classified_and_the_agent_survives(agent: Session, model: bytes, tmp_path: Path,
                                                              mutation: str) -> None:
    bad = {"truncated": model[: len(model) // 3], "random_bytes": os.urandom(len(model)),
           "header_only": b"\x18\x00\x00\x00TFL3"}[mutation]
    up = agent.upload(bad)
    result = agent.run("bench", up.sha256, None, {"runs": 2, "min_seconds": 0, "timeout": 30})
    assert result["status"] in {"invalid", "crashed"}, result
    assert result["message"]
    assert_store_sound(agent, tmp_path / "store")


def test_hash_mismatch_is_refused_and_nothing_is_installed(agent: Session, model: bytes, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    agent.request({"op": "put_begin", "sha256": wrong, "size": len(model), "encoding": "raw", "wire_size": len(model)})
    agent.request({"op": "put", "sha256": wrong, "encoding": "raw", "offset": 0}, model[:100_000])
    with pytest.raises(AgentError) as err:
        agent.request({"op": "put_end", "sha256": wrong, "encoding": "raw"})
    assert err.value.code == "hash_mismatch"
    assert agent.request({"op": "has", "sha256": wrong}).header == {"op": "ok", "installed": False, "offset": 0}
    assert_store_sound(agent, tmp_path / "store")


def test_wrong_dataset_shape_and_dtype(agent: Session, model: bytes, tmp_path: Path) -> None:
    up = agent.upload(model)
    for data in (_npz(x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64)),
                 _npz(x=np.array([["a"] * 64] * 4).reshape(4, 8, 8, 1), y=np.zeros(4, np.int64)),
                 _npz(images=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, np.int64))):
        ds = agent.upload(data)
        result = agent.run("eval", up.sha256, ds.sha256, {})
        assert result["status"] == "bad_dataset", result
    not_npz = agent.upload(b"not a zip file at all")
    result = agent.run("eval", up.sha256, not_npz.sha256, {})
    assert result["status"] in RUN_STATUSES - {"ok"}
    assert_store_sound(agent, tmp_path / "store")


def test_over_quota_bad_names_and_unknown_requests(agent: Session, tmp_path: Path) -> None:
    big = os.urandom(9 << 20)  # quota is 8 MiB
    with pytest.raises(AgentError) as err:
        agent.upload(big)
    assert err.value.code == "over_quota"
    for name in ("../../etc/passwd", "a" * 63 + "/", "a" * 64 + "\n", "A" * 64, "", None, 12):
        for op in ("has", "put_begin", "delete"):
            with pytest.raises(AgentError) as err:
                agent.request({"op": op, "sha256": name, "size": 1, "wire_size": 1})
            assert err.value.code in {"bad_name", "bad_request"}
    with pytest.raises(AgentError) as err:
        agent.run("bench", "../model", None, {})
    assert err.value.code == "bad_name"
    with pytest.raises(AgentError) as err:
        agent.request({"op": "exec", "code": "import os; os.system('id')"})
    assert err.value.code == "unknown_op"
    assert not (tmp_path / "etc").exists()
    assert_store_sound(agent, tmp_path / "store")


def test_unknown_frame_type_and_oversize_frame_get_error_frames(agent: Session, tmp_path: Path) -> None:
    link = agent.link
    link._write(encode_frame(7, link.session, link._next_seq, b""))
    assert agent.link.recv(5.0).header["code"] == "bad_frame_type"
    link._write(encode_frame(MSG, link.session, link._next_seq, b"\0" * (300 * 1024)))
    assert agent.link.recv(5.0).header["code"] == "frame_too_large"
    assert_store_sound(agent, tmp_path / "store")


def test_an_oversize_first_frame_is_answered_too(tmp_path: Path) -> None:
    from edgeship.device_agent.protocol import Link

    stream = LocalStream(tmp_path / "store", ("--max-frame", str(64 * 1024)))
    link = Link(stream, role="host", rto=0.5)
    try:
        link._write(encode_frame(MSG, link.session, 0, b"\0" * (100 * 1024)))  # before any good frame
        reply = link.recv(10.0)
        assert reply.header["code"] == "frame_too_large"
        link.send(Message({"op": "hello"}))
        assert link.recv(10.0).header["agent_version"]
    finally:
        stream.close()


def test_resume_from_the_agents_offset(agent: Session, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    agent.request({"op": "put_begin", "sha256": sha, "size": len(data), "encoding": "raw", "wire_size": len(data)})
    agent.request({"op": "put", "sha256": sha, "encoding": "raw", "offset": 0}, data[:70_000])
    # a duplicated chunk and a chunk at the wrong offset are harmless: the agent answers where it is
    assert agent.request({"op": "put", "sha256": sha, "encoding": "raw", "offset": 0}, data[:70_000]).header["offset"] == 70_000
    assert agent.request({"op": "put", "sha256": sha, "encoding": "raw", "offset": 90_000}, data[90_000:]).header["offset"] == 70_000
    result = agent.upload(data)
    assert result.resumed_from == 70_000 and result.sent_bytes == 130_000 and not result.skipped
    assert agent.upload(data).skipped


@pytest.mark.parametrize("encoding", ["zlib", "raw"])
@pytest.mark.parametrize("step", ["after_write", "after_fsync", "after_rename"])
def test_killed_at_every_install_step_leaves_old_or_new_whole(tmp_path: Path, model: bytes, step: str,
                                                               encoding: str) -> None:
    if encoding == "raw":
        model = os.urandom(len(model))  # incompressible: it travels raw and is installed by rename
    store = tmp_path / "store"
    old = open_agent(store)
    kept = old.upload(b"an older blob that must survive" * 100)
    old.close()
    dying = open_agent(store, env={"EDGESHIP_AGENT_CRASH_AT": step})
    with pytest.raises((LinkError, AgentError)):
        dying.upload(model)
    dying.stream.close()
    # restart: the store recovers, holds the old blob whole and the new one whole or not at all
    Store(store, 8 << 20)
    fresh = open_agent(store)
    installed = fresh.request({"op": "has", "sha256": hashlib.sha256(model).hexdigest()}).header["installed"]
    assert installed == (step == "after_rename")
    assert fresh.request({"op": "has", "sha256": kept.sha256}).header["installed"]
    assert_store_sound(fresh, store)
    assert fresh.upload(model).sha256 == hashlib.sha256(model).hexdigest()  # and a new push completes
    fresh.close()


def _mutations(model: bytes, count: int, seed: int) -> list[bytes]:
    """Bit flips, truncations and spliced bytes of a valid model, from a fixed seed."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        b = bytearray(model)
        kind = i % 3
        if kind == 0:
            for _ in range(rng.randint(1, 32)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b = b[: rng.randrange(8, len(b))]
        else:
            start = rng.randrange(len(b))
            length = rng.randint(1, 4096)
            src = rng.randrange(len(b))
            b[start : start + length] = b[src : src + length] if rng.random() < 0.5 else os.urandom(length)
        out.append(bytes(b))
    return out


def test_fuzz_corpus_of_400_mutations_never_kills_the_agent(tmp_path: Path, model: bytes) -> None:
    corpus = _mutations(model, 400, seed=2026)
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    failures: list[str] = []

    def work(part: list[bytes], idx: int) -> None:
        session = open_agent(tmp_path / f"store{idx}")
        try:
            pid = session.info["pid"]
            for blob in part:
                up = session.upload(blob)
                result = session.run("bench", up.sha256, None, {"runs": 3, "warmup": 0, "min_seconds": 0, "timeout": 20})
                with lock:
                    statuses[result["status"]] = statuses.get(result["status"], 0) + 1
                session.delete(up.sha256)
            info = session.hello()
            if info["pid"] != pid:
                failures.append("agent restarted")
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            session.close()

    threads = [threading.Thread(target=work, args=(corpus[i::2], i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(statuses.values()) == 400
    assert set(statuses) <= RUN_STATUSES, statuses
    assert statuses.get("invalid", 0) + statuses.get("crashed", 0) > 0  # the corpus really hurts


def test_zlib_upload_is_smaller_on_the_wire(agent: Session) -> None:
    data = bytes(300_000)
    up = agent.upload(data)
    assert up.encoding == "zlib" and up.wire_size == len(zlib.compress(data, 6)) and up.sent_bytes < 2000
