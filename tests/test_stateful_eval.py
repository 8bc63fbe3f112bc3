"""Stateful models (variable tensors) are evaluated with their state reset before every sample.

The zoo's tf_keras LSTM converts to UNIDIRECTIONAL_SEQUENCE_LSTM, whose state lives in
variable tensors that the runtime carries from one invoke to the next. Scored sample by
sample without a reset, each digit starts from the previous digit's state and the
accuracy collapses; with the reset it is the Keras model's. Host (eval-host), the local
board (LiteRT in the agent's worker) and a TFLite Micro board must all reset, and say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def lstm_bundle(zoo: Callable[[str], Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    z = zoo("lstm_h5")
    out = tmp_path_factory.mktemp("stateful") / "lstm-f32"
    done = run_cli("convert", str(z.path), "-r", "float32", "-o", str(out), "--eval", str(z.test), "-q")
    assert done.returncode == 0, done.stderr[-1500:]
    return out, z


def _eval_host(bundle: Path, data: Path, *extra: str) -> dict[str, Any]:
    done = run_cli("eval-host", str(bundle), "--data", str(data), "--json", *extra)
    assert done.returncode == 0, done.stderr[-1500:]
    return json.loads(done.stdout)


def test_host_resets_state_by_default_and_keeps_it_when_asked(lstm_bundle: tuple[Path, Any]) -> None:
    bundle, z = lstm_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    reset = _eval_host(bundle, z.test)
    keep = _eval_host(bundle, z.test, "--state", "keep")
    assert (reset["state"], keep["state"]) == ("reset", "keep")
    # Reset: what convert --eval measured, and within a point of the Keras model itself.
    assert reset["accuracy"] == pytest.approx(manifest["accuracy"]["model"], abs=1e-9)
    assert reset["accuracy"] >= z.float_accuracy - 0.01
    # Keep: the state leaks from sample to sample, so the same model scores far lower.
    assert keep["accuracy"] < reset["accuracy"] - 0.2


def test_local_board_resets_like_the_host(lstm_bundle: tuple[Path, Any], tmp_path: Path) -> None:
    bundle, z = lstm_bundle
    host = _eval_host(bundle, z.test)
    done = run_cli("eval", str(bundle), "--board", "local", "--data", str(z.test), "--json",
                   "--results-dir", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr[-1500:]
    result = json.loads(done.stdout)[0]["result"]["result"]
    assert result["state"] == "reset"
    assert result["accuracy"] == pytest.approx(host["accuracy"], abs=1e-9)
    assert result["agreement"]["argmax_agreement"] == pytest.approx(1.0)


def test_tflite_micro_runtime_resets_state_too(lstm_bundle: tuple[Path, Any]) -> None:
    """TFLite Micro (reference kernels, float LSTM) resets through MicroRuntime.reset_all_variables."""
    import numpy as np

    from edgeship.device_agent.evaluate import evaluate
    from edgeship.device_agent.micro import MicroRuntime

    bundle, z = lstm_bundle
    host = _eval_host(bundle, z.test)
    data = dict(np.load(z.test))
    labels = data.pop("y")
    features = {k: v for k, v in data.items() if not k.startswith("y")}
    micro = MicroRuntime(model_content=(bundle / "model.tflite").read_bytes(), arena_size=1 << 20)
    reset = evaluate(micro, features, labels)
    keep = evaluate(micro, features, labels, state="keep")
    assert (reset.state, keep.state) == ("reset", "keep")
    assert abs((reset.accuracy or 0) - host["accuracy"]) <= 0.01
    assert (keep.accuracy or 0) < host["accuracy"] - 0.2


def test_tflite_micro_board_resets_state_too(lstm_bundle: tuple[Path, Any], tmp_path: Path) -> None:
    """A TFLM board (reference kernels, float LSTM) resets through MicroRuntime.reset_all_variables."""
    bundle, z = lstm_bundle
    boards = tmp_path / "boards.yaml"
    boards.write_text(
        "schema_version: 1\nboards:\n  mcu-float:\n    description: TFLite Micro with float kernels and a large arena\n"
        "    transport: local\n    runtime: tflite_micro\n"
        f"    store: {{dir: {tmp_path / 'store'}, quota_mb: 16}}\n"
        "    constraints: {arena_bytes: 4194304}\n")
    host = _eval_host(bundle, z.test)
    for state, close_to_host in (("reset", True), ("keep", False)):
        done = run_cli("--boards", str(boards), "eval", str(bundle), "--board", "mcu-float", "--data", str(z.test),
                       "--state", state, "--json", "--results-dir", str(tmp_path / "results"))
        assert done.returncode in (0, 3), done.stderr[-1500:]  # 3: agreement with the host is low for keep (no gate set)
        result = json.loads(done.stdout)[0]["result"]["result"]
        assert result["runtime"]["name"] == "tflite_micro"
        assert result["state"] == state
        if close_to_host:
            assert abs(result["accuracy"] - host["accuracy"]) <= 0.01
        else:
            assert result["accuracy"] < host["accuracy"] - 0.2


def test_agent_refuses_an_unknown_state() -> None:
    from edgeship.device_agent.options import state_name as _state

    assert _state(None) == "reset"
    assert _state("keep") == "keep"
    for bad in ("RESET", "", 1, ["reset"], "../x"):
        with pytest.raises(ValueError, match="state must be one of reset, keep"):
            _state(bad)
