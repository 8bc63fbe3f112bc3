"""The one place TensorFlow is imported, quietly, with Keras 3 on the TensorFlow backend."""

from __future__ import annotations

import os
from typing import Any

from edgeship.device_agent.runtime import quiet_native_stderr

_imported = False


def tensorflow() -> Any:
    """Import TensorFlow with its C++ logging quietened (EDGESHIP_DEBUG=1 keeps it)."""
    if not os.environ.get("EDGESHIP_DEBUG"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    global _imported
    if not _imported and not os.environ.get("EDGESHIP_DEBUG"):
        with quiet_native_stderr():
            import keras  # noqa: F401  (Keras 3 registers with TF here; its import is noisy too)
            import tensorflow as tf
    import tensorflow as tf

    if not os.environ.get("EDGESHIP_DEBUG"):
        tf.get_logger().setLevel("ERROR")
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:
            pass
    _imported = True
    return tf


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A third-party exception as one readable line (TensorFlow messages run to pages)."""
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return line[:limit]
    return text[:limit]
