"""Will this bundle run on that board? Checked before any model byte is pushed.

Each problem names the op or the number and says what to do. The checks use what the
catalogue says about the board (constraints, runtime, delegates, custom_ops) and, once
connected, what its agent reports in hello (the runtime, the TFLite level it implements,
the custom ops it resolves).

Op versions are compared with the runtime's *TFLite level* (device_agent.runtime.tflite_level),
never with its package version: ai-edge-litert 2.3 carries TF 2.21's kernels.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

from edgeship.converters.manifest import Manifest, named_float_ops
from edgeship.sdk.errors import EdgeshipError

log = logging.getLogger(__name__)
STRICT_ADVICE = ("recipe int8 with io int8 and int8_strict (or recipe qat) to see which layers stop a fully integer "
                 "model, and change them")


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


class IncompatibleError(EdgeshipError):
    """The bundle cannot run on the board; the message lists every problem found."""

    def __init__(self, board: str, problems: list[Problem]) -> None:
        super().__init__(f"{board} cannot run this model: " + "; ".join(p.message for p in problems))
        self.problems = problems


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    nums = re.findall(r"\d+", text)
    return tuple(int(n) for n in nums[:3]) if nums else None


def _level(spec: Any, runtime: dict[str, Any] | None) -> tuple[str | None, str]:
    """(the TFLite level the board's runtime implements, how to name that runtime in a message)."""
    from edgeship.device_agent.runtime import tflite_level

    if runtime and runtime.get("name"):
        name, version = str(runtime["name"]), runtime.get("version")
        level = runtime["tflite_level"] if "tflite_level" in runtime else tflite_level(name, version)
        return level, f"{name} {version}"
    if spec is None or not spec.runtime_version:
        return None, ""
    if spec.runtime is None:  # no runtime named: the catalogue's runtime_version is the TFLite level itself
        return spec.runtime_version, f"TFLite {spec.runtime_version}"
    return tflite_level(spec.runtime, spec.runtime_version), f"{spec.runtime} {spec.runtime_version}"


def _available_custom_ops(spec: Any, runtime: dict[str, Any] | None) -> set[str]:
    """Custom ops the board resolves: what its catalogue entry declares, plus what its runtime registers."""
    from edgeship.device_agent.micro_ops import CUSTOM_OPS as MICRO_CUSTOM_OPS
    from edgeship.device_agent.runtime import TFLITE_CUSTOM_OPS

    declared = set(spec.custom_ops) if spec is not None else set()
    if runtime is not None and runtime.get("custom_ops") is not None:
        return declared | set(runtime["custom_ops"])
    micro = spec is not None and spec.runtime == "tflite_micro"
    return declared | set(MICRO_CUSTOM_OPS if micro else TFLITE_CUSTOM_OPS)


def custom_ops(manifest: Manifest) -> list[str]:
    """The model's CUSTOM ops by name."""
    return sorted({o.name for o in manifest.operators if o.kind == "custom"})


@functools.lru_cache(maxsize=8)
def micro_probe(model: bytes, arena: int | None) -> Any:
    """TFLite Micro's arena plan for `model` (``micro.probe``, in a child process), cached.

    `check` tests the arena and then reports it; the cache plans the model once for both.
    """
    from edgeship.device_agent import micro

    return micro.probe(model, arena_size=arena)


def micro_arena_needed(model: bytes, arena: int | None = None) -> int:
    """The tensor arena (bytes) TFLite Micro plans for `model` on this host: what `check` tests and shows."""
    return int(micro_probe(model, arena).needed)


def _need_after_crash(model: bytes, crash: Any, arena: int | None) -> str:
    """When TFLM crashed at the board's own arena: the arena the model needs (a search with no board size), as advice."""
    from edgeship.device_agent import micro

    if arena is None or crash.arena_size != arena:
        return ""
    try:
        needed = micro.probe(model).needed  # a crash at a size it passes through counts as "too small"
    except micro.MicroError:
        return ""
    return f"; the model needs a {needed:,}-byte arena (TFLite Micro on this host)" if needed > arena else ""


def _micro_problems(model: bytes, arena: int | None, integer: bool) -> list[Problem]:
    """What TFLite Micro says about the model: ops it lacks, and the arena it needs.

    The TFLM interpreters are built in a child process (``micro.probe``): a TFLM crash is a
    problem of this board, never the death of edgeship (and of a fleet run's other boards).
    """
    from edgeship.device_agent import micro

    try:
        found = micro_probe(model, arena)
        needed = found.needed
        for size, sig in found.crashes:  # TFLM segfaults on some too-small arenas: part of the search, not news
            log.info("TFLite Micro crashed (%s) while planning the arena at %d bytes, in a probe child; "
                     "that size was counted as too small", sig, size)
    except micro.ArenaProbeCrashed as exc:
        return [Problem("micro_crashed", str(exc) + _need_after_crash(model, exc, arena))]
    except micro.UnsupportedOpError as exc:
        return [Problem("op_unsupported", f"TFLite Micro has no kernel for op {exc.op}; change the model or add a "
                                          f"custom kernel")]
    except (micro.MicroError, ValueError) as exc:  # ValueError: TFLM's own reader refused the flatbuffer
        return [Problem("micro_rejected", f"TFLite Micro cannot load the model: {exc}")]
    if arena is not None and needed > arena:
        shrink = "smaller or fewer layers" if integer else "smaller layers, int8"  # int8 already: no int8 hint
        return [Problem("arena_too_small", f"the model needs a {needed:,}-byte tensor arena, the board has {arena:,}; "
                                           f"shrink the model ({shrink}) or give the board more RAM "
                                           f"(constraints.arena_bytes)")]
    return []


def _convert_with(manifest: Manifest, options: str) -> str:
    """Advice to convert again with `options`; a prebuilt .tflite (`edgeship bundle`) has only its origin to convert."""
    if manifest.source.kind == "tflite":
        return f"this bundle is a prebuilt .tflite: convert the model it was made from with `edgeship convert` {options}"
    return f"convert with {options}"


def delegate_problems(spec: Any, requested: list[dict[str, Any]] | None,
                      board: list[dict[str, Any]] | None = None) -> list[Problem]:
    """Problems with the delegates a run names (`--delegate NAME`), before anything is sent.

    Without a connection the catalogue entry's `delegates` names are what the board allows; once
    connected, the agent's hello `external_delegates` (what its allow-list holds and what loads)
    decides. A name the board does not allow would be refused; a required one that does not load
    would fail the run.
    """
    problems: list[Problem] = []
    for d in requested or []:
        name = d.get("name")
        if isinstance(board, list):
            known = {str(b.get("name")): b for b in board if isinstance(b, dict)}
            where = "the board's agent allows"
        elif spec is not None:
            known = {x.name: {"name": x.name, "loaded": True} for x in spec.delegates}
            where = "the board's entry in boards.yaml lists"
        else:
            continue
        if name not in known:
            problems.append(Problem("delegate_unknown", f"delegate {name} is not one the board offers ({where}: "
                                                        f"{', '.join(sorted(known)) or 'none'}); name one of those, "
                                                        f"or add it to the board's allow-list (the agent's "
                                                        f"--allow-delegate NAME=PATH) and to its boards.yaml entry"))
        elif d.get("required") and not known[name].get("loaded"):
            why = known[name].get("error") or "it does not load"
            problems.append(Problem("delegate_unavailable", f"delegate {name} does not load on the board ({why}) and "
                                                            f"the run requires it (require_delegate); fix the library "
                                                            f"on the board, or run without requiring it"))
    return problems


def check(manifest: Manifest, spec: Any, runtime: dict[str, Any] | None = None,
          model: bytes | None = None, delegates: list[dict[str, Any]] | None = None,
          board_delegates: list[dict[str, Any]] | None = None) -> list[Problem]:
    """Problems of running `manifest`'s model on a board described by `spec` (a catalogue entry; may be None).

    `runtime` is what the board's agent reported in hello (name, version, tflite_level,
    custom_ops); without it the catalogue entry stands in for it. `delegates` are the run's
    named delegates ({name, required}); `board_delegates` the agent's hello `external_delegates`.
    """
    from edgeship.device_agent.micro_ops import BUILTIN_OPS as MICRO_BUILTIN_OPS

    problems: list[Problem] = delegate_problems(spec, delegates, board_delegates)
    micro = spec is not None and spec.runtime == "tflite_micro"  # TFLM matches ops by code, not version
    missing = [name for name in custom_ops(manifest) if name not in _available_custom_ops(spec, runtime)]
    if missing:
        where = "TFLite Micro" if micro else "the board's runtime"
        problems.append(Problem("custom_op_missing", f"the model needs custom op(s) {', '.join(missing)}, which "
                                                     f"{where} does not register and the board does not declare; "
                                                     f"build the runtime with them and list them under custom_ops in "
                                                     f"the board's entry in boards.yaml, or change the model"))
    no_kernel = sorted({o.name for o in manifest.operators if o.kind == "builtin" and o.name not in MICRO_BUILTIN_OPS})
    if micro and no_kernel:
        problems.append(Problem("op_unsupported", f"TFLite Micro has no kernel for op(s) {', '.join(no_kernel)} "
                                                  f"(unsupported on TFLM); change the model"))
    c = spec.constraints if spec is not None else None
    refused_float = c is not None and c.int8_only and not manifest.integer.fully_integer  # not_int8, below
    if micro and not no_kernel and not missing and not refused_float and model is not None:
        problems += _micro_problems(model, spec.constraints.arena_bytes, manifest.integer.fully_integer)
    kept = manifest.float_fallback
    if c is not None and c.int8_only and kept is not None and kept.layers:
        layers = ", ".join(name.split(";")[0] for name in kept.layers[:4]) + (" ..." if len(kept.layers) > 4 else "")
        problems.append(Problem("not_int8", f"the board is int8-only and the model keeps {len(kept.layers)} layer(s) "
                                            f"in float (keep_float {kept.requested}: {layers}); convert without "
                                            f"keep_float, with recipe int8 and io int8, for this board"))
    elif c is not None and c.int8_only and _int16(manifest):
        problems.append(Problem("not_int8", "the board is int8-only and the model computes in int16 (recipe "
                                            "int16x8); convert with recipe int8 (or qat) and io int8 for this board"))
    elif c is not None and c.int8_only and not manifest.integer.fully_integer:
        ops = manifest.integer.float_ops
        what = (f"{len(ops)} float op(s) ({named_float_ops(ops, manifest.integer.float_op_tensors, 4)})"
                if ops else "float inputs/outputs")
        problems.append(Problem("not_int8", f"the board is int8-only and the model has {what}; "
                                            f"{_convert_with(manifest, STRICT_ADVICE)}"))
    if c is not None and c.allowed_ops is not None:
        allowed = set(c.allowed_ops)
        missing = sorted({f"{o.name} v{o.version}" for o in manifest.operators if o.name not in allowed})
        if missing:
            problems.append(Problem("op_not_allowed", f"op(s) {', '.join(missing)} are not in the board's runtime "
                                                      f"(built with selective registration); rebuild it with this "
                                                      f"bundle's ops/registration.cc, or change the model"))
    if c is not None and c.max_model_bytes is not None and manifest.size > c.max_model_bytes:
        smaller = ("shrink the model (smaller or fewer layers)" if manifest.integer.fully_integer else  # int8 already
                   _convert_with(manifest, "recipe int8 (about 4x smaller)"))
        problems.append(Problem("too_large", f"the model is {manifest.size:,} bytes, over the board's limit of "
                                             f"{c.max_model_bytes:,}; {smaller}"))
    flex = [o.name for o in manifest.operators if o.kind == "select_tf"]
    if flex:
        problems.append(Problem("select_tf", f"Select-TF op(s) {', '.join(flex)} need the Flex delegate, which "
                                             f"board runtimes lack; change the model to use builtin ops"))
    level, named = _level(spec, runtime)
    have = None if micro else _version(level)
    need = _version(manifest.min_runtime_version)
    if have is not None and need is not None and need > have:
        problems.append(Problem("runtime_too_old", f"the model needs TFLite {manifest.min_runtime_version} or newer "
                                                   f"(its op versions), the board has {named}"
                                                   + (f" (TFLite {level})" if not named.startswith("TFLite") else "")
                                                   + "; upgrade the board's runtime or convert with an older "
                                                     "TensorFlow"))
    for d in (spec.delegates if spec is not None else []):
        if d.required and _int16(manifest) and d.input_types is not None and "int16" not in d.input_types:
            problems.append(Problem("delegate_int16", f"delegate {d.name} runs {'/'.join(d.input_types)} models, "
                                                      f"not int16x8 ones; convert with recipe int8 for this board"))
        if d.input_types:
            bad = [f"{t.name} ({t.dtype})" for t in manifest.inputs if t.dtype not in d.input_types]
            if bad:
                problems.append(Problem("delegate_input", f"delegate {d.name} takes {'/'.join(d.input_types)} inputs, "
                                                          f"the model has {', '.join(bad)}; convert with --io "
                                                          f"{d.input_types[0]}"))
    return problems


def _int16(manifest: Manifest) -> bool:
    """int16 activations (the 16x8 scheme); manifests older than the `activations` field say it by recipe."""
    return manifest.integer.activations == "int16" or manifest.recipe.get("name") == "int16x8"


def notes(manifest: Manifest, spec: Any) -> list[str]:
    """What will run, but not as well as it could: said by `check`, never a reason to refuse."""
    out: list[str] = []
    if not _int16(manifest):
        return out
    if spec is not None and spec.runtime == "tflite_micro":
        out.append("int16x8 on TFLite Micro: only part of its kernels have int16 versions; loading the model in "
                   "TFLite Micro (as this check does when it has the model) is what decides")
    else:
        out.append("int16x8: XNNPACK (the default CPU delegate) does not take int16 activations, so the model runs "
                   "on TFLite's built-in kernels (docs/BENCHMARKS.md compares its latency with int8)")
    for d in (spec.delegates if spec is not None else []):
        if not d.required and d.input_types is not None and "int16" not in d.input_types:
            out.append(f"delegate {d.name} takes {'/'.join(d.input_types)} models: int16x8 runs on the CPU instead")
    return out


def ensure_compatible(manifest: Manifest, board: Any, runtime: dict[str, Any] | None = None,
                      model: bytes | None = None, delegates: list[dict[str, Any]] | None = None,
                      board_delegates: list[dict[str, Any]] | None = None) -> None:
    """Raise IncompatibleError listing every problem of running the bundle on `board` (see `check`)."""
    problems = check(manifest, getattr(board, "spec", None), runtime, model, delegates, board_delegates)
    if problems:
        raise IncompatibleError(board.name, problems)
