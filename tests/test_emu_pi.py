"""emu-pi: the agent zipapp on Debian bookworm arm64 Python 3.11 under qemu user mode, with tflite-runtime 2.14.

The root is provisioned once into .cache/emu-pi (reused between runs: provision() is
idempotent) and the int8 digits model is evaluated there against the host's reference.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.sdk.client import Session
from edgeship.sdk.device import host_reference
from edgeship.sdk.emulate import pi
from edgeship.sdk.errors import EdgeshipError
from edgeship.sdk.schemas import validate
from tests.conftest import run_cli

CACHE = pi.DEFAULT_CACHE  # the cache the emu-pi board itself uses: one provisioning per machine


@pytest.fixture(scope="module")
def board() -> pi.PiRoot:
    return pi.provision(CACHE)


@pytest.fixture(scope="module")
def session(board: pi.PiRoot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    s = Session(pi.open_stream(board, tmp_path_factory.mktemp("emu-pi-store")))
    try:
        s.hello()
        yield s
    finally:
        s.close()
        s.stream.close()


@pytest.fixture(scope="module")
def bundle(convert_digits: Any) -> Any:
    return convert_digits("int8")


@pytest.mark.emulated
def test_provision_again_is_fast_and_says_so(board: pi.PiRoot) -> None:
    t0 = time.monotonic()
    again = pi.provision(CACHE)
    assert time.monotonic() - t0 < 2.0
    assert not again.provisioned and again.report[0].startswith("already provisioned")
    assert again.root == board.root and again.python == board.python
    assert (board.root / "usr/bin/python3.11").is_file() and board.launcher.is_file()
    shown = run_cli("emulate", "setup", "--json")  # the same, as the command says it: its documented shape
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    validate("emulate-setup", doc)
    assert doc["emu-pi"]["root"] == str(board.root) and doc["emu-pi"]["provisioned"] is False


@pytest.mark.emulated
def test_hello_reports_an_aarch64_board_with_tflite_runtime(session: Session) -> None:
    info = session.info
    runtime = info["runtime"]
    assert (runtime["name"], runtime["version"], runtime["tflite_level"]) == ("tflite_runtime", "2.14.0", "2.14.0")
    assert "Erfinv" not in runtime["custom_ops"] and "TFLite_Detection_PostProcess" in runtime["custom_ops"]
    assert info["cpu"]["arch"] == "aarch64" and "emu-pi" in info["cpu"]["model"]
    assert info["python"].startswith("3.11.")


@pytest.mark.emulated
def test_int8_digits_eval_matches_the_host(session: Session, bundle: Any, digits: Path) -> None:
    host = run_cli("eval-host", str(bundle.bundle), "--data", str(digits / "test.npz"), "--json")
    assert host.returncode == 0, host.stderr
    host_accuracy = json.loads(host.stdout)["accuracy"]
    model = bundle.model_path.read_bytes()
    with np.load(digits / "test.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    labels = arrays.pop("y")
    reference = host_reference(model, arrays, labels)
    buf = io.BytesIO()
    np.savez(buf, **arrays, y=labels, reference=reference["outputs"])
    up = session.upload(model)
    ds = session.upload(buf.getvalue())
    result = session.run("eval", up.sha256, ds.sha256, {})  # the agent's default 2 GiB worker memory limit
    assert result["status"] == "ok", result
    assert result["runtime"] == {"name": "tflite_runtime", "version": "2.14.0"}
    assert result["samples"] == len(labels)
    assert result["accuracy"] == host_accuracy == reference["accuracy"]
    assert result["agreement"]["argmax_agreement"] >= 0.99, result["agreement"]


@pytest.mark.emulated
def test_bench_runs(session: Session, bundle: Any) -> None:
    up = session.upload(bundle.model_path.read_bytes())
    result = session.run("bench", up.sha256, None, {"runs": 20, "warmup": 2, "min_seconds": 0.2})
    assert result["status"] == "ok", result
    assert result["kind"] == "bench" and result["latency_ms"]["count"] >= 20
    assert result["runtime"]["name"] == "tflite_runtime"


@pytest.mark.emulated
def test_launcher_applies_the_worker_memory_limit_to_qemu(board: pi.PiRoot) -> None:
    code = ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "try:\n    bytearray(3 << 29)\n    print('allocated')\nexcept MemoryError:\n    print('MemoryError')\n")
    ignored = subprocess.run([*board.python, "-c", code], env=board.env, capture_output=True, text=True, timeout=120)
    assert ignored.stdout.strip() == "allocated"  # qemu swallows the guest's own RLIMIT_AS
    env = {**board.env, "EDGESHIP_WORKER_MEMORY_LIMIT": str(1 << 30)}
    limited = subprocess.run([*board.python, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert limited.stdout.strip() == "MemoryError", limited.stderr


def test_missing_qemu_is_an_actionable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pi, "QEMU_NAMES", ("no-such-qemu-aarch64",))
    with pytest.raises(EdgeshipError, match="apt-get install qemu-user-static"):
        pi.provision(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing is downloaded without an emulator to run it


def test_debian_mirror_comes_from_the_host_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://mirror.example/debian bookworm main\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://other.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    (parts / "vendor.list").write_text("deb https://vendor.example/apt stable main\n")
    monkeypatch.setattr(pi, "_HOST_APT_SOURCES", (tmp_path / "sources.list", parts))
    assert pi._debian_mirrors() == ("http://mirror.example/debian", "http://sec.example/debian-security")
    monkeypatch.setattr(pi, "_HOST_APT_SOURCES", (tmp_path / "none",))
    assert pi._debian_mirrors() == ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
