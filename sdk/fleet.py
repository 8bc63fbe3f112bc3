"""One model on one board or many at once, and the results documents every run leaves behind.

``run_boards`` is the fork behind `edgeship bench|eval`: one board runs in the caller's
thread (a failed run raises at once), several run in parallel (bounded by ``jobs``), where
a board that fails or misses a gate is reported and the others finish. Each board's result
is written as one JSON document (docs/results.md) that carries what makes it comparable,
atomically: a reader (or a Ctrl-C) never meets half a file. An interrupted fleet run stops
every board within a fraction of a second (sdk.client.cancel_scope) instead of waiting for
each to finish. ``failure`` is the one error a set of outcomes ends with, for exit codes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from edgeship.device_agent.options import RunOptions
from edgeship.sdk.errors import Cancelled, EdgeshipError, GateError, ResultsError, TransportError, UsageError
from edgeship.sdk.extras import missing_extra
from edgeship.sdk.progress import OnPhase, Phase
from edgeship.sdk.results import GateMiss, RunResult, gate_message, gate_misses

#: A fleet board's status, as it changes: ``{"phase": ..., "text": ...}`` for a phase (sdk.progress),
#: with ``done``/``total``/``unit`` ("bytes" of ``what`` while uploading; "runs", with the run's
#: ``min_seconds`` and ``elapsed_s``, while a bench runs), and at the end the phase "done", "failed"
#: or "missed gate".
Update = Callable[[str, dict[str, Any]], None]
GateNames = Callable[[str], "str | None"]


@dataclass
class Outcome:
    board: str
    result: RunResult | None = None
    error: str | None = None  # the run failed (unreachable, incompatible, model did not run)
    gate: str | None = None  # the run worked but missed a gate
    missed: list[GateMiss] = field(default_factory=list)  # the gates it missed, to word them
    results_file: Path | None = None
    results_error: str | None = None  # the run worked but its document could not be written

    @property
    def ok(self) -> bool:
        return self.error is None and self.gate is None


def write_result(result: RunResult | Mapping[str, Any], directory: Path) -> Path:
    """Write a result document as <kind>-<board>-<model>-<utc>.json (atomically) and return its path.

    A mapping is checked as a document first (RunResult.from_json). ResultsError, naming the
    directory and the reason, when it cannot be written.
    """
    if not isinstance(result, RunResult):
        result = RunResult.from_json(dict(result))
    directory = Path(directory)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    board = re.sub(r"[^A-Za-z0-9_.-]+", "_", result.board)[:40]
    kind = re.sub(r"[^A-Za-z0-9_.-]+", "_", result.kind)[:20]
    model = re.sub(r"[^0-9a-f]+", "", result.model_sha256)[:12]
    path = directory / f"{kind}-{board}-{model}-{stamp}.json"
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    text = json.dumps(result.to_json(), indent=2, default=str) + "\n"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ResultsError(f"cannot write the result to {directory} ({reason}); the result is kept (and printed): "
                           f"give a writable directory", option="results_dir") from exc
    return path


def _settle(outcome: Outcome, result: RunResult, gates: Mapping[str, Any], results_dir: Path | None) -> Outcome:
    """A finished run's outcome: its result written (or why not), then the run's status and gates."""
    outcome.result = result
    if results_dir is not None:
        try:
            outcome.results_file = write_result(result, results_dir)
        except ResultsError as exc:
            outcome.results_error = exc.detail  # failure() says which option it is about
    failed = result.run_error()
    if failed is not None:
        outcome.error = str(failed)
    else:
        outcome.missed = gate_misses(result, **gates)
        outcome.gate = gate_message(outcome.board, outcome.missed) if outcome.missed else None
    return outcome


def run_boards(kind: str, bundle: Path, targets: list[Any], *, data: Path | None = None,
               options: RunOptions | None = None, gates: Mapping[str, Any] | None = None, accept_new_host: bool = False,
               jobs: int = 4, results_dir: Path | None = None, on_update: Update | None = None,
               upload_progress: Callable[[str, int, int], None] | None = None,
               run_progress: Callable[[dict[str, Any]], None] | None = None,
               phase: OnPhase | None = None) -> list[Outcome]:
    """Run `kind` on every target: one in this thread, where a failed run raises; several as a fleet (run_fleet).

    Each outcome has its result written to `results_dir` (or says why it was not) and its
    gates checked; ``failure(outcomes)`` is the error they end with, if any. One board reports
    through ``phase``, ``upload_progress`` and ``run_progress`` (sdk.device.bench); a fleet
    through ``on_update``, per board.
    """
    from edgeship.sdk.device import run

    if not targets:
        raise UsageError("no boards to run on")
    if len(targets) > 1:
        return run_fleet(kind, bundle, targets, data=data, options=options, gates=gates, accept_new_host=accept_new_host,
                         jobs=jobs, results_dir=results_dir, on_update=on_update)
    target = targets[0]
    result = run(kind, bundle, target, data=data, options=options, accept_new_host=accept_new_host,
                 upload_progress=upload_progress, run_progress=run_progress, phase=phase)
    return [_settle(Outcome(target.name), result, gates or {}, results_dir)]


def failure(outcomes: list[Outcome], gate_names: GateNames | None = None) -> EdgeshipError | None:
    """The one error `outcomes` end with (None: all ok); `gate_names` words each gate (the CLI gives its flags).

    One board: its run's RunError, else its missed gates (GateError, with a results file that
    could not be written), else that ResultsError. A fleet: the boards that failed
    (TransportError), else those whose results were not saved, else those that missed gates.
    """
    if len(outcomes) == 1:
        (o,) = outcomes
        run_failed = o.result.run_error() if o.result is not None else None
        if run_failed is not None:
            return run_failed
        if o.missed:
            text = gate_message(o.board, o.missed, gate_names)
            return GateError(f"{text}; and {o.results_error}" if o.results_error else text)
        return ResultsError(o.results_error, option="results_dir") if o.results_error else None
    failed = [o.board for o in outcomes if o.error]
    missed = [o.board for o in outcomes if o.gate]
    unsaved = [o for o in outcomes if o.results_error]
    also = f"; missed gates: {', '.join(missed)}" if missed else ""
    if failed:
        return TransportError(f"{len(failed)} of {len(outcomes)} boards failed: {', '.join(failed)}{also}")
    if unsaved:
        return ResultsError(f"{len(unsaved)} of {len(outcomes)} results not saved ({', '.join(o.board for o in unsaved)}): "
                            f"{unsaved[0].results_error}{also}", option="results_dir")
    if missed:
        return GateError(f"{len(missed)} of {len(outcomes)} boards missed their gates: {', '.join(missed)}")
    return None


def run_fleet(kind: str, bundle: Path, boards: list[Any], *, data: Path | None, options: RunOptions | None,
              gates: Mapping[str, Any] | None, accept_new_host: bool = False, jobs: int = 4,
              results_dir: Path | None = None, on_update: Update | None = None) -> list[Outcome]:
    """Run `kind` on every board, at most `jobs` at a time; never raises for one board's failure.

    An exception in the calling thread (KeyboardInterrupt, the CLI's SIGTERM) cancels every
    board's session; the boards' threads end within about a quarter of a second of
    talking, and the exception goes on.
    """
    from edgeship.sdk.client import cancel_scope
    from edgeship.sdk.device import run

    say = on_update or (lambda _b, _s: None)
    stop = threading.Event()

    def one(board: Any) -> Outcome:
        name = board.name
        outcome = Outcome(name)
        if stop.is_set():
            outcome.error = "cancelled"
            return outcome

        def phase(p: Phase) -> None:
            say(name, {"phase": p.name, "text": p.text})

        def uploaded(what: str, done: int, total: int) -> None:
            say(name, {"phase": "uploading", "what": what, "done": done, "total": total, "unit": "bytes"})

        def ran(p: dict[str, Any]) -> None:
            say(name, {"phase": "running", "what": kind, "done": p.get("done"), "total": p.get("runs"), "unit": "runs",
                       "min_seconds": p.get("min_seconds"), "elapsed_s": p.get("elapsed_s")})

        try:
            with cancel_scope(stop):
                result = run(kind, bundle, board, data=data, options=options, accept_new_host=accept_new_host,
                             upload_progress=uploaded, run_progress=ran, phase=phase)
            _settle(outcome, result, gates or {}, results_dir)
        except Cancelled:
            outcome.error = "cancelled"
        except EdgeshipError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a bug on one board must not stop the fleet; it is reported as that board's error
            outcome.error = f"internal error: {type(exc).__name__}: {exc}"
        say(name, {"phase": "done" if outcome.ok else ("missed gate" if outcome.gate else "failed")})
        return outcome

    return in_parallel(one, boards, jobs, stop)


T = TypeVar("T")


def in_parallel(one: Callable[[Any], T], boards: list[Any], jobs: int, stop: threading.Event) -> list[T]:
    """`one(board)` for every board, at most `jobs` at a time, in the boards' order.

    `one` runs its sessions inside ``cancel_scope(stop)``: an exception in the calling thread
    (Ctrl-C, SIGTERM) sets `stop`, so every board's session ends at its next wait and boards
    not started are skipped; the exception goes on.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = [pool.submit(one, board) for board in boards]
        return [f.result() for f in futures]
    except BaseException:
        stop.set()  # every session raises Cancelled at its next wait; boards not started are skipped
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class BoardOutcome:
    """One board's part of a command on several boards (push, check): its document, or why there is none."""

    board: str
    doc: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def push_boards(bundle: Path, boards: list[Any], *, accept_new_host: bool = False, jobs: int = 4,
                on_update: Update | None = None) -> list[BoardOutcome]:
    """Push `bundle` to every board, at most `jobs` at a time; a board that fails is reported, the others finish."""
    from edgeship.sdk.client import cancel_scope
    from edgeship.sdk.device import push

    say = on_update or (lambda _b, _s: None)
    stop = threading.Event()

    def one(board: Any) -> BoardOutcome:
        outcome = BoardOutcome(board.name)
        if stop.is_set():
            outcome.error = "cancelled"
            return outcome
        name = board.name

        def phase(p: Phase) -> None:
            say(name, {"phase": p.name, "text": p.text})

        def uploaded(what: str, done: int, total: int) -> None:
            say(name, {"phase": "uploading", "what": what, "done": done, "total": total, "unit": "bytes"})

        try:
            with cancel_scope(stop):
                outcome.doc = push(bundle, board, accept_new_host=accept_new_host, progress=uploaded, phase=phase)
        except Cancelled:
            outcome.error = "cancelled"
        except EdgeshipError as exc:
            outcome.error = str(exc)
        except ModuleNotFoundError as exc:  # paramiko for an SSH board, pyserial for a serial one: name the extra
            outcome.error = missing_extra(exc.name) or f"internal error: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug on one board must not stop the others; it is that board's error
            outcome.error = f"internal error: {type(exc).__name__}: {exc}"
        say(board.name, {"phase": "done" if outcome.ok else "failed"})
        return outcome

    return in_parallel(one, boards, jobs, stop)


def push_failure(outcomes: list[BoardOutcome]) -> EdgeshipError | None:
    """The one error a fleet push ends with (None: every board has the model)."""
    failed = [o.board for o in outcomes if o.error]
    if failed:
        return TransportError(f"{len(failed)} of {len(outcomes)} boards failed: {', '.join(failed)}")
    return None
