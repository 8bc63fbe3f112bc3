"""Bad input: one line naming the problem, a non-zero exit, no traceback, and no half bundle.

The command runs in-process (conftest.invoke_cli: click's CliRunner, stderr captured at fd 2 too, so
TensorFlow's native output would show): nothing here depends on the process boundary.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    stderr = proc.stderr.strip()
    assert proc.returncode not in (0, 70), stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith(".") or p.name == "out"] == []


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def test_missing_model(work: Path) -> None:
    _assert_one_line_error(invoke_cli("convert", "-q", str(work / "nope.keras"), "--recipe", "float32", "--out", str(work / "out")),
                           "nope.keras", "no such file")
    _no_leftovers(work)


def test_corrupt_keras_file(digits: Path, work: Path) -> None:
    bad = work / "bad.keras"
    bad.write_bytes((digits / "digits.keras").read_bytes()[:5000])  # truncated zip
    _assert_one_line_error(invoke_cli("convert", "-q", str(bad), "--recipe", "float32", "--out", str(work / "out")),
                           "bad.keras", "corrupt")
    _no_leftovers(work)


def test_saved_model_without_the_signature(two_io_saved_model: Path, work: Path) -> None:
    _assert_one_line_error(invoke_cli("convert", "-q", str(two_io_saved_model), "--recipe", "float32", "--out", str(work / "out")),
                           "serving_default", "predict")
    _no_leftovers(work)


@pytest.mark.parametrize(
    ("arrays", "needles"),
    [
        ({"x": np.zeros((100, 8, 8), np.float32)}, ["shape", "(8, 8)", "(8, 8, 1)"]),
        ({"x": np.zeros((100, 64, 1), np.float32)}, ["shape"]),
        ({"x": np.zeros((100, 8, 8, 1), np.uint8)}, ["uint8", "float32"]),
        ({"x": np.zeros((10, 8, 8, 1), np.float32)}, ["10 calibration samples", "at least"]),
        ({"images": np.zeros((100, 8, 8, 1), np.float32)}, ["no array 'x'"]),
    ],
    ids=["missing-channel", "wrong-rank", "wrong-dtype", "too-few", "wrong-key"],
)
def test_bad_calibration_data(digits: Path, work: Path, arrays: dict[str, np.ndarray], needles: list[str]) -> None:
    calib = work / "calib.npz"
    np.savez(calib, **arrays)
    proc = invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "int8", "--calib", str(calib),
                      "--out", str(work / "out"))
    _assert_one_line_error(proc, "calib", *needles)
    _no_leftovers(work)


def test_more_calibration_samples_than_the_data_has(digits: Path, work: Path) -> None:
    proc = invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "int8", "--calib", str(digits / "test.npz"),
                      "--calib-samples", "5000", "--out", str(work / "out"))
    _assert_one_line_error(proc, "5000", "360")
    _no_leftovers(work)


def test_unknown_recipe(digits: Path, work: Path) -> None:
    proc = invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "int4", "--out", str(work / "out"))
    _assert_one_line_error(proc, "int4", "float32", "qat")
    assert proc.returncode == 2
    _no_leftovers(work)


def test_int8_without_calibration_and_bad_io(digits: Path, work: Path) -> None:
    _assert_one_line_error(invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "int8", "--out", str(work / "out")),
                           "--calib")
    _assert_one_line_error(invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "float16", "--io", "int8",
                                      "--out", str(work / "out")), "--io: int8")


def test_failure_mid_conversion_keeps_an_existing_bundle(digits: Path, work: Path) -> None:
    out = work / "out"
    ok = invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "float32", "--out", str(out), "-q")
    assert ok.returncode == 0, ok.stderr
    before = (out / "model.tflite").read_bytes()
    calib = work.parent / "calib.npz"
    np.savez(calib, x=np.zeros((100, 8, 8), np.float32))
    proc = invoke_cli("convert", "-q", str(digits / "digits.keras"), "--recipe", "int8", "--calib", str(calib), "--out", str(out),
                      "--force")
    _assert_one_line_error(proc, "shape")
    assert (out / "model.tflite").read_bytes() == before
    assert sorted(p.name for p in work.iterdir()) == ["out"]


def test_inspect_and_eval_host_bad_input(digits: Path, work: Path, convert_digits: object) -> None:
    bundle = convert_digits("int8").bundle  # type: ignore[operator]
    truncated = work / "trunc.tflite"
    truncated.write_bytes((bundle / "model.tflite").read_bytes()[:3000])
    _assert_one_line_error(invoke_cli("inspect", str(truncated)), "trunc.tflite", "corrupt or truncated")
    _assert_one_line_error(invoke_cli("eval-host", str(truncated), "--data", str(digits / "test.npz")), "trunc.tflite")
    not_model = work / "notes.tflite"
    not_model.write_text("hello, not a flatbuffer")
    _assert_one_line_error(invoke_cli("inspect", str(not_model)), "not a TFLite flatbuffer")
    wrong = work / "wrong.npz"
    np.savez(wrong, x=np.zeros((5, 8, 8), np.float32), y=np.zeros(5, np.int64))
    _assert_one_line_error(invoke_cli("eval-host", str(bundle), "--data", str(wrong)), "wrong.npz", "(8, 8, 1)")
    shutil.rmtree(work)
    work.mkdir()
