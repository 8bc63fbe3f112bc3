"""The TFLite runtime shim: one Interpreter API over LiteRT, tflite-runtime or tensorflow.lite.

Order of preference: ai_edge_litert (LiteRT), tflite_runtime, tensorflow.lite. The
name and version of the one in use go into every result, since numbers from
different runtimes are not comparable.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")

#: The TFLite level (the TensorFlow release whose kernels and op versions it carries) of each
#: ai-edge-litert release, by major.minor. LiteRT numbers its packages on its own (2.3.0), so the
#: package version says nothing about the op versions it runs. How 2.3 -> 2.21 was found: the
#: package's ``ai_edge_litert/schema_py_generated.py`` has the same 210 builtin operators (up to
#: STABLEHLO_CASE = 209) as TensorFlow 2.21's ``tensorflow/lite/python/schema_py_generated.py``,
#: and it runs TF 2.21's highest op versions (tests/test_runtime_compat.py). A release not listed
#: has no known level: nothing is refused before upload, and the worker reports an op version
#: it lacks as status ``op_version``.
LITERT_TFLITE_LEVEL = {"2.3": "2.21"}

#: Custom ops the stock TFLite interpreters register (BuiltinOpResolver, tensorflow/lite/core/kernels/
#: register.cc); checked by loading a model with each (tests/test_runtime_compat.py). The agent adds none.
TFLITE_CUSTOM_OPS = ("AudioSpectrogram", "Mfcc", "NumericVerify", "TFLite_Detection_PostProcess")


def tflite_level(name: str, version: Optional[str]) -> Optional[str]:
    """The TFLite (TensorFlow) release whose op versions runtime ``name`` at ``version`` runs; None if unknown.

    tflite_runtime N is TFLite N; tensorflow(.lite) N is TF N; ai_edge_litert from LITERT_TFLITE_LEVEL;
    tflite_micro matches ops by code, not version (None).
    """
    if not version or version == "unknown":
        return None
    if name in ("tflite_runtime", "tensorflow", "tensorflow.lite"):
        return version
    if name == "ai_edge_litert":
        return LITERT_TFLITE_LEVEL.get(".".join(version.split(".")[:2]))
    return None


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold fd 2 while native code prints banners (TF import, XNNPACK); replay it if the block fails.

    EDGESHIP_DEBUG=1 leaves stderr alone.
    """
    if os.environ.get("EDGESHIP_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            os.dup2(saved, 2)
            buf.seek(0)
            os.write(2, buf.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class RuntimeNotFound(Exception):
    """No TFLite runtime is importable (or the forced one is not)."""


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_cls: Any
    load_delegate: Any

    @property
    def tflite_level(self) -> Optional[str]:
        """The TFLite release whose op versions this runtime runs (see ``tflite_level``)."""
        return tflite_level(self.name, self.version)

    @property
    def custom_ops(self) -> Tuple[str, ...]:
        """The custom ops this runtime resolves without help (the agent registers none of its own)."""
        if self.name == "tflite_micro":
            from edgeship.device_agent.micro_ops import CUSTOM_OPS

            return tuple(CUSTOM_OPS)
        return TFLITE_CUSTOM_OPS

    def interpreter(self, model_content: bytes, num_threads: Optional[int] = None, **kwargs: Any) -> Any:
        """An allocated interpreter built from bytes, so TFLite's flatbuffer verifier runs on the model."""
        with quiet_native_stderr():
            interpreter = self.interpreter_cls(model_content=model_content, num_threads=num_threads, **kwargs)
            interpreter.allocate_tensors()
        return interpreter


def _load(name: str) -> Runtime:
    if name == "ai_edge_litert":
        mod = importlib.import_module("ai_edge_litert.interpreter")
        version = _dist_version("ai-edge-litert")
    elif name == "tflite_runtime":
        mod = importlib.import_module("tflite_runtime.interpreter")
        version = getattr(importlib.import_module("tflite_runtime"), "__version__", None) or _dist_version("tflite-runtime")
    elif name == "tflite_micro":  # the microcontroller-class runtime: used only when asked for
        micro = importlib.import_module("edgeship.device_agent.micro")
        return Runtime("tflite_micro", micro.version(), micro.MicroRuntime, micro.load_delegate)
    elif name == "tensorflow":
        tf = importlib.import_module("tensorflow")
        mod = tf.lite
        version = tf.__version__
        return Runtime("tensorflow.lite", version, mod.Interpreter, mod.experimental.load_delegate)
    else:
        raise RuntimeNotFound(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}, tflite_micro")
    return Runtime(name, version, mod.Interpreter, mod.load_delegate)


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # metadata may be absent inside a zipapp; the version is informative only
        return "unknown"


def load_runtime(prefer: Optional[str] = None) -> Runtime:
    """The forced runtime, or the best importable one; RuntimeNotFound says what was tried."""
    candidates = (prefer,) if prefer else RUNTIMES
    errors = []
    for name in candidates:
        try:
            return _load(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise RuntimeNotFound("no TFLite runtime found (" + "; ".join(errors) + "); install ai-edge-litert or tflite-runtime")
