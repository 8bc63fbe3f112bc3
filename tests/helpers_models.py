"""Tiny real .tflite models for the reader and op-registration tests.

Each builder converts a small tf.function with tf.lite.TFLiteConverter.from_concrete_functions
and is cached, so the test modules that share them convert each model once per session.
Weights and calibration data come from seeded numpy generators, so the models are the same
on every run.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SHAPE = (1, 8, 8, 1)  # the one fixed input shape of the conv models
CALIBRATION_SAMPLES = 50


def _convert(fn: Any, specs: list[tf.TensorSpec], configure: Any = None) -> bytes:
    concrete = tf.function(fn).get_concrete_function(*specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if configure is not None:
        configure(converter)
    return bytes(converter.convert())


def _conv_net() -> Any:
    """Conv2D+ReLU -> MaxPool -> Reshape -> Dense+ReLU -> Dense -> Softmax, fixed seeded weights."""
    rng = np.random.default_rng(1234)
    k = tf.constant(rng.normal(0, 0.5, size=(3, 3, 1, 4)).astype(np.float32))
    kb = tf.constant(rng.normal(0, 0.1, size=(4,)).astype(np.float32))
    w1 = tf.constant(rng.normal(0, 0.3, size=(36, 6)).astype(np.float32))
    b1 = tf.constant(rng.normal(0, 0.1, size=(6,)).astype(np.float32))
    w2 = tf.constant(rng.normal(0, 0.3, size=(6, 3)).astype(np.float32))
    b2 = tf.constant(rng.normal(0, 0.1, size=(3,)).astype(np.float32))

    def net(x: tf.Tensor) -> tf.Tensor:
        y = tf.nn.relu(tf.nn.conv2d(x, k, strides=1, padding="VALID") + kb)  # 1x6x6x4
        y = tf.nn.max_pool2d(y, ksize=2, strides=2, padding="VALID")  # 1x3x3x4
        y = tf.reshape(y, (1, 36))
        y = tf.nn.relu(tf.matmul(y, w1) + b1)
        return tf.nn.softmax(tf.matmul(y, w2) + b2)

    return net


@cache
def float_model() -> bytes:
    """A float32 conv net (CONV_2D, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED x2, SOFTMAX)."""
    return _convert(_conv_net(), [tf.TensorSpec(IMAGE_SHAPE, tf.float32)])


@cache
def int8_model() -> bytes:
    """The same net, full-integer: TFLITE_BUILTINS_INT8, int8 input and output, 50 calibration samples."""

    def representative() -> Any:
        rng = np.random.default_rng(99)
        for _ in range(CALIBRATION_SAMPLES):
            yield [rng.normal(0, 1, size=IMAGE_SHAPE).astype(np.float32)]

    def configure(c: tf.lite.TFLiteConverter) -> None:
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = tf.int8
        c.inference_output_type = tf.int8

    return _convert(_conv_net(), [tf.TensorSpec(IMAGE_SHAPE, tf.float32)], configure)


@cache
def dense_relu_model() -> bytes:
    """A float Dense+ReLU model: one FULLY_CONNECTED node with a fused ReLU."""
    rng = np.random.default_rng(7)
    w = tf.constant(rng.normal(size=(8, 4)).astype(np.float32))
    b = tf.constant(rng.normal(size=(4,)).astype(np.float32))
    return _convert(lambda x: tf.nn.relu(tf.matmul(x, w) + b), [tf.TensorSpec((1, 8), tf.float32)])


@cache
def cumsum_model() -> bytes:
    """CUMSUM has builtin code 128: only builtin_code holds it (deprecated_builtin_code saturates at 127)."""
    return _convert(lambda x: tf.math.cumsum(x, axis=1) * 2.0, [tf.TensorSpec((1, 5), tf.float32)])


@cache
def select_tf_model() -> bytes:
    """tf.linalg.det has no TFLite builtin; with SELECT_TF_OPS it becomes the Flex op FlexMatrixDeterminant."""

    def configure(c: tf.lite.TFLiteConverter) -> None:
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]

    return _convert(lambda x: tf.linalg.det(tf.reshape(x, (2, 2))) + 1.0, [tf.TensorSpec((1, 4), tf.float32)],
                    configure)


@cache
def custom_op_model() -> bytes:
    """tf.raw_ops.Erfinv is neither a builtin nor in the Flex allowlist: allow_custom_ops makes it custom "Erfinv"."""

    def configure(c: tf.lite.TFLiteConverter) -> None:
        c.allow_custom_ops = True

    return _convert(lambda x: tf.raw_ops.Erfinv(x=x * 0.5), [tf.TensorSpec((1, 4), tf.float32)], configure)


def interpreter(model: bytes) -> Interpreter:
    """The LiteRT interpreter on the model, without default delegates so nodes are the model's own."""
    return Interpreter(model_content=model,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def interpreter_op_names(model: bytes) -> list[str]:
    return [d["op_name"] for d in interpreter(model)._get_ops_details()]


def load_module(relative: str, name: str) -> Any:
    """Import a file of the repository (e.g. tools/gen_schema_enums.py) that is not in a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def schema() -> Any:
    """TensorFlow's own generated flatbuffer reader for the TFLite schema (an independent parser)."""
    return load_module("tools/gen_schema_enums.py", "_gen_schema_enums").load_schema()


def flatbuffer_model(model: bytes) -> Any:
    """The model unpacked by TensorFlow's schema_py_generated ModelT (object API)."""
    return schema().ModelT.InitFromPackedBuf(bytearray(model), 0)
