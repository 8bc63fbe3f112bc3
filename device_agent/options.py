"""The options of a run (bench or eval), typed: the one place their defaults and bounds live.

The host builds a ``RunOptions`` and sends ``to_json()``; the agent reads the request's
options back with ``RunOptions.from_json`` (unknown keys and out-of-bounds values are
refused with a message that names the key), fills in what the board decides
(``resolved``: its runtime, arena and ``--run-timeout``) and hands the worker the
resolved options, which the worker reads as they are. The CLI's help shows the defaults
from here. Python 3.9: this module ships in the agent zipapp and imports only the stdlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgeship.device_agent.protocol import clip
from edgeship.device_agent.runtime import RUNTIMES

#: The version of the result the agent replies with, and of the result document the host writes
#: from it (docs/results.md): one number for both, so they cannot drift apart.
RESULT_SCHEMA_VERSION = 1

MAX_THREADS = 256
MAX_RUNS = 1_000_000
MAX_WARMUP = 100_000
MAX_ARENA = 1 << 31
MAX_OUTPUT_NAME = 256  # an output name on the wire is bounded like every other request field
#: How evaluation treats a model's variable tensors (LSTM state, streaming buffers) between samples.
STATES = ("reset", "keep")
#: The runtimes a run may ask for by name: the TFLite ones, and TFLite Micro.
RUNTIME_NAMES = (*RUNTIMES, "tflite_micro")


class OptionError(Exception):
    """A run option the agent refuses as it stands; the message names the option and what is allowed."""


@dataclass(frozen=True)
class DelegateSpec:
    """One external delegate a run asks for: a name from the board's allow-list, its options, whether it must load.

    ``library`` is set only on the board, by its allow-list (the host never sends a path).
    """

    name: str
    options: Dict[str, str] = field(default_factory=dict)
    required: bool = False
    library: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "options": dict(self.options), "required": self.required}
        if self.library is not None:
            out["library"] = self.library
        return out

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> DelegateSpec:
        return cls(name=str(value["name"]), options={str(k): str(v) for k, v in (value.get("options") or {}).items()},
                   required=bool(value.get("required", False)), library=value.get("library"))


@dataclass(frozen=True)
class RunOptions:
    """How a model is run; a field left None is the board's choice (its runtime, arena, time limit; the runtime's threads)."""

    runs: int = 50  #: steady-state runs at least (bench)
    warmup: int = 5  #: warm-up runs before the steady state (bench)
    min_seconds: float = 1.0  #: the steady state lasts at least this long (bench)
    threads: Optional[int] = None  #: interpreter threads (None: the runtime's default)
    xnnpack: bool = True  #: the runtime's default XNNPACK delegate
    delegates: Tuple[DelegateSpec, ...] = ()  #: external delegates, named from the board's allow-list
    runtime: Optional[str] = None  #: force the board's runtime (None: the agent's, else the first importable)
    timeout: Optional[float] = None  #: seconds the run may take; only lowers the agent's --run-timeout
    output: Optional[str] = None  #: eval: the output the labels score, by name
    state: str = "reset"  #: eval: variable tensors between samples, reset or keep
    arena_size: Optional[int] = None  #: TFLite Micro: the tensor arena (None: the board's)

    @classmethod
    def keys(cls) -> Tuple[str, ...]:
        """Every option a request may carry; any other key is refused, not ignored (a typo must not pass silently)."""
        return tuple(f.name for f in fields(cls))

    def to_json(self) -> Dict[str, Any]:
        """The options as a run request carries them: the fields that differ from the defaults (which both sides
        take from this class), so an option left alone is never sent (and None is the board's choice)."""
        out: Dict[str, Any] = {}
        default = RunOptions()
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == getattr(default, f.name):
                continue
            out[f.name] = [d.to_json() for d in value] if f.name == "delegates" else value
        return out

    @classmethod
    def from_json(cls, value: Any, run_timeout: float = math.inf,
                  delegates: Optional[Callable[[Any], List[Dict[str, Any]]]] = None) -> RunOptions:
        """A request's options, checked: a JSON object of known keys, each bounded; OptionError (or ValueError) if not.

        Counts are bounded so no run is endless (and the worker's deadline holds anyway);
        ``timeout`` may only lower the operator's ``run_timeout``, and ``min_seconds`` must
        fit inside the run's time. ``delegates`` turns the request's delegate entries into
        specs: on the board, its allow-list (which refuses names it lacks and any path);
        without it the entries are taken as they are (the worker's already resolved ones).
        """
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise OptionError(f"run options must be a JSON object, not {type(value).__name__} {clip(value, 40)}")
        known = cls.keys()
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise OptionError(f"unknown run option {clip(unknown[0], 40)}; the options are {', '.join(known)}")
        opts = dict(value)
        runtime = opts.get("runtime")
        if runtime is not None and runtime not in RUNTIME_NAMES:
            raise OptionError(f"runtime must be one of {', '.join(RUNTIME_NAMES)}, not {clip(runtime)}")
        xnnpack = opts.get("xnnpack")
        if xnnpack is not None and not isinstance(xnnpack, bool):
            raise OptionError(f"xnnpack must be true or false, not {clip(xnnpack)}")
        threads = integer_option(opts, "threads", 1, MAX_THREADS)
        warmup = integer_option(opts, "warmup", 0, MAX_WARMUP)
        runs = integer_option(opts, "runs", 1, MAX_RUNS)
        arena = integer_option(opts, "arena_size", 1, MAX_ARENA)
        timeout = _seconds(opts, "timeout", math.inf, positive=True)
        budget = run_timeout if timeout is None else min(timeout, run_timeout)
        min_seconds = _seconds(opts, "min_seconds", budget)  # a minimum time the run could never reach is refused
        output = output_name(opts.get("output"))
        state = state_name(opts.get("state"))
        raw = opts.get("delegates")
        specs = delegates(raw) if delegates is not None else list(raw or [])
        default = cls()
        return cls(runs=default.runs if runs is None else runs,
                   warmup=default.warmup if warmup is None else warmup,
                   min_seconds=default.min_seconds if min_seconds is None else min_seconds,
                   threads=threads, xnnpack=default.xnnpack if xnnpack is None else xnnpack,
                   delegates=tuple(DelegateSpec.from_json(d) for d in specs), runtime=runtime, timeout=timeout,
                   output=output, state=state, arena_size=arena)

    def resolved(self, *, runtime: Optional[str], arena_size: Optional[int], run_timeout: float) -> RunOptions:
        """These options with the board's choices filled in: what the worker runs with."""
        timeout = run_timeout if self.timeout is None else min(self.timeout, run_timeout)
        return replace(self, runtime=self.runtime or runtime, arena_size=self.arena_size or arena_size, timeout=timeout)


def integer_option(opts: Dict[str, Any], key: str, low: int, high: int) -> Optional[int]:
    """An optional integer field within low..high (booleans are not integers here)."""
    value = opts.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(f"{key} must be an integer from {low} to {high}, not {clip(value)}")
    return value


def _seconds(opts: Dict[str, Any], key: str, high: float, *, positive: bool = False) -> Optional[float]:
    """An optional finite number of seconds from 0 (over 0 when positive) up to high."""
    value = opts.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value > high or value < 0 or (positive and value == 0)):
        bound = "over 0" if positive else "from 0"
        raise OptionError(f"{key} must be a finite number of seconds {bound}"
                          f"{f' up to {high:g}' if math.isfinite(high) else ''}, not {clip(value)}")
    return float(value)


def output_name(value: Any) -> Optional[str]:
    """The `output` option: a bounded string (the worker checks it is one of the model's outputs)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_OUTPUT_NAME or not value.isprintable():
        raise ValueError(f"option output must be a printable output name of 1..{MAX_OUTPUT_NAME} characters")
    return value


def state_name(value: Any) -> str:
    """The `state` option: how eval treats variable tensors between samples (reset unless asked)."""
    if value is None:
        return RunOptions.state
    if value not in STATES:
        raise ValueError(f"option state must be one of {', '.join(STATES)}")
    return str(value)
