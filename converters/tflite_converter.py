"""TFLiteConverter set-up shared by `convert` and the quantization debugger: one place that sets its flags.

A recipe becomes converter flags in `configure` only; calibration samples become a
representative dataset in `representative_data`; the converter's C++ chatter on fd 1 goes to
stderr (`stdout_to_stderr`); and its exceptions become one ConversionError line (`translated`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.converters._tf import first_line, tensorflow
from edgeship.converters.recipe import Recipe
from edgeship.sdk.errors import ConversionError, EdgeshipError

Representative = Callable[[], Iterator[dict[str, np.ndarray]]]


def representative_data(features: dict[str, np.ndarray], names: list[str], batch: int) -> Representative:
    """A representative_dataset yielding dicts of static-batch-sized chunks keyed by signature input name."""
    n = len(next(iter(features.values())))

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, n - batch + 1, batch):
            yield {name: features[name][start : start + batch] for name in names}

    return gen


def configure(converter: Any, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
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


def converter_for(saved_model: Path, key: str, recipe: Recipe, representative: Callable[[], Iterator[Any]] | None,
                  strict: bool = True) -> Any:
    """A TFLiteConverter over signature `key` of a static SavedModel, configured for `recipe`."""
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[key])
    configure(converter, recipe, representative, strict)
    return converter


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
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


@contextlib.contextmanager
def translated(failed: str) -> Iterator[None]:
    """The converter's (or its debugger's) exceptions as one ConversionError line, "<failed>: <reason>".

    The reason is the MLIR 'error:' line when there is one, without its location, else the
    exception's first line. edgeship's own errors pass through: they already name the problem.
    """
    try:
        yield
    except EdgeshipError:  # ours already names the problem (an unknown keep_float layer, say)
        raise
    except Exception as exc:  # ConverterError, ValueError, RuntimeError: all are "the converter refused"
        msg = first_line(exc)
        for line in str(exc).splitlines():  # the MLIR error worth showing is usually an 'error:' line
            if "error:" in line:
                msg = _without_location(line.split("error:", 1)[1].strip())
                break
        raise ConversionError(f"{failed}: {msg}") from exc


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
