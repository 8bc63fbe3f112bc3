"""`import edgeship` is the public API: cheap to import, every documented name loads, and the
notebook flow of docs/api.md runs as written against a real agent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeship

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api.md"


def _snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/api.md has one notebook snippet"
    return blocks[0]


def test_import_edgeship_loads_nothing_heavy() -> None:
    probe = ("import json, sys, edgeship; dir(edgeship); "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('edgeship.', 'tensorflow', 'numpy')))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(out.stdout) == []


def test_every_public_name_loads_and_is_documented() -> None:
    documented = DOC.read_text()
    for name in edgeship.__all__:
        if name in ("__version__", "import_root"):
            continue
        assert getattr(edgeship, name) is not None
        assert f"`{name}" in documented, f"docs/api.md does not document edgeship.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        edgeship.nope  # noqa: B018 - the lookup is the test


def test_the_notebook_snippet_runs_as_written(digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("digits.keras", "train.npz", "test.npz"):
        shutil.copy(digits / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(_snippet(), str(DOC), "exec"), scope)  # the documented snippet, verbatim
    out = capsys.readouterr().out
    assert re.search(r"^int8 \d+ bytes$", out, re.M)
    assert re.search(r"^p50 \d+\.\d{3} ms on local$", out, re.M)
    accuracy = float(re.search(r"^accuracy (\d+\.\d+)%$", out, re.M).group(1))  # type: ignore[union-attr]
    assert accuracy > 90
    result = scope["result"]
    assert isinstance(result, edgeship.RunResult)
    assert result.kind == "eval" and result.result["status"] == "ok"
    written = list((tmp_path / "results").glob("eval-local-*.json"))
    assert len(written) == 1
    assert edgeship.RunResult.from_json(json.loads(written[0].read_text())).model_sha256 == result.model_sha256
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert len(scope["report"].rows) == 1  # type: ignore[attr-defined]


def test_push_bench_and_evaluate_take_an_injected_transport(convert_digits: object, digits: Path) -> None:
    """A notebook or a test hands the library a transport (here the shipped in-memory one) instead of a board."""
    bundle = convert_digits("int8")  # type: ignore[operator]
    transport = edgeship.MemoryTransport(name="in-memory")
    try:
        pushed = edgeship.push(bundle, transport)
        again = edgeship.push(bundle, transport)  # same store: nothing sent the second time
        fast = edgeship.RunOptions(runs=5, warmup=1, min_seconds=0.0)
        bench = edgeship.bench(bundle, transport, options=fast)
        result = edgeship.evaluate(bundle, transport, digits / "test.npz", options=fast)
    finally:
        transport.close()
    assert pushed["board"] == "in-memory" and not pushed["upload"]["skipped"] and again["upload"]["skipped"]
    assert bench.kind == "bench" and bench.board == "in-memory" and bench.result["latency_ms"]["count"] >= 5
    assert result.result["status"] == "ok"
    assert result.result["accuracy"] == pytest.approx(bundle.manifest.accuracy.model)  # type: ignore[attr-defined]
