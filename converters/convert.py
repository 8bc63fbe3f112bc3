"""Keras / SavedModel -> TFLite bundle: the one function that applies a Recipe to TFLiteConverter.

The bundle is built in a temporary directory beside the destination and renamed into
place at the end, so a failure at any step leaves no half bundle behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.converters import data as datasets
from edgeship.converters._tf import first_line, tensorflow
from edgeship.converters.manifest import (
    MODEL_FILE,
    OPS_DIR,
    Accuracy,
    FloatFallback,
    Manifest,
    SourceInfo,
    model_facts,
    named_float_ops,
)
from edgeship.converters.opsgen import OpSet, write_ops_dir
from edgeship.converters.recipe import Recipe
from edgeship.converters.source import SourceModel, load_source
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import BundleError, ConversionError, DatasetError, EdgeshipError, UsageError

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


def _representative(features: dict[str, np.ndarray], names: list[str],
                    batch: int) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """A representative_dataset yielding dicts of static-batch-sized chunks keyed by signature input name."""
    n = len(next(iter(features.values())))

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, n - batch + 1, batch):
            yield {name: features[name][start : start + batch] for name in names}

    return gen


def _configure(converter: Any, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
               strict: bool = True) -> None:
    """Apply a recipe to a TFLiteConverter: the only place converter flags are set.

    For the integer recipes, `strict` restricts the converter to integer kernels
    (TFLITE_BUILTINS_INT8, or the 16x8 set); without it the converter is told only what a
    plain TFLiteConverter is (optimizations, representative data, I/O types), so it keeps
    float the ops it cannot quantize, as the raw converter does.
    """
    tf = tensorflow()
    if recipe.name == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe.name == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif recipe.integer:
        if representative is None:
            raise ConversionError(f"recipe {recipe.name} needs representative data")  # guarded by Recipe; kept explicit
        converter.representative_dataset = representative
        if recipe.name == "int16x8":
            int16x8 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            # TFLite's own way to let 16x8 keep unsupported ops float: add the float builtins.
            converter.target_spec.supported_ops = [int16x8] if strict else [int16x8, tf.lite.OpsSet.TFLITE_BUILTINS]
        elif strict:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}[recipe.io]
        converter.inference_input_type = io
        converter.inference_output_type = io


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
            raise ConversionError(f"recipe {recipe.name} --int8-strict: the converter left {len(float_ops)} op(s) "
                                  f"float: {named}; drop --int8-strict to accept a model with these ops in float, "
                                  f"or change the layers they come from")
        for name, t in model.inputs + model.outputs:
            if t.dtype != recipe.io:
                raise ConversionError(f"recipe {recipe.name}: tensor {name!r} is {t.dtype}, --io asked for {recipe.io}")


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


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The converter's C++ prints to fd 1; keep stdout clean for --json output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@dataclass(frozen=True)
class Converted:
    """What the TFLite converter made: the flatbuffer, what --keep-float left in float, and for an
    integer recipe that could not stay all-integer, why (the model is then the raw converter's mixed one)."""

    flatbuffer: bytes
    fallback: FloatFallback | None = None
    mixed_reason: str | None = None


def _run_converter(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
                   model_name: str = "the model", child: Any = None) -> Converted:
    """Convert in a child process (converters.isolated; `child`: one started earlier), so a crash of
    TensorFlow's converter is an error here."""
    from edgeship.converters import isolated

    if child is not None:
        return child.convert(saved_model, key, recipe, representative, model_name)  # type: ignore[no-any-return]
    return isolated.convert(saved_model, key, recipe, representative, model_name)  # type: ignore[no-any-return]


def convert_here(saved_model: Path, key: str, recipe: Recipe,
                 representative: Callable[[], Iterator[Any]] | None) -> Converted:
    """Run TFLiteConverter on a static SavedModel, in this process: the child of converters.isolated calls it.

    An integer recipe is converted strictly first (integer kernels only). When that fails or
    leaves ops in float, and --int8-strict is not set, the model is converted again as a plain
    TFLiteConverter would (optimizations and representative data only), which keeps float what it
    cannot quantize: edgeship never does worse than the raw converter.
    """
    if recipe.keeps_float:
        from edgeship.converters import quantdebug

        assert representative is not None  # int8 recipes always have one
        converter = _converter(saved_model, key, recipe, representative, strict=True)
        with _translated(recipe):
            kept = quantdebug.quantize_selectively(converter, representative, recipe.keep_float, recipe.keep_float_auto)
        fallback = FloatFallback(layers=list(kept.layers), requested=recipe.keep_float_text,
                                 int8_size=kept.int8_size, size_cost=len(kept.flatbuffer) - kept.int8_size)
        return Converted(kept.flatbuffer, fallback)
    if not recipe.integer:
        return Converted(_convert_once(saved_model, key, recipe, representative, strict=False))
    try:
        flatbuffer = _convert_once(saved_model, key, recipe, representative, strict=True)
        model = TFLiteModel.from_bytes(flatbuffer, source="converted model")
        if not model.float_ops() or recipe.int8_strict:
            return Converted(flatbuffer)  # _check_result refuses float ops under --int8-strict, naming them
        reason = f"the converter left op(s) float: {named_float_ops(model.float_ops(), model.float_op_tensors())}"
    except ConversionError as exc:
        if recipe.int8_strict:
            raise
        reason = f"the strict integer conversion failed ({exc})"
    log.info("recipe %s: %s; converting as the plain TFLite converter does", recipe.name, reason)
    return Converted(_convert_once(saved_model, key, recipe, representative, strict=False), mixed_reason=reason)


def _converter(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
               strict: bool) -> Any:
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[key])
    _configure(converter, recipe, representative, strict)
    return converter


def _convert_once(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
                  strict: bool) -> bytes:
    converter = _converter(saved_model, key, recipe, representative, strict)
    with _translated(recipe):
        return bytes(converter.convert())


@contextlib.contextmanager
def _translated(recipe: Recipe) -> Iterator[None]:
    """The converter's exceptions as one ConversionError line; edgeship's own errors pass through."""
    try:
        yield
    except EdgeshipError:  # ours already names the problem (an unknown --keep-float layer, say)
        raise
    except Exception as exc:  # ConverterError, ValueError, RuntimeError: all are "the converter refused"
        msg = first_line(exc)
        for line in str(exc).splitlines():  # the MLIR error worth showing is usually an 'error:' line
            if "error:" in line:
                msg = _without_location(line.split("error:", 1)[1].strip())
                break
        raise ConversionError(f"TFLite converter failed for recipe {recipe.name}: {msg}") from exc


def _without_location(message: str) -> str:
    """An MLIR diagnostic without its leading loc(...) (pages of call sites): "'tf.Erf' op is neither ..."."""
    if not message.startswith("loc("):
        return message
    depth = 0
    for i in range(3, len(message)):  # from the "(" of "loc("
        depth += {"(": 1, ")": -1}.get(message[i], 0)
        if depth == 0:
            return message[i + 1 :].lstrip(": ").strip() or message
    return message


def _prepare_output(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise BundleError(f"{out}: exists and is not empty; pass --force to replace it")
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
    if batch < 1:
        raise UsageError("--batch must be at least 1")
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


def _early_converter(recipe: Recipe) -> contextlib.AbstractContextManager[Any]:
    """The converter's child process, started now so that its TensorFlow import overlaps loading and
    exporting the model; a fine-tuning recipe starts it when it needs it, not minutes before."""
    if recipe.finetunes:
        return contextlib.nullcontext(None)
    from edgeship.converters.isolated import converter

    return converter()


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
            raise DatasetError(f"{recipe.calibration}: fewer calibration samples than one batch of --batch {batch}")
        representative = _representative(picked, names, batch)
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
            f"(--int8-strict refuses it)")

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
    from edgeship.converters import optimize, qat

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
    tuned = optimize.finetune(tfk_model, recipe, optimize.TrainData(inputs, y), strategy, say)
    # Layers QAT left float (and every layer of a pruned/clustered int8 model) need ranges: the training data gives them.
    picked = datasets.pick_calibration(x, 200, False, train)
    return tuned, _representative(picked, names, batch)


def _scored_output(source: SourceModel, output: str | None, eval_data: Path | None) -> str:
    """The source output the --eval labels score: --output when given (it must exist), else the first."""
    from edgeship.device_agent.evaluate import EvalInputError, pick_output

    if output is not None and eval_data is None:
        raise UsageError("--output picks the output that --eval's labels score; give --eval DATA.npz too")
    try:
        return pick_output(source.outputs, output)
    except EvalInputError as exc:
        raise UsageError(f"--output: {exc}") from exc


def _host_accuracy(source: SourceModel, flatbuffer: bytes, features: dict[str, np.ndarray], y: Any,
                   batch: int, data_path: Path, output: str, tuned: Any, recipe: Recipe) -> Accuracy:
    """Top-1 of the TFLite model, the source float model and (after fine-tuning) the tuned float model.

    All three score the same output, found by name: the converter may reorder outputs.
    """
    from edgeship.device_agent.evaluate import EvalInputError, evaluate, top1
    from edgeship.device_agent.runtime import load_runtime

    runtime = load_runtime()
    interpreter = runtime.interpreter(flatbuffer)
    try:
        result = evaluate(interpreter, features, y, output=output)
    except EvalInputError as exc:
        raise DatasetError(f"{data_path}: {exc}") from exc
    float_acc = top1(source.predict(features, batch)[output], y)
    tuned_acc = top1(source.predict(features, batch, tuned)[output], y) if tuned is not None else None
    warnings = []
    if tuned_acc is not None and float_acc - tuned_acc > FINETUNE_LOSS_WARN:
        warnings.append(_finetune_warning(recipe, float_acc, tuned_acc, result.samples, data_path))
    return Accuracy(data=str(data_path), samples=result.samples, output=output, model=float(result.accuracy or 0.0),
                    float_model=float_acc, finetuned_float_model=tuned_acc, runtime=f"{runtime.name} {runtime.version}",
                    warnings=warnings)


def _finetune_warning(recipe: Recipe, float_acc: float, tuned_acc: float, samples: int, data_path: Path) -> str:
    """One sentence: which fine-tuning stages lost how much accuracy, and what to try."""
    c = recipe.compression
    stages = [name for name, on in (("pruning", c is not None and c.sparsity is not None),
                                    ("clustering", c is not None and c.clusters is not None),
                                    ("QAT", recipe.qat is not None)) if on]
    hints = []
    if c is not None and c.sparsity is not None:
        hints.append("a lower --sparsity" + (" or --prune-block 1" if c.block != 1 else ""))
    if c is not None and c.clusters is not None:
        hints.append("more --clusters")
    hints.append("more --epochs")
    return (f"the fine-tuned float model ({', '.join(stages)}) scores {tuned_acc * 100:.2f}% on {samples} samples of "
            f"{data_path}, {(float_acc - tuned_acc) * 100:.2f} points below the source's {float_acc * 100:.2f}%: "
            f"fine-tuning lost it before conversion; try {', '.join(hints)}")
