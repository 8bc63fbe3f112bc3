"""One result document (docs/results.md): frozen, versioned, validated when it is read back.

A ``RunResult`` is what a bench or eval on a board (or `debug-quant` on the host) leaves
behind: the agent's result plus what makes it comparable with another (board, agent,
runtime, options, model and data hashes). ``to_json()`` is the document as written;
``from_json()`` reads one back and raises an error naming the file and the first field that
breaks the schema, so `report` never meets a half-understood document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeship.device_agent.options import RESULT_SCHEMA_VERSION
from edgeship.device_agent.protocol import clip
from edgeship.sdk import replies
from edgeship.sdk.errors import RunError, UsageError

__all__ = ["DEBUG_KIND", "DEVICE_KINDS", "KINDS", "RESULT_SCHEMA_VERSION", "GateMiss", "RunResult", "gate_message",
           "gate_misses"]

DEVICE_KINDS = ("bench", "eval")  # run on a board by its agent
DEBUG_KIND = "debug-quant"  # the quantization debugger, on the host (converters/quantdebug.py)
KINDS = (*DEVICE_KINDS, DEBUG_KIND)

#: Fields only a board's run has (a debug-quant document has `model`, the source model's path, instead).
_DEVICE_FIELDS = ("agent", "bundle", "dataset_sha256", "upload")
_DEBUG_FIELDS = ("model",)


def utc_now() -> str:
    """The time a result is made, as documents carry it (ISO 8601, seconds, UTC)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunResult:
    """A result document; field names and meanings are docs/results.md's (a promise to every reader)."""

    kind: str  # bench, eval or debug-quant
    board: str
    model_sha256: str
    result: dict[str, Any]  # the agent's result (status, runtime, latency_ms, accuracy, ...)
    options: dict[str, Any] = field(default_factory=dict)  # the run options sent
    model_size: int | None = None
    recipe: str | None = None
    io: str | None = None
    data_file_sha256: str | None = None
    agent: dict[str, Any] | None = None  # bench/eval: the board's agent (version, runtime, python, cpu, ...)
    bundle: str | None = None  # bench/eval
    dataset_sha256: str | None = None  # bench/eval: the data uploaded with the model
    upload: dict[str, Any] | None = None  # bench/eval: model and data uploads
    host: dict[str, Any] | None = None  # eval: the host's accuracy and runtime on the same data
    model: str | None = None  # debug-quant: the source model's path
    created_utc: str = field(default_factory=utc_now)
    schema_version: int = RESULT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        # The agent's result arrives as a `result` frame; the frame's `op` is the protocol's, not the result's.
        object.__setattr__(self, "result", agent_result(self.result))

    # -- the document -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The document as written (and as ``--json`` prints it): the fields its kind has, in docs/results.md's order."""
        out: dict[str, Any] = {}
        for name in _ORDER:
            value = getattr(self, name)
            if name in _DEVICE_FIELDS and self.kind not in DEVICE_KINDS:
                continue
            if name in _DEBUG_FIELDS and self.kind != DEBUG_KIND:
                continue
            if name == "host" and value is None:
                continue
            out[name] = value
        return out

    @classmethod
    def from_json(cls, doc: Any, source: str | Path = "result document") -> RunResult:
        """A document read back, checked against the schema; UsageError naming `source` and the bad field if it breaks it."""
        try:
            problem = _problem(doc)
        except replies.Invalid as exc:
            problem = f"field {exc.path!r} {exc.problem}"
        if problem:
            raise UsageError(f"{source}: not an edgeship result document of schema_version {RESULT_SCHEMA_VERSION}: "
                             f"{problem}")
        return cls(**{name: doc.get(name) for name in _ORDER if name in doc})

    # -- typed reading --------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.result.get("status"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy, a fraction (eval, debug-quant), or None."""
        return self.result.get("accuracy")

    @property
    def argmax_agreement(self) -> float | None:
        """How often the top-1 matches the reference's (eval: the host's), a fraction, or None."""
        return (self.result.get("agreement") or {}).get("argmax_agreement")

    @property
    def host_accuracy(self) -> float | None:
        return (self.host or {}).get("accuracy")

    def latency(self, stat: str) -> float | None:
        """One statistic of the steady-state latency in ms (p50, p90, mean, ...), or None."""
        return (self.result.get("latency_ms") or {}).get(stat)

    @property
    def runtime(self) -> str:
        """The runtime that ran the model, as "name version"."""
        rt = self.result.get("runtime") or {}
        return f"{rt.get('name')} {rt.get('version')}"

    @property
    def delegates_applied(self) -> list[str]:
        return list((self.result.get("delegate") or {}).get("applied") or [])

    def run_error(self) -> RunError | None:
        """The RunError a result that is not ok stands for (None when it is ok)."""
        if self.ok:
            return None
        return RunError(self.status, f"the run failed on {self.board}: {self.status}: {self.result.get('message', '')}")


def agent_result(reply: dict[str, Any]) -> dict[str, Any]:
    """The agent's run result as a document holds it: without the reply frame's `op` (docs/protocol.md).

    An agent from before `missing_op` named a model's missing op in `op`, which replaced the frame's
    (sdk/replies.py); that name is kept, as `missing_op`.
    """
    if "op" not in reply:
        return reply
    out = {k: v for k, v in reply.items() if k != "op"}
    if reply["op"] != "result" and "missing_op" not in out:
        out["missing_op"] = reply["op"]
    return out


@dataclass(frozen=True)
class GateMiss:
    """One CI gate a result missed: `option` is check_gates' parameter; `words` puts a name (a CLI flag) in its place."""

    option: str  # min_accuracy, max_p90_ms or min_agreement
    template: str  # what was measured against the gate, with {gate} where the gate's name goes

    def words(self, name: str | None = None) -> str:
        return self.template.format(gate=name or self.option)


def gate_misses(result: RunResult, *, min_accuracy: float | None = None, max_p90_ms: float | None = None,
                min_agreement: float | None = None) -> list[GateMiss]:
    """Every gate an ok result missed (accuracy and agreement gates in %, latency in ms)."""
    missed = []
    if min_accuracy is not None:
        acc = result.accuracy
        if acc is None or acc * 100 < min_accuracy:
            shown = "n/a" if acc is None else f"{acc * 100:.2f}%"
            missed.append(GateMiss("min_accuracy", f"accuracy {shown} < {{gate}} {min_accuracy}%"))
    if max_p90_ms is not None:
        p90 = result.latency("p90")
        if p90 is None or p90 > max_p90_ms:
            missed.append(GateMiss("max_p90_ms", f"p90 latency {p90:.3f} ms > {{gate}} {max_p90_ms}" if p90 is not None
                                   else "no latency"))
    if min_agreement is not None:
        agr = result.argmax_agreement
        if agr is None or agr * 100 < min_agreement:
            shown = "n/a" if agr is None else f"{agr * 100:.2f}%"
            missed.append(GateMiss("min_agreement", f"argmax agreement {shown} < {{gate}} {min_agreement}%"))
    return missed


def gate_message(board: str, missed: list[GateMiss], name: Callable[[str], str | None] | None = None) -> str:
    """One sentence for a board's missed gates; `name` words each gate (the CLI gives its flags)."""
    return f"{board} missed its gates: " + "; ".join(m.words(name(m.option) if name else None) for m in missed)


_ORDER = ("schema_version", "kind", "board", "agent", "created_utc", "model", "bundle", "model_sha256", "model_size",
          "recipe", "io", "dataset_sha256", "options", "data_file_sha256", "upload", "result", "host")

_text = replies.optional(replies.text())
_object = replies.optional(replies.obj({}))
_COMMON = {
    "kind": replies.text(64), "board": replies.text(200), "created_utc": replies.text(64),
    "model_sha256": replies.text(200), "model_size": replies.optional(replies.integer()), "recipe": _text, "io": _text,
    "data_file_sha256": _text, "options": replies.obj({}), "result": replies.obj({"status": replies.text(64)}, ("status",)),
}
_SHAPES = {
    "bench": replies.obj({**_COMMON, "agent": _object, "bundle": _text, "dataset_sha256": _text, "upload": _object,
                          "host": _object, "result": replies.RESULT}, ("kind", "board", "created_utc", "model_sha256",
                                                                        "options", "result", *_DEVICE_FIELDS)),
    DEBUG_KIND: replies.obj({**_COMMON, "model": _text}, ("kind", "board", "created_utc", "model_sha256", "options",
                                                          "result", "model")),
}
_SHAPES["eval"] = _SHAPES["bench"]


def _problem(doc: Any) -> str | None:
    """What makes `doc` no result document this edgeship reads, or None (replies.Invalid for a field's shape)."""
    if not isinstance(doc, dict):
        return f"it is a JSON {type(doc).__name__}, not an object"
    if "schema_version" not in doc:
        return "field 'schema_version' is missing"
    version = doc["schema_version"]
    if isinstance(version, bool) or version != RESULT_SCHEMA_VERSION:
        return f"field 'schema_version' is {version!r}; this edgeship reads version {RESULT_SCHEMA_VERSION}"
    kind = doc.get("kind")
    if kind not in KINDS:
        return f"field 'kind' is {clip(kind, 40)}, not one of {', '.join(KINDS)}"
    unknown = sorted(str(k) for k in doc if k not in _ORDER)
    if unknown:
        return f"field {unknown[0]!r} is not in the schema (docs/results.md)"
    _SHAPES[kind]({k: v for k, v in doc.items() if k != "schema_version"}, "")
    return None
