"""edgeship: ship TensorFlow models to edge boards, from a notebook or a CI script.

The public Python API is what this module names in ``__all__`` (docs/api.md)::

    import edgeship

    bundle = edgeship.convert("model.keras", "int8", out="build/int8", calib="train.npz")
    board = edgeship.board("local")
    edgeship.push(bundle, board)
    result = edgeship.evaluate(bundle, board, "test.npz")
    edgeship.check_gates(result, min_accuracy=95)

Names are loaded on first use, so ``import edgeship`` stays cheap (the CLI's ``--help`` and the
board's agent import it too) and TensorFlow is imported only by a conversion.

``edgeship.sdk`` (host library and CLI), ``edgeship.converters`` and ``edgeship.device_agent``
are sdk/, converters/ and device_agent/. In a checkout the entries of this folder are links
to them; a wheel holds the folders themselves, so an install adds only ``edgeship``.
"""

import importlib
import os
from typing import Any

# public name -> "module:attribute"; kept in step with docs/api.md by tests/test_public_api.py
_PUBLIC = {
    "convert": "edgeship.sdk.api:convert",
    "inspect": "edgeship.sdk.api:inspect",
    "Recipe": "edgeship.converters.recipe:Recipe",
    "Board": "edgeship.sdk.boards:Board",
    "board": "edgeship.sdk.api:board",
    "push": "edgeship.sdk.api:push",
    "bench": "edgeship.sdk.api:bench",
    "evaluate": "edgeship.sdk.api:evaluate",
    "check_gates": "edgeship.sdk.api:check_gates",
    "write_result": "edgeship.sdk.api:write_result",
    "report": "edgeship.sdk.api:report",
    "RunOptions": "edgeship.device_agent.options:RunOptions",
    "RunResult": "edgeship.sdk.results:RunResult",
    "ConversionResult": "edgeship.converters.convert:ConversionResult",
    "Transport": "edgeship.sdk.transport.base:Transport",
    "MemoryTransport": "edgeship.sdk.transport.memory:MemoryTransport",
    "EdgeshipError": "edgeship.sdk.errors:EdgeshipError",
    "errors": "edgeship.sdk.errors",
}

__all__ = [*sorted(_PUBLIC), "__version__", "import_root"]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    if name == "__version__":
        from edgeship.device_agent import __version__

        return __version__
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'edgeship' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = importlib.import_module(module)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list:  # type: ignore[type-arg]
    return sorted(set(globals()) | set(__all__))


def import_root() -> str:
    """The sys.path entry ``edgeship`` is imported from: a directory, or the agent zipapp file.

    A child Python that must import this same code (agent workers, the converter child, the
    local agent) puts it first on its path.
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
