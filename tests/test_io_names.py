"""Inputs and outputs by name: the manifest keeps the source's names, and every evaluator scores by name.

The TFLite converter orders a model's inputs and outputs its own way (here: inputs sorted by
name, outputs in neither the source's nor alphabetical order). A two-input, two-output Keras 3
model with named outputs ("digit", "parity", on layers whose names sort the other way) is
converted for real; `convert --eval`, `eval-host` and `eval --board local` must then report the
same accuracy for the same output, picked by `--output` or by default the source's first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.tflite_model import TFLiteModel
from tests.conftest import run_cli

pytestmark = pytest.mark.convert  # two_heads trains and converts a two-output Keras model

SOURCE_INPUTS = ["zleft", "aright"]  # the source's order; TFLite sorts them
SOURCE_OUTPUTS = ["digit", "parity"]


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained Keras 3 model: left and right halves of a digit in, {digit, parity} out; test data per head."""
    import keras
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("two_heads")
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    left, right, y = images[:, :, :4].reshape(-1, 32), images[:, :, 4:].reshape(-1, 32), d.target
    keras.utils.set_random_seed(0)
    a, b = keras.Input((32,), name="zleft"), keras.Input((32,), name="aright")
    h = keras.layers.Dense(48, activation="relu", name="trunk")(keras.layers.Concatenate(name="join")([a, b]))
    outputs = {"digit": keras.layers.Dense(10, activation="softmax", name="z_head")(h),
               "parity": keras.layers.Dense(2, activation="softmax", name="a_head")(h)}
    model = keras.Model([a, b], outputs)
    model.compile("adam", {"digit": "sparse_categorical_crossentropy", "parity": "sparse_categorical_crossentropy"})
    model.fit([left[:1400], right[:1400]], {"digit": y[:1400], "parity": y[:1400] % 2}, epochs=15, verbose=0)
    model.save(root / "two.keras")
    np.savez(root / "calib.npz", zleft=left[:300], aright=right[:300])
    np.savez(root / "digit.npz", zleft=left[1400:], aright=right[1400:], y=y[1400:])
    np.savez(root / "parity.npz", zleft=left[1400:], aright=right[1400:], y=y[1400:] % 2)
    return root


def _json(*args: str) -> Any:
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def bundles(two_heads: Path) -> dict[str, Path]:
    """The int8 bundle, evaluated at conversion on each head (default output, and --output parity)."""
    out = {}
    for name, extra in (("default", ["--eval", str(two_heads / "digit.npz")]),
                        ("parity", ["--eval", str(two_heads / "parity.npz"), "--output", "parity"])):
        out[name] = two_heads / f"int8-{name}"
        _json("convert", str(two_heads / "two.keras"), "-r", "int8", "--calib", str(two_heads / "calib.npz"),
              "-o", str(out[name]), *extra)
    return out


def test_manifest_keeps_source_names_and_order_whatever_order_the_flatbuffer_has(bundles: dict[str, Path]) -> None:
    m = json.loads((bundles["default"] / "manifest.json").read_text())
    model = TFLiteModel.from_path(bundles["default"] / "model.tflite")
    for kind, source in (("inputs", SOURCE_INPUTS), ("outputs", SOURCE_OUTPUTS)):
        entries = m[kind]
        flat = model.inputs if kind == "inputs" else model.outputs
        assert [e["index"] for e in entries] == [t.index for _, t in flat]  # the flatbuffer's order...
        assert sorted(e["name"] for e in entries) == sorted(source)  # ...named as the source names them
        assert [e["name"] for e in sorted(entries, key=lambda e: e["source_order"])] == source
        sig = dict(getattr(model.signatures[0], kind))
        assert all(sig[e["name"]] == e["index"] for e in entries)  # the name is the signature's, for that tensor
    assert [e["name"] for e in m["inputs"]] == sorted(SOURCE_INPUTS)  # the converter did reorder the inputs
    shapes = {e["name"]: e["shape"] for e in m["outputs"]}
    assert shapes == {"digit": [1, 10], "parity": [1, 2]}


def test_convert_eval_host_and_local_board_score_the_same_output_by_name(two_heads: Path,
                                                                         bundles: dict[str, Path]) -> None:
    seen = {}
    for head, bundle, data in (("digit", bundles["default"], two_heads / "digit.npz"),
                               ("parity", bundles["parity"], two_heads / "parity.npz")):
        acc = json.loads((bundle / "manifest.json").read_text())["accuracy"]
        assert acc["output"] == head
        flag = [] if head == "digit" else ["--output", head]  # digit: the source's first output, the default
        host = _json("eval-host", str(bundle), "--data", str(data), *flag)
        board = _json("eval", str(bundle), "--board", "local", "--data", str(data), *flag)[0]["result"]
        assert host["output"] == board["result"]["output"] == board["options"]["output"] == head
        assert host["accuracy"] == board["result"]["accuracy"] == board["host"]["accuracy"] == acc["model"], head
        assert board["result"]["agreement"]["argmax_agreement"] == 1.0  # the board compared the same output
        seen[head] = acc["model"]
    # each head scores well only against its own labels: the wrong head would be near chance
    assert seen["digit"] > 0.8 and seen["parity"] > 0.8, seen


def test_bare_tflite_defaults_to_the_first_signature_output(two_heads: Path, bundles: dict[str, Path],
                                                            tmp_path: Path) -> None:
    bare = tmp_path / "two.tflite"  # no manifest beside it
    bare.write_bytes((bundles["default"] / "model.tflite").read_bytes())
    first = TFLiteModel.from_path(bare).signatures[0].outputs[0][0]
    report = _json("eval-host", str(bare), "--data", str(two_heads / f"{first}.npz"))
    assert report["output"] == first


def test_an_unknown_output_is_one_line_naming_the_outputs(two_heads: Path, bundles: dict[str, Path]) -> None:
    for args in (["eval-host", str(bundles["default"]), "--data", str(two_heads / "digit.npz"), "--output", "digits"],
                 ["eval", str(bundles["default"]), "--board", "local", "--data", str(two_heads / "digit.npz"),
                  "--output", "digits"]):
        r = run_cli(*args)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeship: error:"), r.stderr
        assert "'digits'" in lines[0] and "digit" in lines[0] and "parity" in lines[0]
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe
    from edgeship.sdk.errors import UsageError

    with pytest.raises(UsageError, match="no output 'digits'; its outputs: digit, parity"):
        convert(two_heads / "two.keras", Recipe.from_name("float32"), two_heads / "never",
                eval_data=two_heads / "digit.npz", output="digits")
    assert not (two_heads / "never").exists()


def test_saved_model_signature_keys_are_the_names(two_io_saved_model: Path, tmp_path: Path) -> None:
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

    result = convert(two_io_saved_model, Recipe.from_name("float32"), tmp_path / "b", signature="predict")
    m = result.manifest
    assert {t.name for t in m.inputs} == {"features", "context"}
    assert {t.name: t.shape for t in m.outputs} == {"scores": [1, 10], "embedding": [1, 4]}
    assert m.first_output() == "embedding"  # a signature's outputs are a dict: its order is by key
    assert sorted(t.source_order for t in m.outputs) == [0, 1]  # type: ignore[type-var]


def test_one_output_model_is_named_by_its_layer(convert_digits: Any) -> None:
    m = convert_digits("int8").manifest
    assert [(t.name, t.source_order) for t in m.outputs] == [("probs", 0)]
    assert m.accuracy.output == "probs"


def test_agent_refuses_an_output_option_that_is_not_a_bounded_name(convert_digits: Any, tmp_path: Path) -> None:
    from edgeship.sdk.client import Session
    from edgeship.sdk.errors import AgentError
    from edgeship.sdk.transport.local import LocalStream

    model = convert_digits("int8").model_path.read_bytes()
    session = Session(LocalStream(tmp_path / "store", ()))
    session.hello()
    try:
        sha = session.upload(model).sha256
        for bad in (["probs"], "x" * 300, "probs\n"):
            with pytest.raises(AgentError, match="option output") as err:
                session.run("eval", sha, None, {"output": bad})
            assert err.value.code == "bad_request"
        data = session.upload(_npz(x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, np.int64))).sha256
        result = session.run("eval", sha, data, {"output": "logits"})
        assert result["status"] == "bad_dataset" and "no output 'logits'; its outputs: probs" in result["message"]
        assert session.run("eval", sha, data, {"output": "probs"})["status"] == "ok"
    finally:
        session.close()


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
