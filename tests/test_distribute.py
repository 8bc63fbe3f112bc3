"""Fine-tuning under tf.distribute: MirroredStrategy over two logical CPUs, and two workers on 127.0.0.1.

Each run is a fresh `edgeship convert` process (a strategy must exist before TensorFlow's
first op), fine-tuning the digits model with QAT and converting it; the accuracy must stay
within one point of the single-device run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EDGESHIP, run_cli


def _qat_args(digits: Path, out: Path) -> list[str]:
    return ["convert", str(digits / "digits.keras"), "-r", "qat", "--train", str(digits / "train.npz"),
            "--eval", str(digits / "test.npz"), "-o", str(out)]


def _accuracy(bundle: Path) -> float:
    return float(json.loads((bundle / "manifest.json").read_text())["accuracy"]["model"])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_mirrored_over_two_logical_cpus_matches_single_device(digits: Path, tmp_path: Path, convert_digits: Any) -> None:
    single = convert_digits("qat")
    r = run_cli(*_qat_args(digits, tmp_path / "mirrored"), "--strategy", "mirrored", "--replicas", "2")
    assert r.returncode == 0, r.stderr
    assert "MirroredStrategy over 2 replica(s)" in r.stderr
    manifest = json.loads((tmp_path / "mirrored" / "manifest.json").read_text())
    assert manifest["recipe"]["distribution"] == {"strategy": "mirrored", "replicas": 2}
    assert manifest["integer"]["fully_integer"]
    assert abs(_accuracy(tmp_path / "mirrored") - single.manifest.accuracy.model) <= 0.01


def test_two_workers_with_tf_config_match_single_device(digits: Path, tmp_path: Path, convert_digits: Any) -> None:
    single = convert_digits("qat")
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([str(EDGESHIP), *_qat_args(digits, tmp_path / f"worker{index}"),
                                       "--strategy", "multiworker"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            p.kill()
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "MultiWorkerMirroredStrategy" in err and "2 replica(s) in sync" in err
    models = [(tmp_path / f"worker{i}" / "model.tflite").read_bytes() for i in range(2)]
    assert models[0] == models[1]  # the workers trained one model together
    assert abs(_accuracy(tmp_path / "worker0") - single.manifest.accuracy.model) <= 0.01


@pytest.mark.parametrize(("tf_config", "message"), [
    (None, "--strategy: multiworker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}),
     "task.index 3 is outside cluster.worker"),
])
def test_bad_tf_config_is_named_before_training(digits: Path, tmp_path: Path, tf_config: str | None,
                                                message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    r = subprocess.run([str(EDGESHIP), *_qat_args(digits, tmp_path / "b"), "--strategy", "multiworker"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b").exists()


def test_a_worker_that_never_joins_ends_the_wait_with_a_clear_error(digits: Path, tmp_path: Path) -> None:
    alone, missing = _free_ports(2)
    config = {"cluster": {"worker": [f"127.0.0.1:{alone}", f"127.0.0.1:{missing}"]}, "task": {"type": "worker", "index": 0}}
    env = dict(os.environ, TF_CONFIG=json.dumps(config))
    r = subprocess.run([str(EDGESHIP), *_qat_args(digits, tmp_path / "b"), "--strategy", "multiworker",
                        "--worker-timeout", "5"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr  # killed by the watchdog: the blocked process cannot exit by itself
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeship: error: --strategy multiworker") and f"127.0.0.1:{missing}" in last, r.stderr
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))  # no bundle, no staging left behind
