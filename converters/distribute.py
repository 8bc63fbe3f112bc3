"""tf.distribute strategies for fine-tuning: one device, all local devices, or many machines.

This is TensorFlow's own engine (MirroredStrategy, MultiWorkerMirroredStrategy), picked by
name; edgeship only chooses the devices and checks the configuration so a mistake is
named before training starts. A strategy must be made before TensorFlow runs its first op,
which is why converters.convert makes it first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from converters._tf import first_line, tensorflow
from converters.recipe import Distribution
from sdk.errors import UsageError


def _split_cpu(tf: Any, replicas: int) -> list[str]:
    """Split the host CPU into `replicas` logical devices (for machines without GPUs) and name them."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as exc:  # "Virtual devices cannot be modified after being initialized"
        current = len(tf.config.list_logical_devices("CPU"))
        if current != replicas:
            raise UsageError(f"--replicas {replicas}: TensorFlow is already running in this process with {current} "
                             f"CPU device(s); start a new process ({first_line(exc)})") from exc
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _check_tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UsageError("--strategy multiworker needs TF_CONFIG: set it on every machine to "
                         '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": N}} '
                         "(see docs/distributed.md)")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"TF_CONFIG is not valid: {exc!r}; it needs cluster.worker (a list of host:port) "
                         f"and task.type/task.index") from exc
    if task.get("type") not in ("worker", "chief") or not isinstance(workers, list) or not workers:
        raise UsageError("TF_CONFIG: task.type must be worker (or chief) and cluster.worker a non-empty list")
    if task.get("type") == "worker" and not 0 <= index < len(workers):
        raise UsageError(f"TF_CONFIG: task.index {index} is outside cluster.worker ({len(workers)} worker(s))")
    return config


def strategy_for(dist: Distribution, say: Callable[[str], None] = lambda _m: None) -> Any:
    """The tf.distribute strategy a recipe asks for; 'default' is TensorFlow's default (one device)."""
    if dist.strategy == "multiworker":
        config = _check_tf_config()  # before importing TensorFlow: a bad config costs nothing
    tf = tensorflow()
    if dist.strategy == "default":
        return tf.distribute.get_strategy()
    if dist.strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus and dist.replicas is None:
            strategy = tf.distribute.MirroredStrategy()
        else:
            devices = _split_cpu(tf, dist.replicas or 1) if not gpus else [f"/gpu:{i}" for i in range(dist.replicas or 1)]
            # NCCL all-reduce needs GPUs; CPU replicas reduce through one device.
            ops = tf.distribute.ReductionToOneDevice() if not gpus else None
            strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)
        say(f"MirroredStrategy over {strategy.num_replicas_in_sync} replica(s)")
        return strategy
    workers = config["cluster"]["worker"]
    options = tf.distribute.experimental.CommunicationOptions(implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    say(f"MultiWorkerMirroredStrategy: worker {config['task']['index']} of {len(workers)}, "
        f"{strategy.num_replicas_in_sync} replica(s) in sync")
    return strategy
