"""Will this bundle run on that board? Checked before any model byte is pushed.

Each problem names the op or the number and says what to do. The checks use what the
catalogue says about the board (constraints, runtime, delegates) and, once connected,
what its agent reports (the runtime's actual version).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from converters.manifest import Manifest, named_float_ops
from sdk.errors import EdgeshipError


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


def _micro_problems(model: bytes, arena: int | None) -> list[Problem]:
    """What TFLite Micro says about the model: ops it lacks, and the arena it needs."""
    from device_agent import micro

    try:
        needed = micro.arena_needed(model)
    except micro.UnsupportedOpError as exc:
        return [Problem("op_unsupported", f"TFLite Micro has no kernel for op {exc.op}; change the model or add a "
                                          f"custom kernel")]
    except micro.MicroError as exc:
        return [Problem("micro_rejected", f"TFLite Micro cannot load the model: {exc}")]
    if arena is not None and needed > arena:
        return [Problem("arena_too_small", f"the model needs a {needed:,}-byte tensor arena, the board has {arena:,}; "
                                           f"shrink the model (smaller layers, --recipe int8) or give the board more RAM")]
    return []


def check(manifest: Manifest, spec: Any, runtime_version: str | None = None, model: bytes | None = None) -> list[Problem]:
    """Problems of running `manifest`'s model on a board described by `spec` (a catalogue entry; may be None)."""
    problems: list[Problem] = []
    if spec is not None and model is not None and spec.runtime == "tflite_micro":
        problems += _micro_problems(model, spec.constraints.arena_bytes)
    c = spec.constraints if spec is not None else None
    kept = manifest.float_fallback
    if c is not None and c.int8_only and kept is not None and kept.layers:
        layers = ", ".join(name.split(";")[0] for name in kept.layers[:4]) + (" ..." if len(kept.layers) > 4 else "")
        problems.append(Problem("not_int8", f"the board is int8-only and the model keeps {len(kept.layers)} layer(s) "
                                            f"in float (--keep-float {kept.requested}: {layers}); convert without "
                                            f"--keep-float, with --recipe int8 --io int8, for this board"))
    elif c is not None and c.int8_only and _int16(manifest):
        problems.append(Problem("not_int8", "the board is int8-only and the model computes in int16 (--recipe "
                                            "int16x8); convert with --recipe int8 (or qat) and --io int8 for this board"))
    elif c is not None and c.int8_only and not manifest.integer.fully_integer:
        ops = manifest.integer.float_ops
        what = (f"{len(ops)} float op(s) ({named_float_ops(ops, manifest.integer.float_op_tensors, 4)})"
                if ops else "float inputs/outputs")
        problems.append(Problem("not_int8", f"the board is int8-only and the model has {what}; "
                                            f"convert with --recipe int8 --io int8 --int8-strict (or qat) to see "
                                            f"which layers stop a fully integer model, and change them"))
    if c is not None and c.allowed_ops is not None:
        allowed = set(c.allowed_ops)
        missing = sorted({f"{o.name} v{o.version}" for o in manifest.operators if o.name not in allowed})
        if missing:
            problems.append(Problem("op_not_allowed", f"op(s) {', '.join(missing)} are not in the board's runtime "
                                                      f"(built with selective registration); rebuild it with this "
                                                      f"bundle's ops/registration.cc, or change the model"))
    if c is not None and c.max_model_bytes is not None and manifest.size > c.max_model_bytes:
        problems.append(Problem("too_large", f"the model is {manifest.size:,} bytes, over the board's limit of "
                                             f"{c.max_model_bytes:,}; try --recipe int8 (about 4x smaller)"))
    flex = [o.name for o in manifest.operators if o.kind == "select_tf"]
    if flex:
        problems.append(Problem("select_tf", f"Select-TF op(s) {', '.join(flex)} need the Flex delegate, which "
                                             f"board runtimes lack; change the model to use builtin ops"))
    micro = spec is not None and spec.runtime == "tflite_micro"  # TFLM matches ops by code, not version
    have = None if micro else _version(runtime_version or (spec.runtime_version if spec is not None else None))
    need = _version(manifest.min_runtime_version)
    if have is not None and need is not None and need > have:
        problems.append(Problem("runtime_too_old", f"the model needs TFLite {manifest.min_runtime_version} or newer "
                                                   f"(its op versions), the board has {'.'.join(map(str, have))}; "
                                                   f"upgrade the board's runtime or convert with an older TensorFlow"))
    for d in (spec.delegates if spec is not None else []):
        if d.required and _int16(manifest) and d.input_types is not None and "int16" not in d.input_types:
            problems.append(Problem("delegate_int16", f"delegate {d.name} runs {'/'.join(d.input_types)} models, "
                                                      f"not int16x8 ones; convert with --recipe int8 for this board"))
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


def ensure_compatible(manifest: Manifest, board: Any, runtime_version: str | None = None,
                      model: bytes | None = None) -> None:
    problems = check(manifest, getattr(board, "spec", None), runtime_version, model)
    if problems:
        raise IncompatibleError(board.name, problems)
