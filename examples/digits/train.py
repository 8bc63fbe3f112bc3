"""Train the digits example: a small CNN on scikit-learn's load_digits (ships with the package).

Writes, into OUT (default examples/digits/build/):
    digits.keras   the trained Keras 3 model (float32)
    train.npz      x (N, 8, 8, 1) float32 in [0, 1], y (N,) int64 labels -- training split
    test.npz       the held-out split, same layout

Deterministic: fixed seeds, op determinism, single-threaded TF ops.

    python examples/digits/train.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SEED = 0
HERE = Path(__file__).resolve().parent


def load_split() -> tuple:  # type: ignore[type-arg]
    """The digits data as float32 images in [0, 1], split 80/20 stratified with a fixed seed."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)


def build_model():  # type: ignore[no-untyped-def]
    """Two conv layers and two dense layers: ~85k parameters, so weights dominate the file."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits_cnn",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "build")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

    x_train, x_test, y_train, y_test = load_split()
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0, shuffle=True)
    _, acc = model.evaluate(x_test, y_test, verbose=0)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "digits.keras")
    np.savez(args.out / "train.npz", x=x_train, y=y_train)
    np.savez(args.out / "test.npz", x=x_test, y=y_test)
    print(f"digits: {model.count_params()} parameters, held-out accuracy {acc * 100:.2f}% -> {args.out}")


if __name__ == "__main__":
    main()
