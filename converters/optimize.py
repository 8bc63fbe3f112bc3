"""Compression before conversion: pruning and clustering, and the QAT scheme that keeps what they made.

convert runs the stages in tfmot's collaborative order: prune (prune_low_magnitude), then
cluster with the sparsity preserved (cluster_weights(preserve_sparsity=True)), then QAT
(converters.qat) with a scheme that preserves both (`qat_scheme`). Each stage fine-tunes on
the user's training data with the shared loop (converters.finetune) and strips its wrappers,
so the next stage (and the converter) sees a plain tf_keras model.

Every stage runs under a tf.distribute strategy (converters.distribute), so the same code
trains on one device, on all local devices, or across machines described by TF_CONFIG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edgeship.converters._tf import first_line
from edgeship.converters.finetune import TrainData, fit, steps_per_epoch
from edgeship.converters.recipe import STAGE_DEFAULTS, Compression
from edgeship.sdk.errors import UnsupportedLayerError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
DEFAULT_BLOCK = 16  # zero runs of 16 input weights: contiguous in TFLite's (out, in) FC layout, so zlib folds them
# Automatic blocks only on Dense layers big enough not to be wrecked by them (measured; docs/converters.md):
BLOCK_MIN_INPUTS = 256  # at least 16 blocks per output unit, so no unit loses all of its inputs at once
BLOCK_MIN_WEIGHTS = 16384  # output heads and small layers (a few thousand weights) stay weight by weight


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
            log.warning("pruning block %d does not divide %s's %d inputs; pruning it weight by weight",
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
