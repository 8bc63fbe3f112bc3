"""The digits int8 bundle on real boards: the local agent and an agent reached through a real sshd."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.emulate.sshd import Sshd
from tests.conftest import run_cli

PYTHON = sys.executable  # the board's interpreter: this venv has numpy and ai-edge-litert


@pytest.fixture(scope="module")
def bundle(convert_digits: Any) -> Path:
    return Path(convert_digits("int8").bundle)


@pytest.fixture(scope="module")
def host_eval(bundle: Path, digits: Path) -> dict[str, Any]:
    proc = run_cli("eval-host", str(bundle), "--data", str(digits / "test.npz"), "--json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _eval_on(board: str, bundle: Path, digits: Path, *extra: str) -> dict[str, Any]:
    proc = run_cli("eval", str(bundle), "--board", board, "--data", str(digits / "test.npz"), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)  # one board: a list of one entry
    return dict(entry["result"])


def test_local_board_matches_the_host(bundle: Path, digits: Path, host_eval: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_LOCAL_STORE", str(tmp_path / "local"))
    doc = _eval_on("local", bundle, digits, "--min-accuracy", "90", "--min-agreement", "100")
    r = doc["result"]
    assert r["status"] == "ok" and r["accuracy"] == host_eval["accuracy"]
    assert r["agreement"]["argmax_agreement"] == 1.0 and r["agreement"]["max_abs_error"] == 0.0
    assert doc["host"]["accuracy"] == host_eval["accuracy"]
    assert r["runtime"]["name"] == "ai_edge_litert" and r["model_sha256"] == doc["model_sha256"]
    push = json.loads(run_cli("push", str(bundle), "--json").stdout)[0]["result"]
    assert push["upload"]["skipped"] and push["upload"]["sent_bytes"] == 0


def test_gates_fail_with_one_line_and_exit_3(bundle: Path, digits: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_LOCAL_STORE", str(tmp_path / "local"))
    proc = run_cli("eval", str(bundle), "--data", str(digits / "test.npz"), "--min-accuracy", "99.9", "-q")
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--min-accuracy 99.9" in proc.stderr
    proc = run_cli("bench", str(bundle), "--runs", "20", "--max-p90-ms", "0.000001", "-q")
    assert proc.returncode == 3 and "--max-p90-ms" in proc.stderr


@pytest.fixture()
def sshd(tmp_path: Path) -> Any:
    with Sshd(tmp_path / "sshd") as server:
        yield server


def _ssh_board(server: Sshd, known_hosts: Path, key: Path | None = None) -> str:
    store = known_hosts.parent / "board-store"  # this test's own store on the board
    return (f"ssh://{server.user}@127.0.0.1:{server.port}?python={PYTHON}"
            f"&key={key or server.user_key_path}&known_hosts={known_hosts}&store={store}")


def test_ssh_board_matches_the_host(sshd: Sshd, bundle: Path, digits: Path, host_eval: dict[str, Any],
                                    tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    board = _ssh_board(sshd, known)
    refused = run_cli("push", str(bundle), "--board", board, "-q")
    assert refused.returncode != 0 and "--accept-new-host" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not known.exists()

    first = run_cli("push", str(bundle), "--board", board, "--accept-new-host", "--json")
    assert first.returncode == 0, first.stderr
    up = json.loads(first.stdout)[0]["result"]["upload"]
    assert not up["skipped"] and up["sent_bytes"] > 0 and known.exists()

    again = json.loads(run_cli("push", str(bundle), "--board", board, "--json").stdout)[0]["result"]["upload"]
    assert again["skipped"] and again["sent_bytes"] == 0  # unchanged model: no model bytes sent

    doc = _eval_on(board, bundle, digits, "--min-agreement", "100")
    r = doc["result"]
    assert r["accuracy"] == host_eval["accuracy"] and r["agreement"]["argmax_agreement"] == 1.0
    assert doc["agent"]["runtime"]["name"] == "ai_edge_litert"

    bench = run_cli("bench", str(bundle), "--board", board, "--runs", "50", "--json")
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)[0]["result"]["result"]["latency_ms"]["count"] >= 50

    ping = json.loads(run_cli("boards", "ping", board, "--json").stdout)[0]["result"]
    assert ping["agent_version"] and ping["rtt_ms"] > 0


def test_ssh_changed_host_key_and_wrong_user_key_are_refused(sshd: Sshd, bundle: Path, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    assert run_cli("boards", "ping", _ssh_board(sshd, known), "--accept-new-host").returncode == 0
    stranger = sshd.make_key("stranger")
    wrong = run_cli("boards", "ping", _ssh_board(sshd, known, stranger))
    assert wrong.returncode != 0 and "edgeship: error:" in wrong.stderr and str(stranger) in wrong.stderr
    sshd.rotate_host_key()
    changed = run_cli("boards", "ping", _ssh_board(sshd, known), "--accept-new-host")
    assert changed.returncode != 0 and "CHANGED" in changed.stderr.upper()
    assert len(changed.stderr.strip().splitlines()) == 1


def test_unknown_board_and_bad_bundle(tmp_path: Path, digits: Path) -> None:
    proc = run_cli("push", str(tmp_path), "--board", "nowhere")
    assert proc.returncode == 2 and "unknown board 'nowhere'" in proc.stderr
    proc = run_cli("push", str(tmp_path))
    assert proc.returncode == 1 and "not a bundle" in proc.stderr
