""".tflite files made the way other tools make them, with no edgeship manifest: what `edgeship bundle` takes.

A tf_keras model on the digits data, converted with tf.lite.TFLiteConverter.from_keras_model
to float and (raw converter, representative data, int8 I/O) to int8; a stateful tf_keras
LSTM; a token-id model with an int32 input. Each builder is cached per session and seeded,
so the files are the same on every run.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

VOCAB = 100  # the token-id model's embedding rows


@cache
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8, 1) float32 in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)


def write_test_npz(path: Path, samples: int = 300) -> Path:
    """The last `samples` digits (not trained on) as x, y: what a user brings to `eval --data`."""
    x, y = digits_arrays()
    np.savez(path, x=x[-samples:], y=y[-samples:])
    return path


@cache
def _keras_digits() -> Any:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    x, y = digits_arrays()
    model = tf_keras.Sequential([
        tf_keras.layers.Input((8, 8, 1), batch_size=1, name="pixels"), tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(24, activation="relu"), tf_keras.layers.Dense(10, activation="softmax", name="digit")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:-300], y[:-300], epochs=8, batch_size=32, verbose=0)
    return model


@cache
def keras_float() -> bytes:
    """tf_keras -> from_keras_model, no options: the float32 .tflite most tutorials make."""
    return bytes(tf.lite.TFLiteConverter.from_keras_model(_keras_digits()).convert())


@cache
def keras_int8() -> bytes:
    """The same model, full-integer with the raw converter (representative data, int8 input and output)."""
    x, _ = digits_arrays()
    c = tf.lite.TFLiteConverter.from_keras_model(_keras_digits())
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([x[i : i + 1]] for i in range(0, 1000, 5))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    return bytes(c.convert())


@cache
def stateful_lstm() -> bytes:
    """A tf_keras LSTM with stateful=True: its state lives in resource variables (VAR_HANDLE, ASSIGN_VARIABLE)."""
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([tf_keras.layers.Input((4, 3), batch_size=1), tf_keras.layers.LSTM(5, stateful=True),
                                 tf_keras.layers.Dense(2)])
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


@cache
def token_ids() -> bytes:
    """int32 token ids -> embedding lookup (GATHER over VOCAB rows) -> mean: an index input that must stay in range."""
    table = tf.constant(np.random.default_rng(5).normal(size=(VOCAB, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((1, 6), tf.int32, name="tokens")])
    def embed(tokens: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.gather(table, tokens), axis=1)

    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([embed.get_concrete_function()]).convert())
