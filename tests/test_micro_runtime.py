"""The emu-mcu runtime: TFLite Micro behind the tf.lite Interpreter surface the agent uses.

The digits int8 model is built as a user builds it (train.py, then `edgeship convert`), run
through `device_agent.evaluate.evaluate` unchanged, and compared with `edgeship eval-host`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.device_agent import micro
from edgeship.device_agent.evaluate import evaluate, signature_io
from edgeship.device_agent.quant import quantize
from edgeship.device_agent.runtime import Runtime
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def int8_bundle(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgeship convert digits.keras --recipe int8 --calib train.npz`, as the README has it."""
    out = tmp_path_factory.mktemp("micro") / "digits-int8"
    r = run_cli("convert", str(digits / "digits.keras"), "--recipe", "int8", "--calib", str(digits / "train.npz"),
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def int8_model(int8_bundle: Path) -> bytes:
    return (int8_bundle / "model.tflite").read_bytes()


@pytest.fixture(scope="module")
def test_split(digits: Path) -> dict[str, np.ndarray]:
    with np.load(digits / "test.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def needed(int8_model: bytes) -> int:
    return int(micro.arena_needed(int8_model))


def test_evaluate_on_tflm_matches_eval_host(int8_bundle: Path, int8_model: bytes, digits: Path,
                                            test_split: dict[str, np.ndarray]) -> None:
    host = run_cli("eval-host", str(int8_bundle), "--data", str(digits / "test.npz"), "--json")
    assert host.returncode == 0, host.stderr
    host_acc = json.loads(host.stdout)["accuracy"]

    interp = micro.MicroRuntime(model_content=int8_model)
    result = evaluate(interp, {"x": test_split["x"]}, test_split["y"], output="probs")
    assert result.samples == 360
    # TFLM's reference kernels and LiteRT's (XNNPACK) kernels round differently in a few
    # softmax outputs, but on this model the top-1 answers agree sample for sample.
    assert result.accuracy == pytest.approx(host_acc, abs=1e-12), (result.accuracy, host_acc)
    assert result.accuracy > 0.95
    assert result.outputs["probs"].shape == (360, 10)


def test_outputs_agree_with_litert_sample_for_sample(int8_model: bytes, test_split: dict[str, np.ndarray]) -> None:
    from edgeship.device_agent.runtime import load_runtime

    host = load_runtime().interpreter(int8_model)  # make test installs LiteRT; its absence is a failure
    tflm = micro.MicroRuntime(model_content=int8_model)
    (_, hin), = signature_io(host)[0]
    (_, hout), = signature_io(host)[1]
    (_, tin), = signature_io(tflm)[0]
    (_, tout), = signature_io(tflm)[1]
    assert (tin["index"], tout["index"]) == (hin["index"], hout["index"])
    assert tin["quantization"] == hin["quantization"] and tout["quantization"] == hout["quantization"]
    a, b = [], []
    for x in test_split["x"]:
        q = quantize(x[None], tin)
        tflm.set_tensor(tin["index"], q)
        tflm.invoke()
        a.append(tflm.get_tensor(tout["index"]))
        host.set_tensor(hin["index"], q)
        host.invoke()
        b.append(host.get_tensor(hout["index"]))
    qa, qb = np.concatenate(a).astype(int), np.concatenate(b).astype(int)
    assert (qa.argmax(1) == qb.argmax(1)).all()
    assert np.all(qa == qb, axis=1).mean() >= 0.95  # bit-identical rows (355 of 360 when written)


def test_arena_needed_is_exact_to_the_byte(int8_model: bytes, needed: int) -> None:
    assert micro.MIN_ARENA < needed < 64 * 1024, needed  # 9728 bytes on x86_64 when written
    assert needed % 16 == 0  # TFLM aligns its allocations to 16 bytes
    interp = micro.MicroRuntime(model_content=int8_model, arena_size=needed)
    assert interp.arena_used == needed
    interp.set_tensor(0, np.zeros((1, 8, 8, 1), np.int8))
    interp.invoke()
    assert interp.get_tensor(16).shape == (1, 10)
    for short in (needed - 1, needed - 1024):
        with pytest.raises(micro.ArenaTooSmall, match=f"{short}-byte tensor arena .*needs {needed} bytes") as info:
            micro.MicroRuntime(model_content=int8_model, arena_size=short)
        assert info.value.needed == needed


def test_fits_answers_without_building_tiny_arenas(int8_model: bytes, needed: int) -> None:
    assert micro.fits(int8_model, needed) == (True, needed)
    assert micro.fits(int8_model, 256 * 1024) == (True, needed)
    assert micro.fits(int8_model, needed - 1) == (False, needed)
    assert micro.fits(int8_model, 100) == (False, needed)  # a 100-byte arena would crash TFLM; it is never built
    with pytest.raises(micro.ArenaTooSmall, match="100-byte"):
        micro.MicroRuntime(model_content=int8_model, arena_size=100)


def test_binary_search_finds_the_same_need_without_the_recording(int8_model: bytes, needed: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(micro, "_ARENA_TOTAL", re.compile(r"(?!)"))  # as if TFLM printed no allocation summary
    assert micro.arena_needed(int8_model) == needed
    assert micro.arena_needed(int8_model, upper=needed) == needed
    with pytest.raises(micro.ArenaTooSmall, match="probe limit"):
        micro.arena_needed(int8_model, upper=needed - 16)


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 16], tf.float32, name="x")])
    def top3(x: Any) -> Any:
        return {"top": tf.math.top_k(x, k=3).values}

    model = tf.lite.TFLiteConverter.from_concrete_functions([top3.get_concrete_function()], top3).convert()
    with pytest.raises(micro.UnsupportedOpError, match="no kernel for builtin op TOPK_V2") as info:
        micro.MicroRuntime(model_content=model)
    assert info.value.op == "TOPK_V2"
    with pytest.raises(micro.UnsupportedOpError, match="TOPK_V2"):
        micro.arena_needed(model)
    with pytest.raises(micro.UnsupportedOpError):
        micro.fits(model, 1 << 20)


def test_float32_model_runs(convert_digits: Callable[..., Any], test_split: dict[str, np.ndarray],
                            needed: int) -> None:
    model = Path(convert_digits("float32").model_path).read_bytes()
    float_needed = micro.arena_needed(model)
    assert float_needed > needed  # float activations are 4x wider (27488 bytes when written)
    interp = micro.MicroRuntime(model_content=model, arena_size=float_needed)
    assert interp.get_input_details()[0]["dtype"] is np.float32
    result = evaluate(interp, {"x": test_split["x"]}, test_split["y"])
    assert result.accuracy is not None and result.accuracy > 0.95


def test_invoke_latency(int8_model: bytes, test_split: dict[str, np.ndarray]) -> None:
    interp = micro.MicroRuntime(model_content=int8_model)
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], quantize(test_split["x"][:1], detail))
    interp.invoke()
    samples = []
    for _ in range(100):
        t0 = time.perf_counter_ns()
        interp.invoke()
        samples.append(time.perf_counter_ns() - t0)
    p50_ms = float(np.median(samples)) / 1e6
    print(f"TFLM digits int8 invoke: p50 {p50_ms:.3f} ms, min {min(samples) / 1e6:.3f} ms")
    assert 0 < p50_ms < 100  # reference kernels: ~1.5 ms on the 2-core CI machine when written


def test_the_interpreter_surface_the_agent_uses(int8_model: bytes, needed: int) -> None:
    interp = micro.MicroRuntime(model_content=int8_model)
    assert interp._get_full_signature_list() == {"serving_default": {"inputs": {"image": 0}, "outputs": {"probs": 16}}}
    (name_in, din), = signature_io(interp)[0]
    (name_out, dout), = signature_io(interp)[1]
    assert (name_in, name_out) == ("image", "probs")
    assert din["name"] == "serving_default_image:0" and din["dtype"] is np.int8
    assert list(din["shape"]) == [1, 8, 8, 1] and din["quantization"] == pytest.approx((1 / 255, -128))
    assert dout["index"] == 16 and dout["quantization"] == (0.00390625, -128)
    assert [o["op_name"] for o in interp._get_ops_details()] == [
        "CONV_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]
    interp.allocate_tensors()
    x = np.full((1, 8, 8, 1), 5, np.int8)
    interp.set_tensor(0, x)
    assert (interp.get_tensor(0) == x).all()
    with pytest.raises(ValueError, match="wants int8"):
        interp.set_tensor(0, np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="not a model input"):
        interp.set_tensor(16, np.zeros((1, 10), np.int8))
    with pytest.raises(ValueError, match="not readable"):
        interp.get_tensor(5)
    with pytest.raises(ValueError, match="TFL3"):
        micro.MicroRuntime(model_content=b"not a model at all")
    with pytest.raises(ValueError, match="no delegates"):
        micro.load_delegate("libedgetpu.so.1")
    assert micro.version().startswith("0.dev")


def test_runtime_shim_and_worker_build_it_unchanged(int8_bundle: Path, needed: int) -> None:
    """runtime.Runtime and worker._build_interpreter take MicroRuntime as they take tf.lite's Interpreter."""
    from edgeship.device_agent.options import DelegateSpec, RunOptions
    from edgeship.device_agent.worker import _build_interpreter

    rt = Runtime("tflite_micro", micro.version(), micro.MicroRuntime, micro.load_delegate)
    model = (int8_bundle / "model.tflite").read_bytes()
    assert rt.interpreter(model, num_threads=2, arena_size=needed).arena_size == needed
    built = _build_interpreter(rt, model, RunOptions(threads=1, delegates=(DelegateSpec("edgetpu", library="libedgetpu.so.1"),)))
    assert built["delegate"]["applied"] == [] and "no delegates" in built["delegate"]["notes"][0]
    assert built["delegate"]["cpu_ops"] == ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE", "SOFTMAX"]
    with pytest.raises(RuntimeError, match="needs"):  # the worker reports a RuntimeError as status "invalid"
        rt.interpreter(model, arena_size=needed - 1)
