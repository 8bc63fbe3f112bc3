"""The shape of every reply the host reads from a board, checked before anything uses it.

The agent validates what the host sends; this is the other direction: a board (a buggy or
hostile agent, a crossed session, a line that delivers someone else's frames) must not be
able to crash the host (a KeyError, a TypeError), make it loop, or put absurd numbers in a
report. Each request has a table of the reply ops it allows and, for each, the fields the
host reads with their types and ranges. A reply that breaks them raises
BoardProtocolError naming the request and the field; strings are clipped (a board's
message cannot flood a terminal or a results file) and lists are bounded.

A field the table does not name is kept (newer agents add fields) after the same generic
check: finite numbers, bounded strings, lists and nesting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from edgeship.sdk.errors import BoardProtocolError

MAX_TEXT = 2000  # characters of any board string the host keeps; longer ones are clipped
MAX_DEPTH = 8  # nesting of fields the table does not name


class Invalid(Exception):
    """A value that breaks its shape: `path` names the field (``result.latency_ms.p90``), `problem` says how."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _range(lo: float | None, hi: float | None) -> str:
    if hi is None:
        return f"below the least allowed, {lo}"
    if lo is None:
        return f"above the most allowed, {hi}"
    return f"outside {lo}..{hi}"


Check = Callable[[Any, str], Any]


def text(limit: int = MAX_TEXT) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise Invalid(path, f"is {_show(value)}, not a string")
        return value if len(value) <= limit else value[: limit - 1] + "…"

    return check


def integer(lo: int | None = 0, hi: int | None = None) -> Check:
    def check(value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(path, f"is {_show(value)}, not an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(path, f"is {value}, {_range(lo, hi)}")
        return value

    return check


def number(lo: float | None = 0.0, hi: float | None = None) -> Check:
    def check(value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(path, f"is {_show(value)}, not a number")
        if not math.isfinite(value):
            raise Invalid(path, f"is {value}, not a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(path, f"is {value}, {_range(lo, hi)}")
        return value

    return check


def boolean(value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        raise Invalid(path, f"is {_show(value)}, not true or false")
    return value


def optional(inner: Check) -> Check:
    def check(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)

    return check


def either(*options: Check) -> Check:
    def check(value: Any, path: str) -> Any:
        for option in options:
            try:
                return option(value, path)
            except Invalid:
                continue
        raise Invalid(path, f"is {_show(value)}, which fits none of its forms")

    return check


def items(inner: Check, max_len: int) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise Invalid(path, f"is {_show(value)}, not a list")
        if len(value) > max_len:
            raise Invalid(path, f"has {len(value):,} entries, more than the {max_len:,} an agent sends")
        return [inner(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return check


def anything(value: Any, path: str, depth: int = 0) -> Any:
    """A field the table does not name: JSON of bounded depth, finite numbers, clipped strings."""
    if depth > MAX_DEPTH:
        raise Invalid(path, f"nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return number(None)(value, path)
    if isinstance(value, str):
        return text()(value, path)
    if isinstance(value, list):
        if len(value) > 100_000:
            raise Invalid(path, f"has {len(value):,} entries")
        return [anything(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k)[:100]: anything(v, f"{path}.{str(k)[:40]}", depth + 1) for k, v in value.items()}
    raise Invalid(path, f"is {_show(value)}, not JSON")


def obj(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A JSON object: named fields checked (absent is allowed unless required), others kept after `anything`."""

    def check(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise Invalid(path, f"is {_show(value)}, not an object")
        for name in required:
            if name not in value:
                raise Invalid(f"{path}.{name}" if path else name, "is missing")
        out = {}
        for key, v in value.items():
            where = f"{path}.{key}" if path else str(key)
            out[key] = fields[key](v, where) if key in fields else anything(v, where, 1)
        return out

    return check


# -- the replies -------------------------------------------------------------------------------

_name = optional(text(200))
_ms = number(0.0)  # a duration in milliseconds: finite, not negative
_fraction = number(0.0, 1.0)

HELLO = obj({
    "agent_version": _name, "protocol": optional(integer()), "python": _name,
    "numpy": optional(obj({"version": _name, "error": optional(text())})),
    "runtime": optional(obj({"name": _name, "version": _name, "tflite_level": _name,
                             "custom_ops": optional(items(text(200), 4096)), "error": optional(text())})),
    "delegates": optional(items(either(text(200), obj({"name": _name})), 256)),
    "cpu": optional(obj({"arch": _name, "cores": optional(integer(0, 1 << 20)), "model": _name})),
    "memory": optional(obj({"total_bytes": integer(), "available_bytes": integer()})),
    "arena_size": optional(integer()),
    "store": optional(obj({"quota": optional(integer()), "used": optional(integer())})),
    "limits": optional(obj({"max_frame": optional(integer(1024, 1 << 30)), "max_blob": optional(integer()),
                            "run_timeout": optional(number(0.0))})),
    "pid": optional(integer()), "time_ns": optional(integer()),
})
HAS = obj({"installed": boolean, "offset": integer()}, required=("installed", "offset"))
PUT_BEGIN = HAS
PUT = obj({"offset": integer()}, required=("offset",))
PUT_END = obj({"size": optional(integer())})
PROGRESS = obj({"done": optional(integer()), "runs": optional(integer()), "min_seconds": optional(number(0.0)),
                "elapsed_s": optional(number(0.0))})
_LATENCY_KEYS = ("count", "mean", "std", "min", "p50", "p90", "p95", "p99", "max")
_LATENCY = obj({k: (integer() if k == "count" else _ms) for k in _LATENCY_KEYS}, required=_LATENCY_KEYS)
_AGREEMENT_KEYS = ("argmax_agreement", "rmse", "max_abs_error", "cosine_mean")
RESULT = obj({
    "status": text(64), "message": optional(text()), "kind": _name, "model_sha256": _name,
    "runtime": optional(obj({"name": _name, "version": _name})),
    "threads": optional(integer(0, 1 << 16)),
    "delegate": optional(obj({"applied": items(text(200), 64), "delegate_kernels": integer(), "nodes": integer(),
                              "cpu_ops": optional(items(text(200), 4096)), "notes": optional(items(text(), 64))})),
    "load_ms": _ms, "first_inference_ms": _ms,
    "warmup": obj({"count": integer(), "total_ms": _ms}, required=("count",)),
    "latency_ms": _LATENCY, "latency_samples_ms": items(_ms, 10_000),
    "inputs": _name,
    "generated_inputs": optional(items(obj({"name": _name, "dtype": _name, "shape": items(integer(), 16),
                                            "values": _name}), 1024)),
    "peak_rss_kib": optional(integer()),
    "arena": optional(obj({"size": optional(integer()), "used": optional(integer())})),
    "samples": integer(), "output": _name, "state": _name, "accuracy": optional(_fraction),
    "agreement": optional(either(
        obj({"argmax_agreement": _fraction, "rmse": number(0.0), "max_abs_error": number(0.0),
             "cosine_mean": number(-1.0, 1.0), "cosine_min": number(-1.0, 1.0)}, required=_AGREEMENT_KEYS),
        obj({"error": text()}, required=("error",)))),
    "confusion": optional(items(items(integer(), 256), 256)),
    "missing_op": _name, "op": _name, "version": optional(integer()),  # `op`: agents before missing_op
}, required=("status",))
ERROR = obj({"code": text(64), "message": text()})
LIST = obj({"blobs": items(obj({"sha256": text(64), "size": integer()}, required=("sha256", "size")), 1 << 20),
            "next": optional(text(64))},
           required=("blobs",))
DELETE = obj({"deleted": boolean}, required=("deleted",))
ANY_OK = obj({})

# request op -> {reply op it allows: the reply's shape}
REPLIES: dict[str, dict[str, Check]] = {
    "hello": {"hello": HELLO}, "has": {"ok": HAS}, "put_begin": {"ok": PUT_BEGIN}, "put": {"ok": PUT},
    "put_end": {"ok": PUT_END}, "run": {"progress": PROGRESS, "result": RESULT}, "list": {"ok": LIST},
    "delete": {"ok": DELETE}, "bye": {"ok": ANY_OK},
}

_REQUIRED_WHEN_OK = {"bench": ("first_inference_ms", "warmup", "latency_ms"), "eval": ("samples", "latency_ms")}


def check_reply(request: str, header: dict[str, Any]) -> dict[str, Any]:
    """The reply's header, checked against what `request` allows (strings clipped); BoardProtocolError if it breaks it."""
    reply_op = str(header.get("op", ""))[:40]
    allowed = REPLIES.get(request)
    if allowed is None:
        return dict(header)
    shape = allowed.get(reply_op)
    if shape is None and request == "run" and reply_op not in allowed and isinstance(header.get("status"), str):
        # A result whose worker document has an `op` of its own (op_version, unsupported_op name the model's op):
        # the agent builds {"op": "result", **result}, so that field replaces the message's op. Still a result.
        shape = RESULT
    if shape is None:
        raise BoardProtocolError(
            f"the board answered `{request}` with {reply_op!r} (expected {' or '.join(map(repr, allowed))}); "
            f"{_ADVICE}")
    body = {k: v for k, v in header.items() if k != "op"}
    try:
        out = dict(shape(body, ""))
        if reply_op == "result" and out.get("status") == "ok":
            for key in _REQUIRED_WHEN_OK.get(str(out.get("kind")), ()):
                if key not in out:
                    raise Invalid(key, f"is missing from an ok {out.get('kind')} result")
    except Invalid as exc:
        raise BoardProtocolError(f"the board sent a malformed reply to `{request}`: {exc}; {_ADVICE}") from None
    out["op"] = reply_op
    return out


def check_error(header: dict[str, Any]) -> tuple[str, str]:
    """(code, message) of an error frame, clipped; a malformed one is still an error, with what could be read."""
    code, message = header.get("code"), header.get("message")
    code = code[:64] if isinstance(code, str) else "error"
    message = message if isinstance(message, str) else f"agent error (no readable message, code {code!r})"
    return code, message if len(message) <= MAX_TEXT else message[: MAX_TEXT - 1] + "…"


_ADVICE = ("the board's agent is faulty, of another version, or not edgeship's; reinstall it (an ssh:// board "
           "gets it placed again on connect) and check what else answers on that line")
