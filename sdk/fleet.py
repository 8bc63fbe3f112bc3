"""One model on many boards at once, and the results documents every run leaves behind.

Boards run in parallel (bounded by ``jobs``); a board that fails or misses a gate is
reported and the others finish. Each board's result is written as one JSON document
(docs/results.md) that carries what makes it comparable, atomically: a reader (or a
Ctrl-C) never meets half a file. An interrupted fleet run stops every board within a
fraction of a second (sdk.client.cancel_scope) instead of waiting for each to finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeship.sdk.errors import Cancelled, EdgeshipError, GateError, ResultsError

Update = Callable[[str, dict[str, Any]], None]


@dataclass
class Outcome:
    board: str
    doc: dict[str, Any] | None = None
    error: str | None = None  # the run failed (unreachable, incompatible, model did not run)
    gate: str | None = None  # the run worked but missed a gate
    results_file: Path | None = None
    results_error: str | None = None  # the run worked but its document could not be written

    @property
    def ok(self) -> bool:
        return self.error is None and self.gate is None


def write_result(doc: dict[str, Any], directory: Path) -> Path:
    """Write a result document as <kind>-<board>-<model>-<utc>.json (atomically) and return its path.

    ResultsError, naming the directory and the reason, when it cannot be written.
    """
    directory = Path(directory)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    board = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(doc.get("board", "board")))[:40]
    kind = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(doc.get("kind", "run")))[:20]
    model = re.sub(r"[^0-9a-f]+", "", str(doc.get("model_sha256", "")))[:12]
    path = directory / f"{kind}-{board}-{model}-{stamp}.json"
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    text = json.dumps(doc, indent=2, default=str) + "\n"
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
        raise ResultsError(f"cannot write the result to --results-dir {directory} ({reason}); the result is printed "
                           f"instead (--json prints it whole): give a writable --results-dir") from exc
    return path


def run_fleet(kind: str, bundle: Path, boards: list[Any], *, data: Path | None, options: dict[str, Any],
              gates: dict[str, Any], accept_new_host: bool = False, jobs: int = 4, results_dir: Path | None = None,
              on_update: Update | None = None) -> list[Outcome]:
    """Run `kind` on every board, at most `jobs` at a time; never raises for one board's failure.

    An exception in the calling thread (KeyboardInterrupt, the CLI's SIGTERM) cancels every
    board's session; the boards' threads end within about a quarter of a second of
    talking, and the exception goes on.
    """
    from edgeship.sdk.client import cancel_scope
    from edgeship.sdk.device import check_gates, run_on_board

    say = on_update or (lambda _b, _s: None)
    stop = threading.Event()

    def one(board: Any) -> Outcome:
        name = board.name
        outcome = Outcome(name)
        if stop.is_set():
            outcome.error = "cancelled"
            return outcome
        say(name, {"phase": "connecting"})
        try:
            with cancel_scope(stop):
                doc = run_on_board(
                    kind, bundle, board, data=data, options=options, accept_new_host=accept_new_host,
                    upload_progress=lambda what, done, total: say(name, {"phase": f"upload {what}", "done": done,
                                                                         "total": total}),
                    run_progress=lambda p: say(name, {"phase": kind, "done": p.get("done", 0), "total": p.get("runs")}))
            outcome.doc = doc
            if results_dir is not None:
                try:
                    outcome.results_file = write_result(doc, results_dir)
                except ResultsError as exc:
                    outcome.results_error = str(exc)
            check_gates(doc, **gates)
        except GateError as exc:
            outcome.gate = str(exc)
        except Cancelled:
            outcome.error = "cancelled"
        except EdgeshipError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a bug on one board must not stop the fleet; it is reported as that board's error
            outcome.error = f"internal error: {type(exc).__name__}: {exc}"
        say(name, {"phase": "done" if outcome.ok else ("missed gate" if outcome.gate else "failed")})
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = [pool.submit(one, board) for board in boards]
        return [f.result() for f in futures]
    except BaseException:
        stop.set()  # every session raises Cancelled at its next wait; boards not started are skipped
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
