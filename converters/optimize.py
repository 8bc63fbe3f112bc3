"""Fine-tuning before conversion: pruning, clustering and QAT, in tfmot's collaborative order.

The order is tfmot's collaborative optimization: prune (prune_low_magnitude), then
cluster with the sparsity preserved (cluster_weights(preserve_sparsity=True)), then QAT
with a scheme that preserves both. Each stage fine-tunes on the user's training data
and strips its wrappers, so the next stage (and the converter) sees a plain tf_keras model.

Every stage runs under a tf.distribute strategy (converters.distribute), so the same code
trains on one device, on all local devices, or across machines described by TF_CONFIG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.converters._tf import first_line
from edgeship.converters.recipe import STAGE_DEFAULTS, Compression, Recipe
from edgeship.sdk.errors import DatasetError, UnsupportedLayerError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
DEFAULT_BLOCK = 16  # zero runs of 16 input weights: contiguous in TFLite's (out, in) FC layout, so zlib folds them
# Automatic blocks only on Dense layers big enough not to be wrecked by them (measured; docs/converters.md):
BLOCK_MIN_INPUTS = 256  # at least 16 blocks per output unit, so no unit loses all of its inputs at once
BLOCK_MIN_WEIGHTS = 16384  # output heads and small layers (a few thousand weights) stay weight by weight


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
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
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


def _stage_settings(c: Compression, stage: str) -> tuple[int, float]:
    epochs, lr = STAGE_DEFAULTS[stage]
    return (c.epochs or epochs), (c.learning_rate or lr)


def _block_for(layer: Any, block: int | None) -> tuple[int, int]:
    """Pruning block of a layer: runs along a Dense layer's input axis (contiguous in TFLite); 1x1 elsewhere.

    tfmot supports blocks only for 2-D kernels, so convolutions are pruned weight by weight.
    Without --prune-block, only Dense layers with at least BLOCK_MIN_INPUTS inputs and
    BLOCK_MIN_WEIGHTS weights get blocks of DEFAULT_BLOCK: on smaller ones (an output head,
    a 64-input layer) whole blocks take too much of a unit's inputs (digits, 80 % sparsity:
    a 128x10 head falls from 98 % to 85 % with blocks, keeps 98.5 % without).
    """
    import tf_keras

    if not isinstance(layer, tf_keras.layers.Dense):
        return (1, 1)
    kernel = getattr(layer, "kernel", None)
    fan_in = int(kernel.shape[0]) if kernel is not None else 0
    units = int(kernel.shape[1]) if kernel is not None else 0
    if block is None and (fan_in < BLOCK_MIN_INPUTS or fan_in * units < BLOCK_MIN_WEIGHTS):
        return (1, 1)
    size = block if block is not None else DEFAULT_BLOCK
    if size > 1 and fan_in % size:
        if block is not None:
            log.warning("--prune-block %d does not divide %s's %d inputs; pruning it weight by weight",
                        size, layer.name, fan_in)
        return (1, 1)
    return (size, 1)


def prune(model: Any, c: Compression, data: TrainData, strategy: Any, say: Progress, loss: Any) -> Any:
    """Magnitude-prune every prunable layer to `c.sparsity` with a polynomial schedule; returns the stripped model."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    assert c.sparsity is not None
    epochs, lr = _stage_settings(c, "prune")
    steps = steps_per_epoch(data, c.batch_size, c.validation_split) * epochs
    end = max(1, int(steps * 0.7))  # reach the target, then fine-tune the remaining 30% at full sparsity
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, c.sparsity, begin_step=0, end_step=end,
                                                     frequency=max(1, end // 40))
    sparsity = tfmot.sparsity.keras

    def wrap(layer: Any) -> Any:  # wraps the layer itself, so its trained weights carry over
        if not _prunable(layer):
            return layer
        return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule, block_size=_block_for(layer, c.block))

    with strategy.scope():
        try:
            wrapped = tf_keras.models.clone_model(model, clone_function=wrap)
        except ValueError as exc:
            raise UnsupportedLayerError(f"tfmot cannot prune this model: {first_line(exc)}", []) from exc
    say(f"pruning to {c.sparsity:.0%} sparsity over {epochs} epoch(s)")
    fit(wrapped, data, stage="pruning", epochs=epochs, learning_rate=lr, batch_size=c.batch_size,
        validation_split=c.validation_split, strategy=strategy, say=say, loss=loss,
        callbacks=[sparsity.UpdatePruningStep()])
    with strategy.scope():
        return sparsity.strip_pruning(wrapped)


def _prunable(layer: Any) -> bool:
    """Layers with weights tfmot knows how to prune (others, such as pooling, pass through unwrapped)."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer, prune_registry

    return isinstance(layer, prunable_layer.PrunableLayer) or bool(prune_registry.PruneRegistry.supports(layer))


def cluster(model: Any, c: Compression, data: TrainData, strategy: Any, say: Progress, loss: Any,
            preserve_sparsity: bool) -> Any:
    """Cluster each weight tensor to `c.clusters` centroids (k-means++), keeping zeros at zero if pruned."""
    import tensorflow_model_optimization as tfmot

    assert c.clusters is not None
    epochs, lr = _stage_settings(c, "cluster")
    clustering = tfmot.clustering.keras
    params: dict[str, Any] = {"number_of_clusters": c.clusters,
                              "cluster_centroids_init": clustering.CentroidInitialization.KMEANS_PLUS_PLUS}
    with strategy.scope():
        try:
            if preserve_sparsity:
                from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster as exp

                wrapped = exp.cluster_weights(model, preserve_sparsity=True, **params)
            else:
                wrapped = clustering.cluster_weights(model, **params)
        except ValueError as exc:
            raise UnsupportedLayerError(f"tfmot cannot cluster this model: {first_line(exc)}", []) from exc
    say(f"clustering weights to {c.clusters} centroids over {epochs} epoch(s)"
        + (", preserving sparsity" if preserve_sparsity else ""))
    fit(wrapped, data, stage="clustering", epochs=epochs, learning_rate=lr, batch_size=c.batch_size,
        validation_split=c.validation_split, strategy=strategy, say=say, loss=loss)
    with strategy.scope():
        return clustering.strip_clustering(wrapped)


def qat_scheme(pruned: bool, clustered: bool) -> Any:
    """tfmot's QAT scheme that keeps what earlier stages made (zeros, shared values); None for the default."""
    if not (pruned or clustered):
        return None
    import tensorflow_model_optimization as tfmot

    combine = tfmot.experimental.combine
    if clustered:
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=pruned)
    return combine.Default8BitPrunePreserveQuantizeScheme()


def finetune(model: Any, recipe: Recipe, data: TrainData, strategy: Any, say: Progress) -> Any:
    """Run the recipe's stages on a tf_keras model: prune, cluster, QAT; returns the model to convert."""
    from edgeship.converters import qat

    c = recipe.compression
    loss = qat.loss_for(model, data.y, recipe.qat.loss if recipe.qat else "auto")
    pruned = clustered = False
    if c is not None and c.sparsity is not None:
        model = prune(model, c, data, strategy, say, loss)
        pruned = True
    if c is not None and c.clusters is not None:
        model = cluster(model, c, data, strategy, say, loss, preserve_sparsity=pruned)
        clustered = True
    if recipe.qat is not None:
        say(f"quantization-aware fine-tuning for {recipe.qat.epochs} epoch(s) on {recipe.qat.train}")
        model = qat.quantize_and_finetune(model, recipe.qat, data, strategy, say, scheme=qat_scheme(pruned, clustered))
    return model
