"""The training loop every fine-tuning stage shares: pruning and clustering (converters.optimize) and QAT (converters.qat).

`fit` compiles and trains a tf_keras model under a tf.distribute strategy on a seeded split of the
user's training data; `loss_for` picks the loss that fits the labels and the output layer. The
stages wrap the model their own way and hand it here to train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.sdk.errors import DatasetError
from edgeship.sdk.progress import Counted

Progress = Callable[[str], None]
_REPORTS_PER_EPOCH = 10  # counted messages (sdk.progress.Counted) within an epoch: about this many


@dataclass(frozen=True)
class TrainData:
    """Training inputs (one array, or a list in the model's input order) and labels.

    `y` is one array for a one-output model, or a list with one array per output in the
    model's output order (each output then gets its own loss).
    """

    x: Any
    y: np.ndarray | list[np.ndarray]

    @property
    def size(self) -> int:
        return len(self.y[0]) if isinstance(self.y, list) else len(self.y)


def fit(model: Any, data: TrainData, *, stage: str, epochs: int, learning_rate: float, batch_size: int,
        validation_split: float, strategy: Any, say: Progress, loss: Any, callbacks: list[Any] | None = None,
        early_stopping: bool = False) -> None:
    """Compile and fine-tune `model` under `strategy`, with `batch_size` as the global batch.

    The data becomes a tf.data pipeline sharded by data (not by file), so MultiWorkerMirroredStrategy
    gives each worker its share; validation data is held out by a seeded split, the same on every worker.
    """
    import tensorflow as tf
    import tf_keras

    n = data.size
    if n < 2:
        raise DatasetError(f"{stage} needs training samples; the data has fewer than 2")
    order = np.random.default_rng(0).permutation(n)
    n_val = held_out(n, validation_split)
    train_idx, val_idx = order[n_val:], order[:n_val]

    def dataset(idx: np.ndarray, shuffle: bool) -> Any:
        xs = [a[idx] for a in data.x] if isinstance(data.x, list) else data.x[idx]
        ys = tuple(a[idx] for a in data.y) if isinstance(data.y, list) else data.y[idx]
        ds = tf.data.Dataset.from_tensor_slices((tuple(xs) if isinstance(xs, list) else xs, ys))
        if shuffle:
            ds = ds.shuffle(len(idx), seed=0, reshuffle_each_iteration=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.batch(batch_size).with_options(options)

    with strategy.scope():
        model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])

    class _Report(tf_keras.callbacks.Callback):  # type: ignore[misc]
        """Says how far each epoch is (every few batches, as a Counted message) and how it ended."""

        epoch = 0
        _supports_tf_logs = True  # batch logs stay tensors: read (a device sync) only on the batches reported

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            steps = self.params.get("steps") if isinstance(self.params, dict) else None
            if not isinstance(steps, int) or steps < 1:
                return  # an epoch of unknown length: its end is still said
            done = batch + 1
            if done % max(1, steps // _REPORTS_PER_EPOCH) and done != steps:
                return
            loss = (logs or {}).get("loss")
            say(Counted(f"{stage} epoch {self.epoch + 1}/{epochs}", done, steps, "batch",
                        "" if loss is None else f"loss {float(loss):.4f}"))

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            say(f"{stage} epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}"
                   + (f", val_loss {logs['val_loss']:.4f}" if "val_loss" in logs else ""))

    cbs = [*(callbacks or []), _Report()]
    if early_stopping and n_val:
        cbs.append(tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs, restore_best_weights=True))
    tf_keras.utils.set_random_seed(0)
    model.fit(dataset(train_idx, True), validation_data=dataset(val_idx, False) if n_val else None, epochs=epochs,
              verbose=0, callbacks=cbs)


def held_out(n: int, validation_split: float) -> int:
    """How many of n samples the seeded validation split holds out."""
    return round(n * validation_split) if validation_split > 0 else 0


def steps_per_epoch(data: TrainData, batch_size: int, validation_split: float) -> int:
    """Optimizer steps in one epoch at a global batch of `batch_size` (what the pruning schedule counts)."""
    return max(1, -(-(data.size - held_out(data.size, validation_split)) // batch_size))


def _output_layer(model: Any, index: int) -> Any:
    history = getattr(model.outputs[index], "_keras_history", None)
    return getattr(history, "layer", None) or model.layers[-1]


def loss_for(model: Any, y: np.ndarray | list[np.ndarray], name: str) -> Any:
    """The loss to fine-tune with: `name`, or for "auto" one per output that fits its labels and output layer.

    `y` is one label array per model output (a bare array for a one-output model); the result
    is one loss, or a list in the model's output order.
    """
    import tf_keras

    if name != "auto":
        return name
    losses = []
    for index, labels in enumerate(y if isinstance(y, list) else [y]):
        last = _output_layer(model, index)
        probabilities = (getattr(last, "activation", None) is tf_keras.activations.softmax
                         or type(last).__name__ == "Softmax")
        width = model.outputs[index].shape[-1]
        if np.issubdtype(labels.dtype, np.integer) and (labels.ndim == 1 or labels.shape[-1] == 1):
            losses.append(tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities))
        elif labels.ndim == 2 and labels.shape[-1] == width and np.allclose(labels.sum(axis=-1), 1.0):
            losses.append(tf_keras.losses.CategoricalCrossentropy(from_logits=not probabilities))
        else:
            losses.append(tf_keras.losses.MeanSquaredError())
    return losses if isinstance(y, list) else losses[0]
