"""Pruning and clustering on the digits example, through the CLI a user types, with real tfmot and TFLite."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _zlib(bundle: Path) -> int:
    return len(zlib.compress((bundle / "model.tflite").read_bytes(), 9))


def _convert(digits: Path, out: Path, *args: str) -> dict[str, Any]:
    r = run_cli("convert", str(digits / "digits.keras"), "--train", str(digits / "train.npz"),
                "--eval", str(digits / "test.npz"), "-o", str(out), "--json", *args)
    assert r.returncode == 0, r.stderr
    return _manifest(out)


@pytest.fixture(scope="module")
def pruned(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "digits-int8-p50"
    _convert(digits, out, "-r", "int8", "--calib", str(digits / "train.npz"), "--sparsity", "0.5")
    return out


def test_half_sparse_int8_keeps_accuracy_and_compresses_to_under_0_6_of_plain_int8(
        pruned: Path, convert_digits: Any) -> None:
    m = _manifest(pruned)
    plain = convert_digits("int8").bundle
    acc = m["accuracy"]
    assert acc["float_model"] - acc["model"] <= 0.015, acc
    assert m["integer"]["fully_integer"]
    ratio = _zlib(pruned) / _zlib(plain)
    assert ratio <= 0.6, f"pruned int8 zlib {_zlib(pruned)} vs plain {_zlib(plain)}: {ratio:.3f}"
    assert m["compression"]["zlib_size"] == _zlib(pruned)
    assert m["recipe"]["compression"]["sparsity"] == 0.5


def test_manifest_and_inspect_report_per_layer_sparsity(pruned: Path, convert_digits: Any) -> None:
    weights = _manifest(pruned)["compression"]["weights"]
    assert {w["op"] for w in weights} == {"CONV_2D", "FULLY_CONNECTED"}
    assert len(weights) == 4 and all(0.45 <= w["sparsity"] <= 0.6 for w in weights), weights
    plain = _manifest(convert_digits("int8").bundle)["compression"]
    assert plain["sparsity"] < 0.05  # an unpruned model is dense: the count is of real zeros
    r = run_cli("inspect", str(pruned / "model.tflite"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["weights"] == weights and info["zlib_size"] == _zlib(pruned)
    text = run_cli("inspect", str(pruned / "model.tflite")).stdout
    assert "sparsity" in text and "fc1" in text
    summary = run_cli("inspect", str(pruned)).stdout.splitlines()  # the bundle: its recipe's options and the zlib size
    assert "recipe int8 (io int8, 200 calibration samples, sparsity 0.5)" in summary[0], summary[0]
    assert f"  compressed: zlib {_zlib(pruned) / 1024:.1f} KiB" in "\n".join(summary), summary


def test_push_sends_the_sparse_model_compressed(pruned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_LOCAL_STORE", str(tmp_path / "store"))
    r = run_cli("push", str(pruned), "--board", "local", "--json")
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)[0]["result"]["upload"]
    assert up["encoding"] == "zlib" and up["wire_size"] < 0.7 * up["size"], up


def test_clustering_leaves_at_most_k_values_per_tensor(digits: Path, tmp_path: Path) -> None:
    r = run_cli("convert", str(digits / "digits.keras"), "--train", str(digits / "train.npz"),
                "--eval", str(digits / "test.npz"), "-o", str(tmp_path / "c8"), "-q", "-r", "float32", "--clusters", "8")
    assert r.returncode == 0, r.stderr
    m = _manifest(tmp_path / "c8")
    # the summary says what clustering buys once compressed: the zlib size the manifest records
    assert f"compressed: zlib {m['compression']['zlib_size'] / 1024:.1f} KiB ({m['compression']['zlib_ratio']:.0%} of the size)" \
        in r.stdout.splitlines()[1], r.stdout
    weights = m["compression"]["weights"]
    assert weights and all(w["distinct_values"] <= 8 for w in weights), weights
    assert m["accuracy"]["float_model"] - m["accuracy"]["model"] <= 0.03
    assert m["compression"]["zlib_ratio"] < 0.5  # 8 shared float32 values compress far better than 3 bytes in 4


def test_prune_cluster_qat_preserves_sparsity_and_clusters(digits: Path, tmp_path: Path) -> None:
    m = _convert(digits, tmp_path / "pcq", "-r", "qat", "--sparsity", "0.5", "--clusters", "16")
    assert m["integer"]["fully_integer"]
    for w in m["compression"]["weights"]:
        assert w["sparsity"] >= 0.45 and w["distinct_values"] <= 17, w  # 16 centroids, plus the preserved zero
    assert m["accuracy"]["float_model"] - m["accuracy"]["model"] <= 0.015
    assert {"tf-keras", "tensorflow-model-optimization"} <= set(m["tools"])


@pytest.mark.parametrize(("args", "message"), [
    (["-r", "float32", "--sparsity", "0.5"], "--train: pruning and clustering fine-tune the model: give training data"),
    (["-r", "float32", "--sparsity", "1.5", "--train", "T"], "--sparsity: must be between 0 and 1"),
    (["-r", "float32", "--clusters", "1", "--train", "T"], "--clusters: must be between 2 and 256"),
    (["-r", "float32", "--strategy", "mirrored"], "--strategy: mirrored distributes fine-tuning; this recipe does none"),
    (["-r", "float32", "--replicas", "2", "--sparsity", "0.5", "--train", "T"], "--replicas: N (N >= 1) goes with strategy mirrored"),
    (["-r", "float16", "--keep-float", "fc1"], "--keep-float: goes with recipe int8"),
    (["-r", "qat", "--train", "T", "--worker-timeout", "5"], "--worker-timeout: goes with strategy multiworker"),
])
def test_bad_compression_options_are_named(digits: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [str(digits / "train.npz") if a == "T" else a for a in args]
    r = run_cli("convert", str(digits / "digits.keras"), "-o", str(tmp_path / "b"), *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
