"""The JSON documents `edgeship ... --json` prints, as pydantic models: the one description of each shape.

Every command that produces a result prints one JSON document with ``--json``; ``SCHEMAS`` names
them (a command's name, ``boards-ping`` for a subcommand, and ``result`` for the result files of
bench, eval and debug-quant, docs/results.md). ``edgeship schema NAME`` prints a name's JSON Schema,
and tests/test_json_shapes.py validates each command's real output against its model, so the
documentation and the behaviour cannot drift.

Commands that take boards (``push``, ``check``, ``bench``, ``eval``, ``boards ping``, ``emulate up``
and ``down``) print, for one board as for several, a list of per-board entries
``{board, ok, error, ..., result}``: ``board_entry`` builds one, for every such command, so the
shape lives here once. No protocol field (a frame's ``op``) is part of any of these documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter

from edgeship.converters.manifest import Manifest
from edgeship.sdk.catalogue import BoardSpec

__all__ = ["SCHEMAS", "board_entry", "json_schema", "report_document", "run_entry", "validate"]


def board_entry(board: str, result: Any, *, error: str | None = None, ok: bool | None = None,
                **extra: Any) -> dict[str, Any]:
    """One board's entry of a --json list: ``{board, ok, error, **extra, result}``.

    `ok` defaults to "no error"; `error` is why the board did not do what was asked (None: it did);
    `result` is the command's own document for that board (None when there is none).
    """
    return {"board": board, "ok": error is None if ok is None else ok, "error": error, **extra, "result": result}


def run_entry(outcome: Any, gate_names: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """A bench or eval outcome (sdk.fleet.Outcome) as its --json entry: one board's run, its gate and results file.

    `gate_names` words each missed gate (the CLI gives its flags, as its error line does).
    """
    from edgeship.sdk.results import gate_message

    gate = gate_message(outcome.board, outcome.missed, gate_names) if outcome.missed else outcome.gate
    return board_entry(outcome.board, outcome.result.to_json() if outcome.result is not None else None,
                       error=outcome.error, ok=outcome.ok, gate=gate,
                       results_file=str(outcome.results_file) if outcome.results_file else None,
                       results_error=outcome.results_error)


class _Doc(BaseModel):
    """A document whose fields are all named here (a field not listed is drift: validation fails)."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A part of a document that a board or a model fills in: the fields named are checked, others allowed."""

    model_config = ConfigDict(extra="allow")


# -- what a board's agent says about itself ----------------------------------------------------------

class Runtime(_Open):
    name: Optional[str] = None
    version: Optional[str] = None
    tflite_level: Optional[str] = None
    custom_ops: Optional[list[str]] = None
    error: Optional[str] = None


class Cpu(_Open):
    arch: Optional[str] = None
    cores: Optional[int] = None
    model: Optional[str] = None


class Hello(_Doc):
    """What a board's agent reports when pinged (its hello, without the protocol's fields), and the round trip."""

    agent_version: Optional[str] = None
    protocol: Optional[int] = None
    python: Optional[str] = None
    numpy: Optional[dict[str, Any]] = Field(None, description="version, or null and error")
    runtime: Optional[Runtime] = None
    delegates: Optional[list[Any]] = Field(None, description="the delegates a run can use: xnnpack, then allowed ones that load")
    external_delegates: Optional[list[dict[str, Any]]] = Field(None, description="name, loaded, error")
    cpu: Optional[Cpu] = None
    memory: Optional[dict[str, int]] = None
    arena_size: Optional[int] = None
    store: Optional[dict[str, Any]] = Field(None, description="quota, used")
    limits: Optional[dict[str, Any]] = Field(None, description="max_frame, max_blob, run_timeout")
    pid: Optional[int] = None
    time_ns: Optional[int] = None
    rtt_ms: Optional[float] = Field(None, description="the hello's round trip, ms")


class Agent(_Doc):
    """The board's agent, as a result or push document records it."""

    version: Optional[str] = None
    runtime: Optional[Runtime] = None
    python: Optional[str] = None
    cpu: Optional[Cpu] = None
    delegates: Optional[list[Any]] = None
    rtt_ms: Optional[float] = None


class Upload(_Doc):
    """One blob's upload (model or data)."""

    sha256: str
    size: int
    encoding: Literal["raw", "zlib"]
    wire_size: int
    sent_bytes: int
    resumed_from: int
    skipped: bool = Field(description="the board had it already: nothing sent")
    seconds: float


# -- the result document (docs/results.md) -----------------------------------------------------------

class Latency(_Doc):
    count: int
    mean: Optional[float]
    std: Optional[float]
    min: Optional[float]
    p50: Optional[float]
    p90: Optional[float]
    p95: Optional[float]
    p99: Optional[float]
    max: Optional[float]


class AgentResult(_Open):
    """The agent's result (bench, eval), or the quantization debugger's (debug-quant); docs/results.md lists every field."""

    status: str = Field(description="ok, invalid, crashed, timeout, out_of_memory, bad_dataset, delegate_failed, no_runtime")
    message: Optional[str] = None
    runtime: Optional[Runtime] = None
    threads: Optional[int] = None
    delegate: Optional[dict[str, Any]] = None
    load_ms: Optional[float] = None
    latency_ms: Optional[Latency] = None
    latency_samples_ms: Optional[list[Optional[float]]] = None
    peak_rss_kib: Optional[int] = None
    accuracy: Optional[float] = Field(None, description="top-1, a fraction")
    agreement: Optional[dict[str, Any]] = None


class ResultDocument(_Doc):
    """One result document (docs/results.md): what bench, eval and debug-quant write and print."""

    schema_version: Literal[1]
    kind: Literal["bench", "eval", "debug-quant"]
    board: str
    agent: Optional[Agent] = Field(None, description="bench/eval only")
    created_utc: str
    model: Optional[str] = Field(None, description="debug-quant only: the source model's path")
    bundle: Optional[str] = Field(None, description="bench/eval only")
    model_sha256: str
    model_size: Optional[int] = None
    recipe: Optional[str] = None
    io: Optional[str] = None
    dataset_sha256: Optional[str] = Field(None, description="bench/eval only")
    options: dict[str, Any]
    data_file_sha256: Optional[str] = None
    upload: Optional[dict[str, Optional[Upload]]] = Field(None, description="bench/eval only: model and data")
    result: AgentResult
    host: Optional[dict[str, Any]] = Field(None, description="eval: the host's accuracy and runtime on the same data")


# -- per-board entries --------------------------------------------------------------------------------

class _Entry(_Doc):
    board: str
    ok: bool
    error: Optional[str] = Field(description="why the board did not do what was asked; null when it did")


class PingEntry(_Entry):
    """`boards ping`: ok when the board answers and can run models; error says why not."""

    result: Optional[Hello] = Field(description="null when the board could not be reached")


class Push(_Doc):
    schema_version: Literal[1]
    board: str
    agent: Agent
    model_sha256: str
    upload: Upload


class PushEntry(_Entry):
    result: Optional[Push]


class Problem(_Doc):
    code: str
    message: str


class Arena(_Doc):
    needed: int = Field(description="bytes the model allocates in the TFLite Micro arena")
    size: int = Field(description="the board's arena")


class Check(_Doc):
    compatible: bool
    custom_ops: list[str]
    arena: Optional[Arena] = Field(description="TFLite Micro boards; else null")
    problems: list[Problem]
    notes: list[str]


class CheckEntry(_Entry):
    """`check`: ok when the board can run the bundle; error is the one line naming the problems."""

    result: Check


class RunEntry(_Entry):
    """`bench`, `eval`: one board's run; error: the run failed; gate: it ran but missed a gate."""

    gate: Optional[str]
    results_file: Optional[str] = Field(description="where the result document was written")
    results_error: Optional[str] = Field(description="why it could not be written")
    result: Optional[ResultDocument] = Field(description="null when the run could not happen")


class EmulateUpEntry(_Entry):
    result: Optional[dict[str, Any]] = Field(description="the running board's pid and how to reach it")


class Stopped(_Doc):
    was_running: bool


class EmulateDownEntry(_Entry):
    result: Stopped


# -- host-side documents -------------------------------------------------------------------------------

class Bundle(_Doc):
    """`convert`, `bundle`: the bundle written and its manifest (docs/manifest.md)."""

    bundle: str
    manifest: Manifest


class _Inspected(_Open):
    path: str


class InspectTflite(_Inspected):
    kind: Literal["tflite"]
    sha256: str
    size: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    operators: list[dict[str, Any]]


class InspectSavedModel(_Inspected):
    kind: Literal["savedmodel"]


class InspectKeras(_Inspected):
    kind: Literal["keras"]


class InspectBundle(_Doc):
    """`inspect BUNDLE_DIR`: the bundle's manifest, and its model as `inspect` of the .tflite shows it."""

    kind: Literal["bundle"]
    path: str
    manifest: Manifest
    model: InspectTflite


class Inspect(RootModel[Union[InspectTflite, InspectSavedModel, InspectKeras, InspectBundle]]):
    """`inspect`: what the file holds; `kind` says which shape (tflite, savedmodel, keras, bundle)."""

    root: Union[InspectTflite, InspectSavedModel, InspectKeras, InspectBundle] = Field(discriminator="kind")


class OpRange(_Doc):
    name: str
    min_version: int
    max_version: int
    nodes: int


class Ops(_Doc):
    schema_version: int
    models: list[dict[str, str]] = Field(description="file, sha256")
    builtin: list[OpRange]
    custom: list[OpRange]
    select_tf: list[OpRange]
    micro_unsupported: list[str]


class HostEval(_Doc):
    """`eval-host`: the host interpreter's accuracy and latency."""

    model: str
    sha256: str
    data: str
    samples: int
    output: str
    state: str
    accuracy: Optional[float]
    runtime: str
    threads: Optional[int]
    latency_ms: Latency


class ListedBoard(BoardSpec):
    source: str = Field(description="the file the board comes from")


class ShownBoard(BoardSpec):
    name: str
    source: str


class BoardAdded(_Doc):
    board: str
    path: str = Field(description="the boards file written")
    comments_kept: bool


class Setup(_Open):
    """`boards setup`: the probe, the steps and what changed (SSH), or the steps and unit (serial); docs/cli.md."""

    board: str
    transport: str
    dry_run: Optional[bool] = None


class ReportRow(_Doc):
    file: str
    kind: str
    board: str
    recipe: Optional[str]
    io: Optional[str]
    model_sha256: str
    model_size: Optional[int]
    created_utc: str
    status: str
    runtime: str
    accuracy: Optional[float]
    host_accuracy: Optional[float]
    argmax_agreement: Optional[float]
    latency_ms: dict[str, Optional[float]] = Field(description="p50, p90, p99")


class Report(_Doc):
    """`report`: the results compared, the flags raised, and the files written."""

    results: list[ReportRow]
    flags: list[str]
    html: Optional[str]
    markdown: Optional[str]


class AgentBuild(_Doc):
    path: str
    size: int
    sha256: str
    command: str = Field(description="how to run it on a board")


class EmuPiSetup(_Doc):
    root: str
    provisioned: bool
    download_bytes: int
    root_bytes: int
    seconds: float
    report: list[str]


class EmulateSetup(_Doc):
    emu_pi: EmuPiSetup = Field(alias="emu-pi")
    emu_mcu: str = Field(alias="emu-mcu")
    emu_serial: str = Field(alias="emu-serial")


class EmulatorState(_Open):
    pid: int


SCHEMAS: dict[str, Any] = {
    "result": ResultDocument,
    "convert": Bundle,
    "bundle": Bundle,
    "inspect": Inspect,
    "ops": Ops,
    "eval-host": HostEval,
    "debug-quant": ResultDocument,
    "push": list[PushEntry],
    "check": list[CheckEntry],
    "bench": list[RunEntry],
    "eval": list[RunEntry],
    "report": Report,
    "boards-list": dict[str, ListedBoard],
    "boards-show": ShownBoard,
    "boards-add": BoardAdded,
    "boards-ping": list[PingEntry],
    "boards-setup": Setup,
    "agent-build": AgentBuild,
    "emulate-setup": EmulateSetup,
    "emulate-up": list[EmulateUpEntry],
    "emulate-down": list[EmulateDownEntry],
    "emulate-status": dict[str, Optional[EmulatorState]],
}


def _adapter(name: str) -> TypeAdapter[Any]:
    from edgeship.sdk.errors import UsageError

    if name not in SCHEMAS:
        raise UsageError(f"unknown schema {name!r}; the schemas are {', '.join(SCHEMAS)}")
    return TypeAdapter(SCHEMAS[name])


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the document `name` (a key of SCHEMAS), titled ``edgeship NAME``."""
    schema = _adapter(name).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": f"edgeship {name}"}


def validate(name: str, document: Any) -> Any:
    """`document` checked against the model of `name`; pydantic's ValidationError names the field that breaks it."""
    return _adapter(name).validate_python(document)


def report_document(report: Any, *, html: Any = None, markdown: Any = None) -> dict[str, Any]:
    """`report --json`: one row per result compared (sdk.report.Report), its flags, the files written."""
    rows = []
    for row in report.rows:
        run = row.run
        rows.append({"file": str(row.path), "kind": run.kind, "board": run.board, "recipe": run.recipe, "io": run.io,
                     "model_sha256": run.model_sha256, "model_size": run.model_size, "created_utc": run.created_utc,
                     "status": run.status, "runtime": run.runtime, "accuracy": run.accuracy,
                     "host_accuracy": run.host_accuracy, "argmax_agreement": run.argmax_agreement,
                     "latency_ms": {stat: run.latency(stat) for stat in ("p50", "p90", "p99")}})
    return {"results": rows, "flags": list(report.flags), "html": str(html) if html is not None else None,
            "markdown": str(markdown) if markdown is not None else None}
