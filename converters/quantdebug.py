"""The quantization debugger: how much each layer loses in int8, and int8 models that keep the worst in float.

TFLite's QuantizationDebugger builds a model in which every quantized op is followed by
a NumericVerify op: it runs the op's float version on the same (dequantized) input and
records the difference. Per layer, edgeship reports RMSE/scale as the TFLite guide does,
sqrt(mean squared error) / the output's quantization scale: pure rounding of a well-spread
tensor gives 1/sqrt(12) ~ 0.29, and much more means the layer quantizes badly (an
outlier weight, a range the int8 step cannot resolve).

The same debugger gives the fix: its denylist (`denylisted_nodes`) leaves chosen ops in
float and quantizes the rest, which is what ``convert --recipe int8 --keep-float`` does.
Nodes are the ops' output tensor names; a Keras layer name selects the nodes that have it
as a path component (Keras 3 graphs add a ``_N`` suffix to it).
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.converters import data as datasets
from edgeship.converters._tf import tensorflow
from edgeship.converters.tflite_converter import (
    Representative,
    converter_for,
    representative_data,
    stdout_to_stderr,
    translated,
)
from edgeship.converters.tflite_model import TFLiteModel
from edgeship.sdk.errors import ConversionError, DatasetError, UsageError
from edgeship.sdk.hosteval import evaluate_on_host, host_runtime
from edgeship.sdk.results import RunResult

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

IDEAL_RMSE_OVER_SCALE = 1 / math.sqrt(12)  # uniform rounding error of one quantization step
RESULT_KIND = "debug-quant"
_NUMERIC_VERIFY = "NumericVerify"
_DEBUGGER_FAILED = "the quantization debugger failed"
_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class SelectiveResult:
    """An int8 model with some layers left in float, and the size of the same model fully int8."""

    flatbuffer: bytes
    layers: list[str]  # node names (op output tensors) left in float
    int8_size: int


@dataclass(frozen=True)
class LayerError:
    """The int8 error of one quantized op's output, as the debugger measured it over the debug data."""

    node: str  # the op's output tensor name: what the denylist (and --keep-float) takes
    layer: str | None  # the short name that selects this node in --keep-float (its Keras layer), if any
    op: str
    tensor_index: int
    scale: float
    zero_point: int
    elements: int
    rmse_over_scale: float  # sqrt(mean squared error) / scale: ~0.29 is pure rounding
    rmse: float
    mean_abs_error: float
    max_abs_error: float  # the largest |error| of a sample, averaged over samples (the debugger's aggregation)
    mean_error: float  # bias: mean of (int8 - float)

    def to_json(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Trial:
    """The int8 model with the `kept` worst layers in float: what --keep-float auto:N gives."""

    kept: int
    layers: list[str]
    accuracy: float | None
    size: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DebugReport:
    """What `edgeship debug-quant` found: per-layer int8 error (worst first) and what it costs in accuracy."""

    model: str
    model_sha256: str
    signature: str
    batch: int
    io: str
    calibration: str
    calib_samples: int
    eval_data: str | None
    eval_data_sha256: str | None
    eval_samples: int
    layers: list[LayerError]  # worst first
    float_accuracy: float | None  # the source model in TensorFlow
    int8_accuracy: float | None  # the fully int8 model on the host interpreter
    output_error: dict[str, float | None]  # fully int8 vs float on the eval data: rmse, max_abs_error, argmax_agreement
    int8_size: int
    runtime: dict[str, str]
    tensorflow: str
    trials: list[Trial] = field(default_factory=list)
    integer: dict[str, Any] = field(default_factory=dict)  # TFLiteModel.integer_facts() of the fully int8 model

    @property
    def worst(self) -> LayerError | None:
        return self.layers[0] if self.layers else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [layer.to_json() for layer in self.layers]
        out["trials"] = [t.to_json() for t in self.trials]
        out["output_error"] = {k: _finite(v) for k, v in self.output_error.items()}
        out["ideal_rmse_over_scale"] = IDEAL_RMSE_OVER_SCALE
        return out

    def result_document(self) -> dict[str, Any]:
        """A result document (docs/results.md, kind debug-quant) that `edgeship report` reads."""
        return RunResult(
            kind=RESULT_KIND, board="host", model=self.model, model_sha256=self.model_sha256, model_size=self.int8_size,
            recipe="int8", io=self.io, data_file_sha256=self.eval_data_sha256,
            options={"signature": self.signature, "batch": self.batch, "calibration": self.calibration,
                     "calib_samples": self.calib_samples, "eval_data": self.eval_data},
            result={
                "status": "ok",
                "runtime": self.runtime,
                "threads": None,
                "samples": self.eval_samples,
                "accuracy": self.int8_accuracy,
                "float_accuracy": self.float_accuracy,
                "agreement": {k: _finite(v) for k, v in self.output_error.items()},
                "ideal_rmse_over_scale": IDEAL_RMSE_OVER_SCALE,
                "layers": [layer.to_json() for layer in self.layers],
                "trials": [t.to_json() for t in self.trials],
                "integer": self.integer,
                "tensorflow": self.tensorflow,
            },
        ).to_json()


def _finite(value: Any) -> Any:
    """NaN and infinity as None, so the JSON is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- names: nodes, Keras layers ------------------------------------------------------------

def _components(node: str) -> set[str]:
    """The path components of a node name; fused names ('a/MatMul;a/Relu') contribute every part."""
    return {c for part in node.split(";") for c in part.split("/") if c}


def resolve(names: Sequence[str], nodes: Sequence[str]) -> list[str]:
    """The nodes that `names` select: exact node names, or Keras layer names found as a path component.

    A layer name matches a component equal to it or, as Keras 3 scopes are named, to it
    with a `_N` suffix; when both kinds of match exist and differ, the name is ambiguous.
    """
    chosen: list[str] = []
    for name in names:
        for node in _select(name, nodes):
            if node not in chosen:
                chosen.append(node)
    return chosen


def _select(name: str, nodes: Sequence[str]) -> list[str]:
    if name in nodes:
        return [name]
    suffixed = re.compile(re.escape(name) + r"_\d+")
    exact = [n for n in nodes if name in _components(n)]
    scoped = [n for n in nodes if n not in exact and any(suffixed.fullmatch(c) for c in _components(n))]
    if exact and scoped:
        raise UsageError(f"{name!r} is ambiguous: it names node(s) {_listing(exact)} and, as a Keras 3 "
                         f"scope ({name}_N), {_listing(scoped)}; give the node name instead", option="keep_float")
    found = exact or scoped
    if not found:
        aliases = {n: alias(n, nodes) for n in nodes}
        valid = sorted({a for a in aliases.values() if a})
        unnamed = [n for n, a in aliases.items() if not a]
        raise UsageError(f"no layer or node named {name!r}; the quantized layers are "
                         f"{', '.join(valid) or 'unnamed'}" + (f", and nodes {_listing(unnamed)}" if unnamed else "")
                         + " (`edgeship debug-quant` lists every node name)", option="keep_float")
    return found


def _listing(nodes: list[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def alias(node: str, nodes: Sequence[str]) -> str | None:
    """The short name (the node's layer scope, without Keras 3's `_N`) that selects this node, if any."""
    scopes = [parts[-2] for part in node.split(";") if len(parts := part.split("/")) >= 2]
    for scope in dict.fromkeys(scopes):
        for candidate in (_SUFFIX.sub("", scope), scope):
            try:
                if node in _select(candidate, nodes):
                    return candidate
            except UsageError:
                continue
    return None


# --- the debugger --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    tensor_index: int
    scale: float
    zero_point: int
    verify_tensor: str  # the NumericVerify output: the debugger's key for this node's statistics


class _Debugger:
    """A QuantizationDebugger over a converter configured for int8, with the nodes it verifies."""

    def __init__(self, converter: Any, representative: Representative) -> None:
        tf = tensorflow()
        self._converter = converter
        self.input_type = converter.inference_input_type or tf.float32
        self.output_type = converter.inference_output_type or tf.float32
        order: list[str] = []  # the model's input order, known once the debugger has calibrated

        def dataset() -> Iterator[list[np.ndarray]]:
            for sample in representative():
                names = order if order and all(n in sample for n in order) else list(sample)
                yield [np.asarray(sample[n]) for n in names]

        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_debug_metrics={"mean_abs_error": lambda diffs: float(np.mean(np.abs(diffs)))},
            fully_quantize=self.input_type != tf.float32)
        # Calibrates with converter.representative_dataset, then builds the NumericVerify model.
        self.debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset,
                                                                  debug_options=options)
        calibrated = TFLiteModel.from_bytes(bytes(self.debugger.calibrated_model), "calibrated model")
        order.extend(name for name, _ in calibrated.inputs)
        self.nodes = _verified_nodes(TFLiteModel.from_bytes(bytes(self.debugger.quant_model), "debug model"), calibrated)
        if not self.nodes:
            raise ConversionError("the quantization debugger found no quantized layers in this model")

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def layer_errors(self) -> list[LayerError]:
        """Run the debug model over the debug data; per-node error, worst RMSE/scale first."""
        self.debugger.run()
        stats = self.debugger.layer_statistics or {}
        names = self.node_names
        out = []
        for node in self.nodes:
            s = stats.get(node.verify_tensor)
            if s is None:
                continue
            rmse = math.sqrt(float(s["mean_squared_error"]))
            out.append(LayerError(
                node=node.name, layer=alias(node.name, names), op=node.op, tensor_index=node.tensor_index,
                scale=node.scale, zero_point=node.zero_point, elements=int(s["num_elements"]),
                rmse_over_scale=rmse / node.scale if node.scale > 0 else math.nan, rmse=rmse,
                mean_abs_error=float(s["mean_abs_error"]), max_abs_error=float(s["max_abs_error"]),
                mean_error=float(s["mean_error"])))
        return sorted(out, key=lambda e: (math.isnan(e.rmse_over_scale), -np.nan_to_num(e.rmse_over_scale)))

    def quantize(self, denylist: Sequence[str]) -> bytes:
        """The calibrated model quantized with `denylist` left in float, with the converter's I/O types.

        This is the debugger's own get_nondebug_quantized_model() call (mlir_quantize of its
        calibrated model) plus the input/output types: the debugger offers only float I/O or,
        with fully_quantize, int8 I/O, so --io uint8 would not hold. TFLiteConverter itself
        quantizes with this same call.
        """
        from tensorflow.lite.python.convert import mlir_quantize

        conv = self._converter
        return bytes(mlir_quantize(
            self.debugger.calibrated_model,
            disable_per_channel=bool(getattr(conv, "_experimental_disable_per_channel", False)),
            input_data_type=self.input_type,
            output_data_type=self.output_type,
            denylisted_nodes=list(denylist) or None,
            disable_per_channel_for_dense_layers=bool(
                getattr(conv, "_experimental_disable_per_channel_quantization_for_dense_layers", False))))


def _verified_nodes(model: TFLiteModel, calibrated: TFLiteModel) -> list[_Node]:
    """Each quantized op output a NumericVerify op checks, in graph order, named as in the calibrated model.

    NumericVerify takes (int8 output, float output). The debug model renames one or both of
    them with a trailing digit, so the node's name, the one the denylist knows, is that of
    the calibrated model's op output of the same op and shape whose name they extend.
    """
    sg, cal = model.main, calibrated.main
    producer = {t: model.opcodes[op.opcode_index].name for op in sg.operators for t in op.outputs}
    outputs = [(calibrated.opcodes[op.opcode_index].name, cal.tensors[t]) for op in cal.operators for t in op.outputs
               if t >= 0]
    used: set[int] = set()
    nodes = []
    for op in sg.operators:
        if model.opcodes[op.opcode_index].name != _NUMERIC_VERIFY or len(op.inputs) < 2 or not op.outputs:
            continue
        quantized, reference = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
        kind = producer.get(quantized.index, "?")
        candidates = [t for name, t in outputs if name == kind and t.shape == quantized.shape and t.index not in used]
        match = _original([reference.name, quantized.name], candidates)
        if match is not None:
            used.add(match.index)
        q = quantized.quantization
        scale, zero_point = (float(q.scale[0]), int(q.zero_point[0])) if q and q.scale else (math.nan, 0)
        nodes.append(_Node(match.name if match is not None else reference.name, kind, quantized.index, scale,
                           zero_point, sg.tensors[op.outputs[0]].name))
    return nodes


def _original(names: list[str], candidates: list[Any]) -> Any:
    """The candidate tensor named one of `names`, else the one whose name they extend by digits (longest first)."""
    for name in names:
        for t in candidates:
            if t.name == name:
                return t
    extended = [t for t in candidates
                if any(n.startswith(t.name) and n[len(t.name):].isdigit() for n in names)]
    return max(extended, key=lambda t: len(t.name), default=None)


def quantize_selectively(converter: Any, representative: Representative, keep: Sequence[str],
                         auto: int | None) -> SelectiveResult:
    """Quantize to int8 with the layers `keep` names, and the `auto` worst ones, left in float.

    `converter` is a TFLiteConverter configured for int8 (optimizations, representative
    dataset, inference types); `representative` yields dicts keyed by signature input name,
    and is also the data the worst layers are ranked on.
    """
    with translated(_DEBUGGER_FAILED):
        dbg = _Debugger(converter, representative)
        chosen = resolve(keep, dbg.node_names)
        if auto:
            ranked = [e.node for e in dbg.layer_errors() if e.node not in chosen]
            if auto > len(ranked):
                raise UsageError(f"auto:{auto}: the model has only {len(dbg.nodes)} quantized layers", option="keep_float")
            chosen += ranked[:auto]
        if len(chosen) >= len(dbg.nodes):
            raise UsageError(f"would leave all {len(dbg.nodes)} quantized layers in float; "
                             f"use recipe float32 instead", option="keep_float")
        log.info("keeping in float: %s", ", ".join(chosen))
        flatbuffer = dbg.quantize(chosen)
        int8 = dbg.quantize([])
    float_tensors = {t.name for t in TFLiteModel.from_bytes(flatbuffer, "converted model").main.tensors if t.is_float}
    # A kept op that feeds a model output hands its name to the QUANTIZE after it and gets a digit appended.
    missed = [n for n in chosen if not any(t == n or (t.startswith(n) and t[len(n):].isdigit()) for t in float_tensors)]
    if missed:
        raise ConversionError(f"the quantizer did not leave {_listing(missed)} in float", option="keep_float")
    return SelectiveResult(flatbuffer=flatbuffer, layers=chosen, int8_size=len(int8))


def debug_quantization(model_path: Path, calib: Path, eval_data: Path | None, signature: str = "serving_default",
                       batch: int = 1, samples: int | None = None, *, io: str = "int8",
                       image_range: tuple[float, float] = (0.0, 1.0), trials: int = 3,
                       progress: Progress | None = None) -> DebugReport:
    """Per-layer int8 error of a model (worst first), and accuracy float vs int8 on `eval_data`.

    Layers are ranked on the calibration samples, exactly as `--keep-float auto:N` ranks
    them; `trials` more int8 models keep the 1..trials worst layers in float, to show what
    each step recovers.
    """
    from importlib import metadata

    from edgeship.converters.recipe import Recipe
    from edgeship.converters.source import load_source, path_sha256
    from edgeship.device_agent.evaluate import compare, top1
    from edgeship.device_agent.runtime import quiet_native_stderr

    say = progress or (lambda _msg: None)
    if batch < 1:
        raise UsageError(f"must be at least 1 (got {batch})", option="batch")
    if trials < 0:
        raise UsageError(f"must be 0 or more (got {trials})", option="trials")
    recipe = Recipe.int8(Path(calib), io=io, samples=samples, image_range=image_range)
    datasets.require_data(Path(calib), "calib", folder=True)  # before TensorFlow: a mistyped path costs nothing
    if eval_data is not None:
        datasets.require_data(Path(eval_data), "eval_data")
    say(f"loading {model_path}")
    source = load_source(Path(model_path), signature)
    source.static_specs(batch)
    names = [spec.name for spec in source.inputs]

    eval_features = labels = None
    if eval_data is not None:
        eval_features = datasets.features_for(Path(eval_data), source.inputs, "eval")
        labels = datasets.labels(Path(eval_data))
        if len(labels) != len(next(iter(eval_features.values()))):
            raise DatasetError(f"{eval_data}: {len(labels)} labels for {len(next(iter(eval_features.values())))} samples")

    features = datasets.features_for(Path(calib), source.inputs, "calibration", recipe.image_range)
    picked = datasets.pick_calibration(features, recipe.calib_samples, recipe.calib_samples_explicit, Path(calib))
    count = len(next(iter(picked.values())))
    if count < batch:
        raise DatasetError(f"{calib}: fewer calibration samples than one batch ({batch})")
    representative = representative_data(picked, names, batch)

    with tempfile.TemporaryDirectory(prefix="edgeship-static-") as tmp:
        say("exporting a static-shape graph")
        saved, key = source.export_static(Path(tmp) / "static", batch, None)
        converter = converter_for(saved, key, recipe, representative)
        say(f"calibrating on {count} samples from {calib} and running the debugger")
        with translated(_DEBUGGER_FAILED), quiet_native_stderr(), stdout_to_stderr():
            dbg = _Debugger(converter, representative)
            layers = dbg.layer_errors()
            int8 = dbg.quantize([])
            trial_models = [(k, [e.node for e in layers[:k]]) for k in range(1, min(trials, len(layers) - 1) + 1)]
            trial_models_bytes = [(k, kept, dbg.quantize(kept)) for k, kept in trial_models]

    runtime = host_runtime()
    int8_acc = float_acc = None
    output_error: dict[str, float | None] = {"rmse": None, "max_abs_error": None, "argmax_agreement": None}
    results: list[Trial] = []
    if eval_data is not None and eval_features is not None and labels is not None:
        say(f"evaluating float and int8 on {eval_data}")
        first = source.outputs[0]

        def accuracy_of(flatbuffer: bytes, name: str) -> tuple[np.ndarray, float]:
            result = evaluate_on_host(flatbuffer, eval_features, labels, output=first, model_name=name,
                                      data_name=str(eval_data)).result
            return result.outputs[first], float(result.accuracy or 0.0)

        reference = source.predict(eval_features, batch)[first]
        int8_out, int8_acc = accuracy_of(int8, "the fully int8 model")
        float_acc = top1(reference, labels)
        agreement = compare(int8_out, reference)  # the board-vs-host agreement, here int8 vs float
        output_error = {k: agreement.get(k) for k in output_error}
        for k, kept, flat in trial_models_bytes:
            say(f"evaluating with the {k} worst layer(s) in float")
            results.append(Trial(k, kept, accuracy_of(flat, f"the int8 model with {k} layer(s) in float")[1], len(flat)))
    else:
        results = [Trial(k, kept, None, len(flat)) for k, kept, flat in trial_models_bytes]

    return DebugReport(
        model=str(source.path), model_sha256=source.sha256, signature=source.signature, batch=batch, io=io,
        calibration=str(calib), calib_samples=count, eval_data=str(eval_data) if eval_data is not None else None,
        eval_data_sha256=path_sha256(Path(eval_data)) if eval_data is not None else None,
        eval_samples=len(labels) if labels is not None else 0, layers=layers, float_accuracy=float_acc,
        int8_accuracy=int8_acc, output_error=output_error, int8_size=len(int8),
        runtime={"name": runtime.name, "version": runtime.version}, tensorflow=metadata.version("tensorflow"),
        trials=results, integer=TFLiteModel.from_bytes(int8, source="debug-quant int8 model").integer_facts())
