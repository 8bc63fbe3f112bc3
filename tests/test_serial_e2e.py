"""The agent on a real pty serial line, paced at 115200 baud by a relay that injects faults."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.boards import Board, open_session
from edgeship.sdk.emulate.relay import BOARD_TO_HOST, HOST_TO_BOARD, SerialRelay
from edgeship.sdk.errors import LinkError
from tests.conftest import run_cli

pytestmark = pytest.mark.emulated  # an agent behind a pty relay paced at 115200 baud

BAUD = 115200


@pytest.fixture()
def line(tmp_path: Path) -> Any:
    """A relay between two ptys, with the agent serving on the board end."""
    with SerialRelay(BAUD, seed=11) as relay:
        agent = subprocess.Popen([sys.executable, "-m", "edgeship.device_agent", "--serial", relay.board_port, "--baud", str(BAUD),
                                  "--store", str(tmp_path / "store")], stderr=subprocess.PIPE)
        try:
            yield relay, tmp_path / "store"
        finally:
            agent.terminate()
            agent.wait(10)
            agent.stderr.close()  # type: ignore[union-attr]
        assert agent.returncode in (0, -15), "the agent died on the line"


def _board(relay: SerialRelay) -> Board:
    return Board.parse(f"serial://{relay.host_port}?baud={BAUD}")


def _blob(store: Path, sha: str) -> bytes:
    return (store / "blobs" / sha).read_bytes()


def test_push_and_eval_over_serial_match_the_host(line: Any, convert_digits: Any, digits: Path) -> None:
    relay, store = line
    bundle = convert_digits("int8").bundle
    board = f"serial://{relay.host_port}?baud={BAUD}"
    proc = run_cli("eval", str(bundle), "--board", board, "--data", str(digits / "test.npz"), "--json", "--min-agreement", "100")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]["result"]
    host = json.loads(run_cli("eval-host", str(bundle), "--data", str(digits / "test.npz"), "--json").stdout)
    assert doc["result"]["accuracy"] == host["accuracy"] and doc["result"]["agreement"]["argmax_agreement"] == 1.0
    model = (bundle / "model.tflite").read_bytes()
    assert hashlib.sha256(_blob(store, doc["model_sha256"])).hexdigest() == hashlib.sha256(model).hexdigest()
    again = json.loads(run_cli("push", str(bundle), "--board", board, "--json").stdout)[0]["result"]["upload"]
    assert again["skipped"] and again["sent_bytes"] == 0  # a second push sends no model bytes


@pytest.mark.parametrize("faults", [
    {"drop_prob": 0.0001},
    {"flip_prob": 0.0001},
    {"drop_at": [5000, 9000], "flip_at": {12000: 0x10}, "stall_at": {15000: 2.5}},
], ids=["dropped-bytes", "flipped-bits", "drop-flip-stall"])
def test_faulty_line_completes_with_a_matching_hash(line: Any, faults: dict[str, Any]) -> None:
    relay, store = line
    relay.set_faults(HOST_TO_BOARD, **faults)
    relay.set_faults(BOARD_TO_HOST, **{k: v for k, v in faults.items() if k.endswith("_prob")})
    data = os.urandom(24_000)  # incompressible: every byte crosses the line
    session = open_session(_board(relay))
    try:
        up = session.upload(data)
    finally:
        session.close()
    assert _blob(store, up.sha256) == data
    assert relay.injected, "the relay injected no fault"


def test_cut_line_fails_clearly_and_the_next_push_resumes(line: Any) -> None:
    relay, store = line
    data = os.urandom(60_000)
    relay.set_faults(HOST_TO_BOARD, cut_at=30_000)
    session = open_session(_board(relay))
    t0 = time.monotonic()
    with pytest.raises(LinkError, match=r"retries|answer"):
        session.upload(data)
    assert time.monotonic() - t0 < 40
    session.stream.close()
    relay.reconnect()
    relay.clear_faults()
    session = open_session(_board(relay))
    try:
        up = session.upload(data)
    finally:
        session.close()
    assert up.resumed_from > 10_000 and up.sent_bytes == len(data) - up.resumed_from
    assert _blob(store, up.sha256) == data


def test_dead_line_is_a_one_line_error(tmp_path: Path) -> None:
    with SerialRelay(BAUD) as relay:  # nobody serves on the board end
        proc = run_cli("boards", "ping", f"serial://{relay.host_port}?baud={BAUD}")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "retries" in proc.stderr or "answer" in proc.stderr
