"""Quantization-aware training with tensorflow-model-optimization, for Keras 3 models too.

tfmot works only on tf_keras (Keras 2) Sequential/Functional models. Users bring Keras 3
.keras files, so a Keras 3 model is rebuilt layer by layer in tf_keras (config keys
tf_keras does not know are dropped, weights copied, outputs compared) before
``quantize_model`` wraps it. Layers that stop the rebuild or that QAT cannot wrap are
named in one error; QAT can leave the latter in float instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.converters._tf import first_line
from edgeship.converters.finetune import TrainData, fit, loss_for
from edgeship.converters.recipe import QATOptions
from edgeship.sdk.errors import UnsupportedLayerError

log = logging.getLogger(__name__)
REBUILD_TOLERANCE = 1e-4  # max |keras3 - tf_keras| on sample data before we trust the rebuild
_NESTED_MODULES = {"_regularizer": "regularizers", "_constraint": "constraints"}


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Keras 3 layer config in the form tf_keras accepts."""
    import tf_keras

    cfg = dict(config)
    cfg.pop("quantization_config", None)
    if "batch_shape" in cfg:
        cfg["batch_input_shape"] = cfg.pop("batch_shape")
    if isinstance(cfg.get("dtype"), dict):  # Keras 3 DTypePolicy
        cfg["dtype"] = cfg["dtype"].get("config", {}).get("name", "float32")
    for key, value in list(cfg.items()):
        if not (isinstance(value, dict) and "class_name" in value):
            continue
        if key.endswith("_initializer"):
            cfg.pop(key)  # weights are copied, so initial values never matter
            continue
        module_name = next((m for suffix, m in _NESTED_MODULES.items() if key.endswith(suffix)), None)
        if module_name is None:
            continue
        cls = getattr(getattr(tf_keras, module_name), value["class_name"], None)
        if cls is None:
            cfg.pop(key)
            log.warning("dropping %s %s: tf_keras has no such class", key, value["class_name"])
            continue
        import inspect

        allowed = set(inspect.signature(cls.__init__).parameters)
        cfg[key] = cls(**{k: v for k, v in value.get("config", {}).items() if k in allowed})
    return cfg


def _from_config(cls: Any, config: dict[str, Any]) -> Any:
    """Instantiate, dropping keyword arguments tf_keras rejects one by one (bounded)."""
    cfg = dict(config)
    for _ in range(len(cfg) + 1):
        try:
            return cls(**cfg)
        except TypeError as exc:
            bad = next((k for k in cfg if f"'{k}'" in str(exc) or f": {k}" in str(exc)), None)
            if bad is None:
                raise
            log.debug("dropping config key %s of %s", bad, cls.__name__)
            cfg.pop(bad)
    return cls(**cfg)


def to_tf_keras(model: Any, flavour: str | None, sample: np.ndarray | list[np.ndarray]) -> Any:
    """A tf_keras copy of a Keras 3 Sequential/Functional model (or the model itself if already tf_keras)."""
    if flavour == "tf_keras":
        return model
    import keras
    import tf_keras

    functional = getattr(model, "_functional", None) or model  # Keras 3 Sequential wraps a Functional
    if not isinstance(model, keras.Model) or not hasattr(functional, "_run_through_graph"):
        raise UnsupportedLayerError(
            f"QAT needs a Sequential or Functional model; {type(model).__name__} is a subclassed model", [])
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    missing = [f"{layer.name} ({type(layer).__name__})" for layer in layers
               if getattr(tf_keras.layers, type(layer).__name__, None) is None]
    if missing:
        raise UnsupportedLayerError(
            "these layers have no tf_keras equivalent, so the model cannot be rebuilt for QAT: " + ", ".join(missing),
            missing)
    built: dict[int, Any] = {}
    failed = []
    for layer in layers:
        cls = getattr(tf_keras.layers, type(layer).__name__)
        try:
            built[id(layer)] = _from_config(cls, _clean_config(layer.get_config()))
        except Exception as exc:  # a config tf_keras cannot express
            failed.append(f"{layer.name} ({type(layer).__name__}: {first_line(exc, 120)})")
    if failed:
        raise UnsupportedLayerError("these layers cannot be rebuilt in tf_keras for QAT: " + ", ".join(failed), failed)

    new_inputs = [tf_keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name.split(":")[0])
                  for t in model.inputs]
    feed: Any = new_inputs[0] if len(new_inputs) == 1 else new_inputs

    def call(op: Any, *args: Any, **kwargs: Any) -> Any:
        return built[id(op)](*args, **kwargs)

    outputs = functional._run_through_graph(feed, call_fn=call)
    rebuilt = tf_keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0], outputs, name=model.name)
    for layer in layers:
        built[id(layer)].set_weights(layer.get_weights())

    listed = isinstance(getattr(model, "input", None), (list, tuple)) and not isinstance(sample, list)  # one input, in a list
    ref = np.asarray(_first(model([sample] if listed else sample, training=False)))
    got = np.asarray(_first(rebuilt(sample, training=False)))
    diff = float(np.max(np.abs(ref - got)))
    if not diff <= REBUILD_TOLERANCE:
        raise UnsupportedLayerError(
            f"the tf_keras rebuild of the model differs from the original by {diff:.3g} (tolerance "
            f"{REBUILD_TOLERANCE}); a layer behaves differently in tf_keras", [])
    log.info("rebuilt %s in tf_keras (max output difference %.2g)", model.name, diff)
    return rebuilt


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (list, tuple)) else out


def _scheme_or_default(scheme: Any) -> Any:
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_scheme

    return scheme if scheme is not None else default_8bit_quantize_scheme.Default8BitQuantizeScheme()


def unsupported_layers(model: Any, scheme: Any = None, keep_float: Collection[str] = ()) -> list[str]:
    """Layers tfmot would refuse to wrap, as 'name (Class)', asked the way quantize_apply asks.

    quantize_apply first runs the scheme's layout transform, which gives a BatchNormalization
    after a Conv2D/DepthwiseConv2D/Dense (and a ReLU after them) its QuantizeConfig (the
    converter folds the pair), and only then asks the scheme's registry about each layer
    still without one. This runs that same transform on the layers that would be annotated
    (all but `keep_float`), so a layer is named here exactly when quantize_apply would fail on it.
    """
    import tf_keras

    scheme = _scheme_or_default(scheme)
    annotated = {layer.name for layer in model.layers
                 if not isinstance(layer, tf_keras.layers.InputLayer) and layer.name not in keep_float}
    quantize_map: dict[str, dict[str, Any]] = {name: {"quantize_config": None} for name in annotated}
    for input_layer in model._input_layers:  # quantize_apply matches input layers that feed annotated ones too
        if any(node.outbound_layer.name in annotated for node in input_layer._outbound_nodes):
            quantize_map[input_layer.name] = {}
    legacy = getattr(model, "use_legacy_config", None)
    try:
        transformed, quantize_map = scheme.get_layout_transformer().apply(model, quantize_map)
    finally:  # the transformer sets this on the model it reads
        if legacy is None:
            vars(model).pop("use_legacy_config", None)
        else:
            model.use_legacy_config = legacy
    registry = scheme.get_quantize_registry()
    return [f"{layer.name} ({type(layer).__name__})" for layer in transformed.layers
            if layer.name in annotated and not quantize_map.get(layer.name, {}).get("quantize_config")
            and not registry.supports(layer)]


def quantize_and_finetune(model: Any, options: QATOptions, data: TrainData, strategy: Any,
                          progress: Callable[[str], None], scheme: Any = None) -> Any:
    """Wrap a tf_keras model with fake-quant (tfmot quantize_model) and fine-tune it under `strategy`.

    `scheme` is a tfmot QuantizeScheme that preserves what pruning or clustering made; None is
    tfmot's default 8-bit scheme.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras

    leave = set(options.leave_float)
    unknown = leave - {layer.name for layer in model.layers}
    if unknown:
        raise UnsupportedLayerError(f"names no such layer: {', '.join(sorted(unknown))}", sorted(unknown),
                                    option="leave_float")
    keep_float = set(leave)
    for _ in model.layers:  # leaving a layer float can unpair a Conv+BN, so ask again until nothing changes
        blocked = unsupported_layers(model, scheme, keep_float)
        if not blocked:
            break
        if not options.leave_unsupported_float:
            raise UnsupportedLayerError(
                "QAT cannot wrap these layers: " + ", ".join(blocked) + "; set it to train them in float (the "
                "converter then calibrates them)", blocked, option="leave_unsupported_float")
        keep_float |= {u.split(" ")[0] for u in blocked}
    quantize = tfmot.quantization.keras
    with strategy.scope():
        if keep_float:
            def clone(layer: Any) -> Any:
                if layer.name in keep_float or isinstance(layer, tf_keras.layers.InputLayer):
                    return layer.__class__.from_config(layer.get_config())
                return quantize.quantize_annotate_layer(layer.__class__.from_config(layer.get_config()))

            annotated = tf_keras.models.clone_model(model, clone_function=clone)
            annotated.set_weights(model.get_weights())
        else:
            annotated = quantize.quantize_annotate_model(model)
        try:
            with quantize.quantize_scope():
                qmodel = quantize.quantize_apply(annotated, scheme) if scheme is not None else quantize.quantize_apply(annotated)
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedLayerError(f"tfmot cannot quantize this model: {first_line(exc)}", []) from exc
        calibrate_ranges(qmodel, data.x, options.batch_size)
    fit(qmodel, data, stage="QAT", epochs=options.epochs, learning_rate=options.learning_rate,
        batch_size=options.batch_size, validation_split=options.validation_split, strategy=strategy, say=progress,
        loss=loss_for(model, data.y, options.loss), early_stopping=True)
    return qmodel


def calibrate_ranges(qmodel: Any, inputs: Any, batch_size: int, batches: int = 32, decay: float = 0.7) -> None:
    """Move tfmot's activation ranges from their initial [-6, 6] to the data's before fine-tuning.

    tfmot tracks activation ranges with an EMA of decay 0.999, so a short fine-tune (a few
    hundred steps) leaves them near the initial +-6 and costs accuracy. A few training-mode
    passes with a fast EMA put them where a long training run would; weights are untouched
    (no optimizer step runs).
    """
    from unittest import mock

    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize

    def fast(*args: Any, **kwargs: Any) -> Any:
        kwargs["ema_decay"] = decay  # tfmot passes 0.999 explicitly
        return original(*args, **kwargs)

    arrays = inputs if isinstance(inputs, list) else [inputs]
    n = len(arrays[0])
    order = np.random.default_rng(0).permutation(n)
    with mock.patch.object(quant_ops, "MovingAvgQuantize", fast):
        for b in range(batches):
            idx = order[(b * batch_size) % n:][:batch_size]
            feed = [a[idx] for a in arrays]
            qmodel(feed if len(feed) > 1 else feed[0], training=True)


def load_tf_keras_for_qat(path: Path) -> Any:
    """A tf_keras model from a tf_keras SavedModel (one with keras_metadata.pb), or None when it is not one."""
    import tf_keras

    if path.is_dir() and not (path / "keras_metadata.pb").exists():
        return None
    try:
        model = tf_keras.models.load_model(path, compile=False)
    except Exception:  # not a tf_keras artefact; the caller explains what QAT needs
        return None
    return model if isinstance(model, tf_keras.Model) else None
