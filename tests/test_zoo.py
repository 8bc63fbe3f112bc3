"""The model zoo through edgeship (issue 9, "The model zoo in the tests").

Every family of tests/zoo.py converts with every recipe that applies to it; the converted
model keeps the recipe's promises (static shapes, integer-only where the zoo claims it, the
manifest agreeing with the flatbuffer), stays near the float model's accuracy, and
scores its outputs by name. edgeship's int8 is compared with a plain TFLiteConverter on the
same model and calibration samples. A few cells run through the `edgeship` command, as a
user types it; the rest call converters.convert.convert (the same code, without a process
start per cell). Each conversion runs once per session and is shared by the tests that
look at it. docs/zoo.md describes the families.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeship.converters.manifest import Manifest
from edgeship.converters.tflite_model import TFLiteModel
from tests.conftest import QAT_GOAL, Converted, run_cli
from tests.zoo import FAMILIES, TWO_IO_OUTPUTS, ZooModel, accuracy, raw_convert

# Every family with every recipe that applies to it (the zoo says which): each cell is converted once per
# session and shared by the tests that look at it; the converter's child is kept between cells.
CELLS = [(family, recipe) for family, fam in FAMILIES.items() for recipe in fam.recipes]
# How far below the float model (in accuracy, as a fraction) each recipe may land.
BOUNDS = {"float32": 0.005, "float16": 0.005, "dynamic": 0.01, "int16x8": 0.01}


def _bound(z: ZooModel, recipe: str) -> float:
    if recipe == "int8":
        return 0.02 if z.int8_friendly else 0.05
    if recipe == "qat":
        return 0.005 if z.family in QAT_GOAL else 0.02
    return BOUNDS[recipe]


def test_every_integer_claim_is_a_tested_cell() -> None:
    """Each family's fully-integer claims are among its recipes, so the cells below check every one of them."""
    for family, fam in FAMILIES.items():
        assert set(fam.fully_integer) <= set(fam.recipes), family
    for recipe in ("float32", "float16", "dynamic", "int8", "qat", "int16x8"):
        assert sum((f, recipe) in CELLS for f in FAMILIES) >= 3, recipe


@pytest.mark.slow
@pytest.mark.parametrize(("family", "recipe"), CELLS)
def test_recipe_converts_and_keeps_its_promises(converted: Callable[[str, str], Converted], family: str,
                                                recipe: str) -> None:
    c = converted(family, recipe)
    z, model, m = c.zoo, c.model, c.manifest
    assert model.dynamic_tensors() == []
    assert m.recipe["name"] == recipe
    # Inputs and outputs keep the source's names, whatever order the converter put them in.
    assert sorted(t.name for t in m.inputs) == sorted(z.inputs)
    assert sorted(t.name for t in m.outputs) == sorted(z.outputs)
    # The manifest says what the flatbuffer holds.
    assert m.integer.fully_integer == model.fully_integer
    assert m.integer.float_ops == model.float_ops()
    if recipe in z.fully_integer:
        assert model.fully_integer and model.float_ops() == [], model.float_ops()
        assert {t.dtype for _, t in model.inputs + model.outputs} == {"int8"}
    if recipe == "int16x8":
        assert model.float_ops() == [], model.float_ops()
        assert any(t.dtype == "int16" for sg in model.subgraphs for t in sg.tensors), "no int16 activations"
        assert {t.dtype for _, t in model.inputs + model.outputs} <= {"int16", "float32"}
    if recipe in ("float32", "float16", "dynamic"):
        assert {t.dtype for _, t in model.inputs + model.outputs} == {"float32"}


@pytest.mark.slow
@pytest.mark.parametrize(("family", "recipe"), CELLS)
def test_accuracy_stays_near_float(converted: Callable[[str, str], Converted], family: str, recipe: str) -> None:
    c = converted(family, recipe)
    z, acc = c.zoo, c.manifest.accuracy
    assert acc is not None and acc.samples == 360
    # The float source, run by the converter in TensorFlow, scores what it scored in Keras after training.
    assert abs(acc.float_model - z.float_accuracy) <= 1.01 / acc.samples, (acc.float_model, z.float_accuracy)
    # Scored on LiteRT by output name, the converted model gets the number the manifest recorded.
    mine, scored = accuracy(c.flatbuffer, z)
    assert scored == z.outputs[0]
    assert mine == pytest.approx(acc.model, abs=1e-9)
    assert mine >= acc.float_model - _bound(z, recipe), f"{recipe} {mine:.4f} vs float {acc.float_model:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mobilenetv2", "resnet", "dscnn"])
def test_qat_folds_batch_norm(converted: Callable[[str, str], Converted], family: str) -> None:
    """QAT's int8 model has no MUL/ADD left over from BatchNormalization: no more than post-training int8 has."""
    qat = Counter(u.name for u in converted(family, "qat").model.op_uses for _ in range(u.count))
    int8 = Counter(u.name for u in converted(family, "int8").model.op_uses for _ in range(u.count))
    for op in ("MUL", "ADD", "SUB"):
        assert qat[op] <= int8[op], (op, dict(qat), dict(int8))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "dscnn", "two_io", "attention"])
def test_int8_is_as_small_and_accurate_as_the_plain_converter(converted: Callable[[str, str], Converted],
                                                              family: str, tmp_path: Path) -> None:
    """edgeship never does worse than tf.lite.TFLiteConverter with the same calibration samples."""
    ours = converted(family, "int8")
    z = ours.zoo
    raw = raw_convert(z, "int8", tmp_path)
    raw_acc, _ = accuracy(raw, z)
    ours_acc, _ = accuracy(ours.flatbuffer, z)
    assert len(ours.flatbuffer) <= len(raw), (len(ours.flatbuffer), len(raw))
    # One sample of slack: edgeship's int8 input quantizes the data that the plain converter's float input keeps.
    assert ours_acc >= raw_acc - 1.01 / 360, (ours_acc, raw_acc)
    raw_float = TFLiteModel.from_bytes(raw).float_ops()
    if raw_float:  # what stayed float for the plain converter is named in edgeship's manifest
        assert ours.manifest.integer.float_ops, raw_float


@pytest.mark.slow
@pytest.mark.parametrize("output", TWO_IO_OUTPUTS)
def test_two_io_output_is_scored_by_name_everywhere(zoo: Callable[[str], Any], converted: Callable[[str, str], Converted],
                                                    tmp_path: Path, output: str) -> None:
    """convert --eval (--output), eval-host --output and LiteRT by name agree, for either output of two_io.

    The first output is the default: its bundle is the two_io int8 cell, converted on the command
    line without --output. The other is asked for with --output, on data whose y holds its labels.
    """
    z = zoo("two_io")
    if output == z.outputs[0]:
        cell = converted("two_io", "int8")
        bundle, data = cell.bundle, z.test
        recorded = cell.raw_manifest["accuracy"]["model"]
    else:
        arrays = dict(np.load(z.test))
        data = tmp_path / f"test-{output}.npz"
        np.savez(data, **{k: v for k, v in arrays.items() if not k.startswith("y")}, y=arrays[f"y:{output}"])
        bundle = tmp_path / "bundle"
        done = run_cli("convert", str(z.path), "-r", "int8", "--calib", str(z.calib), "--eval", str(data),
                       "--output", output, "-o", str(bundle), "--json")
        assert done.returncode == 0, done.stderr
        recorded = json.loads(done.stdout)["manifest"]["accuracy"]["model"]
    host = run_cli("eval-host", str(bundle), "--data", str(data), "--output", output, "--json")
    assert host.returncode == 0, host.stderr
    mine, scored = accuracy((bundle / "model.tflite").read_bytes(), z, output=output, data=data)
    assert scored == output
    assert json.loads(host.stdout)["accuracy"] == pytest.approx(mine, abs=1e-9)
    assert recorded == pytest.approx(mine, abs=1e-9)
    assert mine >= 0.9  # the head really was scored against its own labels
    classes = {t["name"]: t["shape"][-1] for t in json.loads((bundle / "manifest.json").read_text())["outputs"]}
    assert classes == {"digit": 10, "above_four": 2}


@pytest.mark.slow
def test_recurrent_int8_fails_in_one_line_and_leaves_nothing(zoo: Callable[[str], Any], tmp_path: Path) -> None:
    """A Keras 3 LSTM with -r int8 (the converter crashes on it today) is one line and a non-zero exit, or a model.

    Either way nothing is left behind: no .partial bundle beside the output, no temporary
    SavedModel in the temporary directory (a private TMPDIR, so other processes' files do not count).
    """
    z = zoo("lstm")
    bundles, tmp = tmp_path / "bundles", tmp_path / "tmp"
    bundles.mkdir()
    tmp.mkdir()
    out = bundles / "lstm-int8"
    done = run_cli("convert", str(z.path), "-r", "int8", "--calib", str(z.calib), "--eval", str(z.test), "-o", str(out),
                   env={"TMPDIR": str(tmp)})
    if done.returncode == 0:  # converting is fine too, if the model is right
        assert Manifest.load(out).accuracy.model >= z.float_accuracy - 0.05  # type: ignore[union-attr]
    else:
        assert done.returncode > 0, f"killed by signal {-done.returncode}"
        lines = done.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("edgeship: error: "), done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert "try recipe dynamic" in lines[-1], lines[-1]
    assert sorted(p.name for p in bundles.iterdir()) == (["lstm-int8"] if done.returncode == 0 else [])
    assert sorted(p.name for p in tmp.iterdir()) == []


@pytest.mark.slow
def test_fused_lstm_manifest_says_stateful(converted: Callable[[str, str], Converted]) -> None:
    """The tf_keras LSTM fuses to UNIDIRECTIONAL_SEQUENCE_LSTM with variable (state) tensors: the manifest says so."""
    from tensorflow.lite.python import schema_py_generated as schema

    c = converted("lstm_h5", "float32")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in {u.name for u in c.model.op_uses}
    root = schema.Model.GetRootAsModel(c.flatbuffer, 0)
    graph = root.Subgraphs(0)
    variables = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength()) if graph.Tensors(i).IsVariable()]
    assert variables, "expected the fused LSTM's state tensors to be variables"
    assert c.raw_manifest.get("stateful") is True, sorted(c.raw_manifest)
