"""tf.distribute strategies for fine-tuning: one device, all local devices, or many machines.

This is TensorFlow's own engine (MirroredStrategy, MultiWorkerMirroredStrategy), picked by
name; edgeship only chooses the devices and checks the configuration so a mistake is
named before training starts. A strategy must be made before TensorFlow runs its first op,
which is why converters.convert makes it first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeship.converters._tf import first_line, tensorflow
from edgeship.converters.recipe import Distribution
from edgeship.sdk.errors import UsageError


def _split_cpu(tf: Any, replicas: int) -> list[str]:
    """Split the host CPU into `replicas` logical devices (for machines without GPUs) and name them."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as exc:  # "Virtual devices cannot be modified after being initialized"
        current = len(tf.config.list_logical_devices("CPU"))
        if current != replicas:
            raise UsageError(f"{replicas}: TensorFlow is already running in this process with {current} "
                             f"CPU device(s); start a new process ({first_line(exc)})", option="replicas") from exc
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _check_tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UsageError("multiworker needs TF_CONFIG: set it on every machine to "
                         '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": N}} '
                         "(see docs/distributed.md)", option="strategy")
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


# Runs in a separate process: the blocked one holds the GIL, so no thread or signal handler of its could act.
_WATCHDOG = """
import os, select, shutil, signal, sys
pid, seconds, path, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
ready, _, _ = select.select([sys.stdin], [], [], seconds)
if not ready:
    os.kill(pid, signal.SIGKILL)
    if path:
        shutil.rmtree(path, ignore_errors=True)
    sys.stderr.write(message)
"""


def _watchdog(seconds: float, workers: list[str], index: int, cleanup: Path | None) -> subprocess.Popen[bytes]:
    """A process that ends this one if the workers have not all joined in time; close its stdin once they have.

    MultiWorkerMirroredStrategy blocks in C++, holding the GIL, until every worker has registered;
    neither an exception nor SIGTERM reaches it there, so a worker that never starts would hang
    this one for ever. The watchdog kills it, removes `cleanup` (the unfinished bundle) and says
    which workers were expected. It also exits when this process ends (its stdin closes).
    """
    others = ", ".join(w for i, w in enumerate(workers) if i != index)
    message = (f"edgeship: error: --strategy multiworker: the workers in TF_CONFIG did not all join within {seconds:g} s "
               f"(this is worker {index}; waiting for {others}); start every worker with the same command, check the "
               f"host:port pairs and firewalls, or raise --worker-timeout\n")
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds),
                             str(cleanup) if cleanup else "", message], stdin=subprocess.PIPE)


def strategy_for(dist: Distribution, say: Callable[[str], None] = lambda _m: None, cleanup: Path | None = None) -> Any:
    """The tf.distribute strategy a recipe asks for; 'default' is TensorFlow's default (one device).

    If the workers of a multiworker run do not all join within `dist.worker_timeout`, the
    process is killed after `cleanup` (a directory) is removed and the reason is written to stderr.
    """
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
    index = int(config["task"]["index"])
    say(f"waiting for the {len(workers)} workers in TF_CONFIG to join (up to {dist.worker_timeout:g} s)")
    watchdog = _watchdog(dist.worker_timeout, workers, index, cleanup)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        assert watchdog.stdin is not None
        watchdog.stdin.close()  # joined (or failed by itself): stand the watchdog down
        watchdog.wait()
    say(f"MultiWorkerMirroredStrategy: worker {config['task']['index']} of {len(workers)}, "
        f"{strategy.num_replicas_in_sync} replica(s) in sync")
    return strategy
