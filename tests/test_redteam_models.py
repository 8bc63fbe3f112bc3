"""Red team: crafted models and hostile datasets against the real agent and the host CLI.

Each loop is seeded and counts what must never happen: an agent death (its pid in `hello`
changes), a hang (a per-run timeout; the test's own subprocess timeouts), a traceback, a
board path in a message, an unclassified status. Every result must be one of the statuses
docs/protocol.md lists, and the CLI must answer one `edgeship: error:` line with exit 1.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.data import load_npz
from edgeship.converters.inspect import inspect_tflite
from edgeship.device_agent import npzfile
from edgeship.sdk.client import Session
from edgeship.sdk.errors import CorruptModelError, DatasetError
from edgeship.sdk.transport.local import LocalStream
from tests import helpers_crafted as hc
from tests.conftest import EDGESHIP

RUN_STATUSES = {"ok", "invalid", "op_version", "unsupported_op", "crashed", "timeout", "out_of_memory", "bad_dataset"}
MEMORY_LIMIT = 1 << 30  # the agent's worker limit in these tests: datasets may declare a quarter of it


def _report(name: str, figures: dict[str, Any]) -> None:
    """The figures docs/reliability.md quotes, printed so `pytest -s` shows them."""
    print(f"\n[redteam] {name}: {json.dumps(figures, sort_keys=True)}")


@pytest.fixture(scope="module")
def digits_bundle(convert_digits: Any) -> Path:
    return Path(convert_digits("int8").model_path).parent


@pytest.fixture(scope="module")
def model(digits_bundle: Path) -> bytes:
    return (digits_bundle / "model.tflite").read_bytes()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Path]]:
    store = tmp_path_factory.mktemp("redteam") / "store"
    session = Session(LocalStream(store, ("--quota", str(64 << 20), "--memory-limit", str(MEMORY_LIMIT))))
    session.hello()
    yield session, store
    session.close()


class Tally:
    """What the loops count: deaths, hangs, tracebacks, leaked paths, wrong statuses, and every status seen."""

    def __init__(self, session: Session, store: Path) -> None:
        self.session, self.store = session, store
        self.pid = session.hello()["pid"]
        self.statuses: Counter[str] = Counter()
        self.trials = self.deaths = self.hangs = self.tracebacks = self.leaks = self.wrong = 0
        self.slowest = 0.0

    def run(self, kind: str, blob: bytes, dataset: bytes | None, expect: set[str], **options: Any) -> dict[str, Any]:
        up = self.session.upload(blob)
        ds = self.session.upload(dataset).sha256 if dataset is not None else None
        self.trials += 1
        opts = {"runs": 2, "warmup": 0, "min_seconds": 0, "timeout": 20, **options}
        start = time.monotonic()
        result = self.session.run(kind, up.sha256, ds, opts, timeout=60)
        self.slowest = max(self.slowest, time.monotonic() - start)
        status, message = result.get("status"), str(result.get("message", ""))
        self.statuses[str(status)] += 1
        self.hangs += status == "timeout" and "timeout" not in expect
        self.tracebacks += "Traceback" in message
        self.leaks += str(self.store) in message or "/blobs/" in message
        self.wrong += status not in expect or (status != "ok" and not message)
        if self.session.hello()["pid"] != self.pid:
            self.deaths += 1
        for sha in {up.sha256, ds} - {None}:
            self.session.request({"op": "delete", "sha256": sha})
        return result

    def figures(self) -> dict[str, Any]:
        return {"trials": self.trials, "deaths": self.deaths, "hangs": self.hangs, "tracebacks": self.tracebacks,
                "board_paths": self.leaks, "wrong_status": self.wrong, "statuses": dict(self.statuses),
                "slowest_run_s": round(self.slowest, 1)}

    def assert_clean(self) -> None:
        assert (self.deaths, self.hangs, self.tracebacks, self.leaks, self.wrong) == (0, 0, 0, 0, 0), self.figures()


# ------------------------------------------------------------------------------ models on the board

LOAD_REFUSALS = {"invalid", "out_of_memory", "crashed"}


def test_crafted_models_are_classified_and_the_agent_survives(agent: tuple[Session, Path], model: bytes) -> None:
    tally = Tally(*agent)
    results = {}
    for name, craft in hc.CRAFTED_MODELS.items():
        # many operators or subgraphs are valid models, only large ones: they may run
        expect = LOAD_REFUSALS | ({"ok"} if name.startswith("many_") else set())
        results[name] = tally.run("bench", craft(model), None, expect)
    rng = random.Random(2026)
    for _ in range(6):  # seeded lies in one schema field each
        tally.run("bench", hc.mutated_field(model, rng), None, RUN_STATUSES)
    _report("crafted models, agent", tally.figures())
    tally.assert_clean()
    # the runtime's verifier and its shape checks refuse these, with the runtime's reason
    for name in ("buffer_length_past_end", "tensor_index_out_of_range", "opcode_index_out_of_range",
                 "overflowing_input_shape", "buffer_offset_past_end", "quant_axis_out_of_range"):
        assert results[name]["status"] == "invalid" and results[name]["message"].strip(), results[name]


def test_the_worker_memory_limit_and_timeout_hold_against_crafted_models(agent: tuple[Session, Path]) -> None:
    tally = Tally(*agent)
    # a valid-looking one-ADD model whose input claims 2^40 float32 elements (4 TiB)
    huge = tally.run("bench", hc.huge_add(), None, {"out_of_memory"})
    assert "memory limit of 1024.0 MiB" in huge["message"], huge
    # 2 x 1 GiB of tensors: possible on this host, but not under the worker's 1 GiB limit (RLIMIT_AS)
    over = tally.run("bench", hc.huge_add((1 << 14, 1 << 14)), None, {"out_of_memory"})
    assert over["status"] == "out_of_memory"
    small = tally.run("bench", hc.huge_add((4, 4)), None, {"ok"})  # the same model, sized sanely, runs
    assert small["latency_ms"]["count"] >= 2
    start = time.monotonic()
    endless = tally.run("bench", hc.endless_while(), None, {"timeout"}, timeout=3)
    assert endless["status"] == "timeout" and time.monotonic() - start < 30
    _report("memory limit and timeout, agent", tally.figures())
    tally.assert_clean()


# ------------------------------------------------------------------------------ datasets on the board

def _good(n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, 8, 8, 1), dtype=np.float32), "y": rng.integers(0, 10, n)}


def _hostile_datasets(rng: random.Random) -> dict[str, tuple[bytes, str]]:
    """name -> (npz bytes, a phrase the bad_dataset message must hold)."""
    g = _good()
    nan_x = g["x"].copy()
    nan_x[0, 0, 0, 0] = np.nan
    good = hc.npz(**g)
    cases = {
        "pickled": (hc.pickled(), "Python objects"),
        "deflate_bomb_1GiB": (hc.deflate_bomb(1 << 30), "zip bomb"),
        "declared_size_lie": (hc.size_lie(), "inflates past its declared 4096 bytes"),
        "header_claims_2^40": (hc.header_lie(1 << 40), "more than the limit of 256.0 MiB"),
        "over_the_limit": (hc.header_lie((300 << 20) // 4), "1/4 of the worker memory limit"),
        "many_members": (hc.many_members(5000), "5000 members"),
        "dotdot_name": (hc.odd_name("../x.npy"), "not a simple array name"),
        "absolute_name": (hc.odd_name("/etc/x.npy"), "not a simple array name"),
        "not_npy_member": (hc.odd_name("x.txt"), "not an .npy array"),
        "not_a_zip": (b"not a zip file at all", "not a readable .npz"),
        "complex_x": (hc.npz(x=g["x"].astype(np.complex64), y=g["y"]), "not numeric"),
        "scalar_x": (hc.npz(x=np.float32(1), y=g["y"]), "shape"),
        "nan_x": (hc.npz(x=nan_x, y=g["y"]), "NaN"),
        "float_y": (hc.npz(x=g["x"], y=g["y"].astype(np.float32)), "integer class indices"),
        "nan_y": (hc.npz(x=g["x"], y=np.full(8, np.nan)), "integer class indices"),
        "scalar_y": (hc.npz(x=g["x"], y=np.int64(3)), "one class index per sample"),
        "y_count": (hc.npz(x=g["x"], y=g["y"][:5]), "8 samples but 5 labels"),
        "string_reference": (hc.npz(**g, reference=np.array(["a"] * 8)), "reference outputs"),
        "no_samples": (hc.npz(x=g["x"][:0], y=g["y"][:0]), "no samples"),
    }
    for i in range(2):
        cases[f"truncated_{i}"] = (hc.truncated(good, rng), "")
    return cases


def test_hostile_datasets_are_bad_dataset_never_crashed(agent: tuple[Session, Path], model: bytes) -> None:
    tally = Tally(*agent)
    cases = _hostile_datasets(random.Random(11))
    for name, (data, phrase) in cases.items():
        result = tally.run("eval", model, data, {"bad_dataset"})
        assert phrase in result.get("message", ""), (name, result)
    for name in ("pickled", "no_samples"):  # bench reads the same dataset the same way
        tally.run("bench", model, cases[name][0], {"bad_dataset"})
    control = tally.run("eval", model, hc.npz(**_good()), {"ok"})
    assert control["samples"] == 8
    # finite data, NaN outputs (LOG of negatives): the result stays strict JSON and says why agreement is missing
    x = -np.ones((3, 4), np.float32)
    nan_out = tally.run("eval", hc.log_of_input(), hc.npz(x=x, y=np.zeros(3, np.int64), reference=np.zeros((3, 4))),
                        {"ok"})
    assert "NaN" in nan_out["agreement"]["error"] and nan_out["accuracy"] is not None, nan_out
    nan_ref = tally.run("eval", model, hc.npz(**_good(), reference=np.full((8, 10), np.nan, np.float32)), {"ok"})
    assert "reference outputs contain NaN" in nan_ref["agreement"]["error"], nan_ref
    _report("hostile datasets, agent", tally.figures())
    tally.assert_clean()


# ------------------------------------------------------------------------------ the host


def test_the_npz_loader_stays_bounded_on_a_deflate_bomb(tmp_path: Path) -> None:
    """A 1 MB archive that inflates to 1 GiB costs the host next to nothing: refused before inflating."""
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(hc.deflate_bomb(1 << 30))
    assert bomb.stat().st_size < 2 << 20
    # VmHWM, this process's own peak (ru_maxrss would carry over the forking pytest's, across exec)
    code = ("import sys; from edgeship.converters.data import load_npz; from edgeship.sdk.errors import DatasetError\n"
            "try:\n    load_npz(sys.argv[1])\nexcept DatasetError as exc:\n    print(exc)\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    assert "zip bomb" in out[0] and str(bomb) in out[0] and "x.npy" in out[0]
    assert int(out[1]) < 200 << 10, out  # KiB: numpy's import, not a gigabyte


def test_npz_mutations_are_dataset_errors_or_arrays(tmp_path: Path) -> None:
    """400 seeded truncations, bit flips and byte runs of a valid npz: arrays or DatasetError, nothing else."""
    rng = random.Random(7)
    good = hc.npz(**_good(), extra=np.arange(40, dtype=np.int16).reshape(5, 8))
    path = tmp_path / "m.npz"
    outcomes: Counter[str] = Counter()
    for _ in range(400):
        data = bytearray(good)
        how = rng.choice(["truncate", "flip", "run"])
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        elif how == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(len(data))
            data[at : at + 8] = bytes(rng.randrange(256) for _ in range(8))
        path.write_bytes(bytes(data))
        try:
            arrays = load_npz(path)
            outcomes["loaded"] += 1
            assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())
        except DatasetError as exc:
            outcomes["refused"] += 1
            assert str(path) in str(exc)
    _report("npz mutations, host loader", {"trials": 400, **outcomes})
    assert outcomes["refused"] > 100


def test_schema_mutations_are_parsed_or_corrupt(model: bytes, tmp_path: Path) -> None:
    """300 seeded one-field lies (and the named crafted models) through inspect's parser: a dict or CorruptModelError."""
    rng = random.Random(3)
    outcomes: Counter[str] = Counter()
    path = tmp_path / "m.tflite"
    crafted = [craft(model) for craft in hc.CRAFTED_MODELS.values()]
    for data in crafted + [hc.mutated_field(model, rng) for _ in range(300)]:
        path.write_bytes(data)
        try:
            inspect_tflite(path)
            outcomes["described"] += 1
        except CorruptModelError as exc:
            outcomes["refused"] += 1
            assert str(path) in str(exc)
    _report("schema mutations, host parser", {"trials": len(crafted) + 300, **outcomes})
    assert outcomes["refused"] > 20


def run_cli(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """The installed `edgeship` command with a hard timeout of its own: a hang fails the test, never the suite."""
    import os

    return subprocess.run([str(EDGESHIP), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def _one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("edgeship: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _crafted_bundle(digits_bundle: Path, data: bytes, where: Path) -> Path:
    """A copy of a real bundle with its model replaced and its manifest's sha256 and size made to match."""
    import hashlib

    shutil.copytree(digits_bundle, where)
    (where / "model.tflite").write_bytes(data)
    manifest = json.loads((where / "manifest.json").read_text())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (where / "manifest.json").write_text(json.dumps(manifest))
    return where


#: crafted models the host refuses itself (the others are well-formed flatbuffers that lie about memory or size)
HOST_REFUSED = ("buffer_length_past_end", "tensor_index_out_of_range", "opcode_index_out_of_range",
                "quant_axis_out_of_range", "shared_shape_vector", "negative_dims", "overflowing_input_shape")


def test_inspect_ops_and_check_refuse_crafted_models_in_one_line(model: bytes, digits_bundle: Path,
                                                                 tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    for name in HOST_REFUSED:
        data = hc.CRAFTED_MODELS[name](model)
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        bundle = _crafted_bundle(digits_bundle, data, tmp_path / f"b-{name}")
        _one_error_line(run_cli("inspect", str(path), env=env), str(path), "corrupt")
        _one_error_line(run_cli("ops", str(path), env=env), "corrupt")
        _one_error_line(run_cli("check", str(bundle), "--board", "local", env=env), "corrupt")
    big = hc.huge_add()  # well-formed: described as what it claims, and the runtime refuses it to run
    (tmp_path / "huge.tflite").write_bytes(big)
    shown = run_cli("inspect", str(tmp_path / "huge.tflite"), "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["inputs"][0]["shape"] == [1 << 20, 1 << 20]
    data = tmp_path / "x.npz"
    data.write_bytes(hc.npz(x=np.zeros((2, 1, 1), np.float32), y=np.zeros(2, np.int64)))
    # LiteRT's own stderr lines (held while it loads, replayed when it fails: device_agent.runtime) come first
    proc = run_cli("eval-host", str(tmp_path / "huge.tflite"), "--data", str(data), env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeship: error: ") and "could not allocate the model's tensors" in last, last


def test_host_commands_refuse_hostile_datasets_in_one_line(digits_bundle: Path, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    rng = random.Random(5)
    cases = _hostile_datasets(rng)
    model_file = str(digits_bundle / "model.tflite")
    tried = 0
    for name in ("pickled", "deflate_bomb_1GiB", "declared_size_lie", "header_claims_2^40", "many_members",
                 "dotdot_name", "not_a_zip", "complex_x", "float_y", "scalar_y", "y_count", "truncated_0"):
        data, _ = cases[name]
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        tried += 1
        _one_error_line(run_cli("eval-host", model_file, "--data", str(path), env=env), str(path))
    for name in ("pickled", "deflate_bomb_1GiB"):  # eval loads the data (and the host reference) before connecting
        path = tmp_path / f"{name}.npz"
        tried += 1
        _one_error_line(run_cli("eval", str(digits_bundle), "--board", "local", "--data", str(path), env=env),
                        str(path))
    _report("hostile datasets, host CLI", {"trials": tried, "exit_1_one_line": tried})


def test_convert_refuses_a_bomb_as_calibration_data(digits: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "calib.npz"
    bomb.write_bytes(hc.deflate_bomb(1 << 30))
    proc = run_cli("convert", str(digits / "digits.keras"), "--recipe", "int8", "--calib", str(bomb),
                   "--out", str(tmp_path / "out"), "--quiet", env={"HOME": str(tmp_path / "home")}, timeout=240)
    _one_error_line(proc, str(bomb), "zip bomb")
    assert not (tmp_path / "out").exists()


def test_the_loader_itself_names_member_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "lie.npz"
    path.write_bytes(hc.header_lie(1 << 40))
    with pytest.raises(npzfile.NpzError) as err:
        npzfile.load(path, limit=1 << 20)
    assert err.value.member == "x.npy" and err.value.limit == 1 << 20 and str(path) not in str(err.value)
    arrays = npzfile.load(_write(tmp_path / "f.npz", hc.npz(f=np.asfortranarray(np.arange(6).reshape(2, 3)))))
    assert arrays["f"].tolist() == [[0, 1, 2], [3, 4, 5]]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

