"""Run options and limits on a real agent: delegates, threads, XNNPACK, timeouts, memory, eviction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.client import Session
from tests.test_agent import open_agent


@pytest.fixture(scope="module")
def model(convert_digits: Any) -> bytes:
    return convert_digits("int8").model_path.read_bytes()


@pytest.fixture()
def agent(tmp_path: Path) -> Any:
    session = open_agent(tmp_path / "store")
    yield session
    session.close()


def test_missing_delegate_falls_back_and_says_so_or_fails_when_required(tmp_path: Path, model: bytes) -> None:
    lib = "/nonexistent/libmissing_delegate.so"  # allowed by the board's operator, but not installed
    agent = open_agent(tmp_path / "store", "--allow-delegate", f"missing={lib}")
    try:
        assert agent.info["external_delegates"][0]["loaded"] is False and agent.info["delegates"] == ["xnnpack"]
        up = agent.upload(model)
        fallback = agent.run("bench", up.sha256, None, {"runs": 5, "min_seconds": 0,
                                                        "delegates": [{"name": "missing", "required": False}]})
        assert fallback["status"] == "ok"
        assert any("delegate missing failed to load" in note and "running without it" in note
                   for note in fallback["delegate"]["notes"])
        required = agent.run("bench", up.sha256, None, {"runs": 5, "min_seconds": 0,
                                                        "delegates": [{"name": "missing", "required": True}]})
        assert required["status"] == "delegate_failed" and "delegate missing" in required["message"]
        for text in (required["message"], *fallback["delegate"]["notes"]):  # the board's paths stay on the board
            assert lib not in text and "/nonexistent" not in text
    finally:
        agent.close()


def test_xnnpack_on_off_and_threads_are_reported(agent: Session, model: bytes) -> None:
    up = agent.upload(model)
    on = agent.run("bench", up.sha256, None, {"runs": 5, "min_seconds": 0, "threads": 2})
    off = agent.run("bench", up.sha256, None, {"runs": 5, "min_seconds": 0, "threads": 1, "xnnpack": False})
    assert on["delegate"]["applied"] == ["xnnpack"] and on["delegate"]["delegate_kernels"] >= 1 and on["threads"] == 2
    assert off["delegate"]["applied"] == [] and off["delegate"]["delegate_kernels"] == 0 and off["threads"] == 1
    assert set(off["delegate"]["cpu_ops"]) == {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    assert on["delegate"]["nodes"] == off["delegate"]["nodes"] == 7


def test_a_run_over_its_time_is_stopped_and_classified(agent: Session, model: bytes) -> None:
    up = agent.upload(model)
    result = agent.run("bench", up.sha256, None, {"runs": 10**6, "min_seconds": 2, "timeout": 2})
    assert result["status"] == "timeout" and "2 s" in result["message"]
    assert agent.hello()["agent_version"]


def test_a_run_over_its_memory_limit_is_classified(tmp_path: Path, model: bytes) -> None:
    session = open_agent(tmp_path / "store", "--memory-limit", str(64 << 20))
    try:
        up = session.upload(model)
        result = session.run("bench", up.sha256, None, {"runs": 5, "min_seconds": 0})
        assert result["status"] == "out_of_memory", result
        assert "64 MiB" in result["message"]
        assert session.hello()["agent_version"]
    finally:
        session.close()


def test_least_recently_used_blobs_are_evicted_past_the_quota(agent: Session) -> None:
    blobs = [os.urandom(3 << 20) for _ in range(3)]  # quota is 8 MiB
    first, second = agent.upload(blobs[0]), agent.upload(blobs[1])
    agent.request({"op": "has", "sha256": first.sha256})
    agent.run("bench", first.sha256, None, {"runs": 1, "min_seconds": 0})  # touches `first` (a failed run still reads it)
    third = agent.upload(blobs[2])
    names = {b["sha256"] for b in agent.list_blobs()}
    assert third.sha256 in names and first.sha256 in names and second.sha256 not in names
