"""Child processes of the agent: a fresh interpreter on the agent's own code, its memory limit, its end.

The worker (a model's run), the delegate probe and the TFLM arena search each start one;
they share these helpers here, so none of them imports another.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any, Callable, Dict, List

from edgeship import import_root


def json_lines(buf: bytes) -> "tuple[List[Dict[str, Any]], bytes]":
    """The JSON objects on the complete lines of what a child wrote so far, and the incomplete rest."""
    *lines, rest = buf.split(b"\n")
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out, rest


def child_command(module: str, function: str) -> List[str]:
    """argv of a fresh Python (this one) that runs ``module.function()`` from this agent's code.

    A new interpreter, not a fork: the parent may hold threads and native state (TensorFlow,
    TFLM) that a forked child must not inherit.
    """
    code = f"import sys; sys.path.insert(0, {import_root()!r}); from {module} import {function}; {function}()"
    return [sys.executable, "-c", code]


def limit_memory(limit_bytes: int) -> Callable[[], None]:
    """A preexec_fn: cap the child's address space and give it its own process group."""
    def apply() -> None:
        import resource

        if limit_bytes > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        os.setsid()  # its own process group, so a timeout kills everything it started

    return apply


def kill(proc: "subprocess.Popen[bytes]") -> None:
    """Kill a child started with limit_memory (its whole process group) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
