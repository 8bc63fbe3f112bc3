"""One model on many boards at once, and the results documents every run leaves behind.

Boards run in parallel (bounded by ``jobs``); a board that fails or misses a gate is
reported and the others finish. Each board's result is written as one JSON document
(docs/results.md) that carries what makes it comparable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sdk.errors import EdgeshipError, GateError

Update = Callable[[str, dict[str, Any]], None]


@dataclass
class Outcome:
    board: str
    doc: dict[str, Any] | None = None
    error: str | None = None  # the run failed (unreachable, incompatible, model did not run)
    gate: str | None = None  # the run worked but missed a gate
    results_file: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.gate is None


def write_result(doc: dict[str, Any], directory: Path) -> Path:
    """Write a result document as <kind>-<board>-<model>-<utc>.json and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    board = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(doc.get("board", "board")))[:40]
    path = directory / f"{doc.get('kind', 'run')}-{board}-{str(doc.get('model_sha256', ''))[:12]}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def run_fleet(kind: str, bundle: Path, boards: list[Any], *, data: Path | None, options: dict[str, Any],
              gates: dict[str, Any], accept_new_host: bool = False, jobs: int = 4, results_dir: Path | None = None,
              on_update: Update | None = None) -> list[Outcome]:
    """Run `kind` on every board, at most `jobs` at a time; never raises for one board's failure."""
    from sdk.device import check_gates, run_on_board

    say = on_update or (lambda _b, _s: None)

    def one(board: Any) -> Outcome:
        name = board.name
        outcome = Outcome(name)
        say(name, {"phase": "connecting"})
        try:
            doc = run_on_board(
                kind, bundle, board, data=data, options=options, accept_new_host=accept_new_host,
                upload_progress=lambda what, done, total: say(name, {"phase": f"upload {what}", "done": done, "total": total}),
                run_progress=lambda p: say(name, {"phase": kind, "done": p.get("done", 0), "total": p.get("runs")}))
            outcome.doc = doc
            if results_dir is not None:
                outcome.results_file = write_result(doc, results_dir)
            check_gates(doc, **gates)
        except GateError as exc:
            outcome.gate = str(exc)
        except EdgeshipError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a bug on one board must not stop the fleet; it is reported as that board's error
            outcome.error = f"internal error: {type(exc).__name__}: {exc}"
        say(name, {"phase": "done" if outcome.ok else ("missed gate" if outcome.gate else "failed")})
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, boards))
