"""Keras / SavedModel -> TFLite bundle: the one function that applies a Recipe to TFLiteConverter.

The bundle is built in a temporary directory beside the destination and renamed into
place at the end, so a failure at any step leaves no half bundle behind.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.converters import data as datasets
from edgeship.converters import isolated
from edgeship.converters.manifest import (
    MODEL_FILE,
    OPS_DIR,
    Accuracy,
    Manifest,
    SourceInfo,
    model_facts,
    named_float_ops,
)
from edgeship.converters.opsgen import OpSet, write_ops_dir
from edgeship.converters.recipe import Recipe
from edgeship.converters.source import SourceModel, load_source
from edgeship.converters.tflite_converter import representative_data
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import BundleError, ConversionError, DatasetError, UsageError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
FINETUNE_LOSS_WARN = 0.02  # a fine-tuned float model this far below the source float model gets a warning


@dataclass(frozen=True)
class ConversionResult:
    """What `convert` made: where the bundle is, and its validated manifest."""

    bundle: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.bundle / MODEL_FILE


def _tool_versions(recipe: Recipe) -> dict[str, str]:
    from edgeship.device_agent import __version__

    names = ["tensorflow", "keras", "numpy"] + (["tf-keras", "tensorflow-model-optimization"] if recipe.finetunes else [])
    out = {"edgeship": __version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _check_result(model: TFLiteModel, recipe: Recipe, source: SourceModel) -> None:
    """The converted model must keep the recipe's promises: static shapes, the asked-for I/O, and with
    --int8-strict, integer ops only."""
    dynamic = model.dynamic_tensors()
    if dynamic:
        raise ConversionError(f"{source.path}: the converted model still has dynamic tensors "
                              f"({', '.join(dynamic[:5])}); {_dynamic_hint(model, dynamic)}")
    if recipe.integer:
        float_ops = model.float_ops()
        if float_ops and recipe.int8_strict:
            named = named_float_ops(float_ops, model.float_op_tensors())
            raise ConversionError(f"the converter left {len(float_ops)} op(s) float: {named}; without it, recipe "
                                  f"{recipe.name} accepts a model with these ops in float, or change the layers they "
                                  f"come from", option="int8_strict")
        for name, t in model.inputs + model.outputs:
            if t.dtype != recipe.io:
                raise ConversionError(f"recipe {recipe.name}: tensor {name!r} is {t.dtype}, not {recipe.io}", option="io")


def _dynamic_hint(model: TFLiteModel, dynamic: list[str]) -> str:
    """What to do about dynamic tensors. A recurrent layer returning sequences leaves its loop's (WHILE)
    TensorList dynamic; unrolled over the fixed number of time steps, it has none."""
    if any(u.name == "WHILE" for u in model.op_uses):
        layers = []
        for name in dynamic:
            parts = name.split(";")[0].split("/")
            if "while" in parts and parts.index("while") > 0:
                layer = re.sub(r"_\d+$", "", parts[parts.index("while") - 1])  # Keras 3 scopes add _N
                if layer not in layers:
                    layers.append(layer)
        which = f"recurrent layer(s) {', '.join(layers)}" if layers else "a recurrent layer"
        return (f"they come from the loop (WHILE) of {which}, which returns sequences; rebuild it with "
                f"unroll=True (the number of time steps is fixed, so the loop unrolls) and convert again")
    return "it cannot be made static; export the model with fully defined shapes"


def _run_converter(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
                   model_name: str = "the model", child: Any = None) -> isolated.Converted:
    """Convert in a child process (converters.isolated; `child`: one started earlier), so a crash of
    TensorFlow's converter is an error here."""
    if child is not None:
        return child.convert(saved_model, key, recipe, representative, model_name)  # type: ignore[no-any-return]
    return isolated.convert(saved_model, key, recipe, representative, model_name)


def _prepare_output(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise BundleError(f"{out}: exists and is not empty; set it to replace the directory", option="force")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _install(staging: Path, out: Path) -> None:
    """Move the finished bundle into place; an existing one is swapped out only at the end."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def convert(
    model_path: Path,
    recipe: Recipe,
    out: Path,
    *,
    signature: str = "serving_default",
    batch: int = 1,
    eval_data: Path | None = None,
    output: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    custom_objects: Sequence[str] = (),
) -> ConversionResult:
    """Convert a .keras/.h5 model or SavedModel to a TFLite bundle in `out` (model, manifest, ops/).

    With `eval_data`, the labels score the output named `output` (default: the source's first).
    `custom_objects`: the user's modules (FILE.py or package.module) defining custom Keras layers.
    """
    say = progress or (lambda _msg: None)
    _check_values(recipe, batch, eval_data, output)
    staging = _prepare_output(Path(out), force)
    try:
        with _early_converter(recipe) as child:
            result = _convert_into(Path(model_path), recipe, staging, signature, batch, eval_data, output, say,
                                   tuple(custom_objects), child)
        _install(staging, Path(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConversionResult(Path(out), result)


def _check_values(recipe: Recipe, batch: int, eval_data: Path | None, output: str | None) -> None:
    """What can be checked from the arguments alone, before TensorFlow is imported (the Recipe checked its own)."""
    if batch < 1:
        raise UsageError(f"must be at least 1 (got {batch})", option="batch")
    if output is not None and eval_data is None:
        raise UsageError("picks the output that the eval data's labels score; give eval data too", option="output")
    if recipe.calibration is not None:
        datasets.require_data(recipe.calibration, "calibration", folder=True)
    if recipe.train is not None:
        datasets.require_data(recipe.train, "train")
    if eval_data is not None:
        datasets.require_data(eval_data, "eval_data")


def _early_converter(recipe: Recipe) -> contextlib.AbstractContextManager[Any]:
    """The converter's child process, started now so that its TensorFlow import overlaps loading and
    exporting the model; a fine-tuning recipe starts it when it needs it, not minutes before."""
    if recipe.finetunes:
        return contextlib.nullcontext(None)
    return isolated.converter()


def _convert_into(model_path: Path, recipe: Recipe, staging: Path, signature: str, batch: int,
                  eval_data: Path | None, output: str | None, say: Progress,
                  custom_objects: tuple[str, ...] = (), child: Any = None) -> Manifest:
    strategy = None
    if recipe.finetunes:  # a strategy must exist before TensorFlow runs its first op
        from edgeship.converters import distribute

        strategy = distribute.strategy_for(recipe.distribution, say, cleanup=staging)
    say(f"loading {model_path}")
    source = load_source(model_path, signature, custom_objects)
    source.static_specs(batch)  # fail early when the model cannot be made static
    names = [spec.name for spec in source.inputs]
    scored = _scored_output(source, output, eval_data)

    eval_features = eval_labels = None
    if eval_data is not None:  # check eval data before spending time converting
        eval_features = datasets.features_for(eval_data, source.inputs, "eval")
        eval_labels = datasets.labels(eval_data)
        if len(eval_labels) != len(next(iter(eval_features.values()))):
            raise DatasetError(f"{eval_data}: {len(eval_labels)} labels for "
                               f"{len(next(iter(eval_features.values())))} samples")

    representative = None
    convert_model = None
    if recipe.calibrates:
        assert recipe.calibration is not None  # Recipe guarantees it
        features = datasets.features_for(recipe.calibration, source.inputs, "calibration", recipe.image_range)
        picked = datasets.pick_calibration(features, recipe.calib_samples, recipe.calib_samples_explicit,
                                           recipe.calibration)
        if len(next(iter(picked.values()))) < batch:
            raise DatasetError(f"{recipe.calibration}: fewer calibration samples than one batch ({batch})")
        representative = representative_data(picked, names, batch)
        say(f"calibrating on {len(next(iter(picked.values())))} samples from {recipe.calibration}")
    if recipe.finetunes:
        convert_model, tuned_representative = _finetuned_model(source, recipe, names, batch, strategy, say)
        representative = representative or tuned_representative

    with tempfile.TemporaryDirectory(prefix="edgeship-static-") as tmp:
        say("exporting a static-shape graph")
        saved, key = source.export_static(Path(tmp) / "static", batch, convert_model)
        say(f"converting with recipe {recipe.name}")
        converted = _run_converter(saved, key, recipe, representative, str(source.path), child)
    flatbuffer, fallback = converted.flatbuffer, converted.fallback
    if converted.mixed_reason:
        say(f"{converted.mixed_reason}; made the plain TFLite converter's mixed model instead "
            f"(int8_strict refuses it)")

    model = TFLiteModel.from_bytes(flatbuffer, source="converted model")
    _check_result(model, recipe, source)
    (staging / MODEL_FILE).write_bytes(flatbuffer)
    write_ops_dir(OpSet.of([(MODEL_FILE, model)]), staging / OPS_DIR)

    accuracy = None
    if eval_data is not None and eval_features is not None:
        say(f"evaluating on {eval_data}")
        accuracy = _host_accuracy(source, flatbuffer, eval_features, eval_labels, batch, eval_data, scored,
                                  convert_model, recipe)

    manifest = Manifest(
        **model_facts(model, flatbuffer, names, source.outputs),
        recipe=recipe.describe(),
        batch=batch,
        source=SourceInfo(path=str(source.path), kind=source.kind, sha256=source.sha256,  # type: ignore[arg-type]
                          signature=source.signature),
        tools=_tool_versions(recipe),
        accuracy=accuracy,
        float_fallback=fallback,
    )
    manifest.write(staging)
    return manifest


def _finetuned_model(source: SourceModel, recipe: Recipe, names: list[str], batch: int, strategy: Any,
                     say: Progress) -> tuple[Any, Callable[[], Iterator[Any]]]:
    """The source model after the recipe's fine-tuning stages (pruning, clustering, QAT), and data to calibrate it."""
    from edgeship.converters import finetune, qat

    train = recipe.train
    assert train is not None  # Recipe guarantees it for every fine-tuning recipe
    x = datasets.features_for(train, source.inputs, "training")
    model, flavour = source.tuning_model()
    ys = datasets.output_labels(train, source.tuning_outputs)
    if len(ys[0]) != len(next(iter(x.values()))):
        raise DatasetError(f"{train}: {len(ys[0])} labels for {len(next(iter(x.values())))} samples")
    y = [np.asarray(a) for a in ys] if len(ys) > 1 else np.asarray(ys[0])
    sample = [x[n][:8] for n in names] if len(names) > 1 else x[names[0]][:8]
    say("rebuilding the model in tf_keras for tfmot" if flavour != "tf_keras" else "preparing the model for tfmot")
    with strategy.scope():
        tfk_model = qat.to_tf_keras(model, flavour, sample)
    inputs = [x[t.name.split(":")[0]] for t in tfk_model.inputs] if len(tfk_model.inputs) > 1 else x[names[0]]
    tuned = _finetune(tfk_model, recipe, finetune.TrainData(inputs, y), strategy, say)
    # Layers QAT left float (and every layer of a pruned/clustered int8 model) need ranges: the training data gives them.
    picked = datasets.pick_calibration(x, 200, False, train)
    return tuned, representative_data(picked, names, batch)


def _finetune(model: Any, recipe: Recipe, data: Any, strategy: Any, say: Progress) -> Any:
    """Run the recipe's stages on a tf_keras model in tfmot's collaborative order: prune, cluster (keeping the
    zeros), QAT (with a scheme that keeps both); returns the model to convert. `data`: a finetune.TrainData."""
    from edgeship.converters import finetune, optimize, qat

    c = recipe.compression
    loss = finetune.loss_for(model, data.y, recipe.qat.loss if recipe.qat else "auto")
    pruned = clustered = False
    if c is not None and c.sparsity is not None:
        model = optimize.prune(model, c, data, strategy, say, loss)
        pruned = True
    if c is not None and c.clusters is not None:
        model = optimize.cluster(model, c, data, strategy, say, loss, preserve_sparsity=pruned)
        clustered = True
    if recipe.qat is not None:
        say(f"quantization-aware fine-tuning for {recipe.qat.epochs} epoch(s) on {recipe.qat.train}")
        model = qat.quantize_and_finetune(model, recipe.qat, data, strategy, say,
                                          scheme=optimize.qat_scheme(pruned, clustered))
    return model


def _scored_output(source: SourceModel, output: str | None, eval_data: Path | None) -> str:
    """The source output the eval data's labels score: `output` when given (it must exist), else the first."""
    from edgeship.device_agent.evaluate import EvalInputError, pick_output

    try:
        return pick_output(source.outputs, output)
    except EvalInputError as exc:
        raise UsageError(str(exc), option="output") from exc


def _host_accuracy(source: SourceModel, flatbuffer: bytes, features: dict[str, np.ndarray], y: Any,
                   batch: int, data_path: Path, output: str, tuned: Any, recipe: Recipe) -> Accuracy:
    """Top-1 of the TFLite model, the source float model and (after fine-tuning) the tuned float model.

    All three score the same output, found by name: the converter may reorder outputs.
    """
    from edgeship.device_agent.evaluate import top1
    from edgeship.sdk.hosteval import evaluate_on_host

    run = evaluate_on_host(flatbuffer, features, y, output=output, model_name="the converted model",
                           data_name=str(data_path))
    result = run.result
    float_acc = top1(source.predict(features, batch)[output], y)
    tuned_acc = top1(source.predict(features, batch, tuned)[output], y) if tuned is not None else None
    warnings = []
    if tuned_acc is not None and float_acc - tuned_acc > FINETUNE_LOSS_WARN:
        warnings.append(_finetune_warning(recipe, float_acc, tuned_acc, result.samples, data_path))
    return Accuracy(data=str(data_path), samples=result.samples, output=output, model=float(result.accuracy or 0.0),
                    float_model=float_acc, finetuned_float_model=tuned_acc, runtime=run.runtime_text,
                    warnings=warnings)


def _finetune_warning(recipe: Recipe, float_acc: float, tuned_acc: float, samples: int, data_path: Path) -> str:
    """One sentence: which fine-tuning stages lost how much accuracy, and what to try."""
    c = recipe.compression
    stages = [name for name, on in (("pruning", c is not None and c.sparsity is not None),
                                    ("clustering", c is not None and c.clusters is not None),
                                    ("QAT", recipe.qat is not None)) if on]
    hints = []
    if c is not None and c.sparsity is not None:
        hints.append("a lower sparsity" + (" or prune_block 1" if c.block != 1 else ""))
    if c is not None and c.clusters is not None:
        hints.append("more clusters")
    hints.append("more epochs")
    return (f"the fine-tuned float model ({', '.join(stages)}) scores {tuned_acc * 100:.2f}% on {samples} samples of "
            f"{data_path}, {(float_acc - tuned_acc) * 100:.2f} points below the source's {float_acc * 100:.2f}%: "
            f"fine-tuning lost it before conversion; try {', '.join(hints)}")
