"""The agent zipapp runs a model in an environment with numpy and LiteRT only, as on a board."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.sdk.agentbuild import write_zipapp
from edgeship.sdk.client import Session
from edgeship.sdk.transport.local import LocalStream
from tests.conftest import ROOT

AGENT_PYTHON = ROOT / ".venv-agent" / "bin" / "python"


def test_board_environment_has_no_tensorflow() -> None:
    assert AGENT_PYTHON.exists(), "make test creates .venv-agent (numpy + ai-edge-litert); run it through make test"
    probe = subprocess.run([str(AGENT_PYTHON), "-c", "import tensorflow"], capture_output=True)
    assert probe.returncode != 0  # the environment really lacks TensorFlow


def test_zipapp_agent_evaluates_without_tensorflow(tmp_path: Path, convert_digits: Any, digits: Path) -> None:
    pyz, _ = write_zipapp(tmp_path / "edgeship-agent.pyz")
    session = Session(LocalStream(tmp_path / "store", python=AGENT_PYTHON, agent=pyz, env={"PATH": "/usr/bin:/bin"}))
    try:
        info = session.hello()
        assert info["runtime"]["name"] == "ai_edge_litert"
        bundle = convert_digits("int8")
        up = session.upload(bundle.model_path.read_bytes())
        data = np.load(digits / "test.npz")
        buf = io.BytesIO()
        np.savez(buf, x=data["x"], y=data["y"])
        ds = session.upload(buf.getvalue())
        result = session.run("eval", up.sha256, ds.sha256, {})
        assert result["status"] == "ok", result
        assert result["accuracy"] == bundle.manifest.accuracy.model
        probe = session.run("bench", up.sha256, None, {"runs": 5, "min_seconds": 0})
        assert probe["status"] == "ok"
    finally:
        session.close()
