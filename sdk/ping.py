"""Ping boards: reach each board's agent, read its hello facts, and say whether it can run models.

`ping_board` is one board (its failure raises); `ping_boards` is several, where one board that
cannot be reached is a result, not an exception, so the others are still reported.
`failure` sums several results up as the one error a caller raises (or None: all fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeship.sdk.boards import Board, open_session
from edgeship.sdk.client import cannot_run
from edgeship.sdk.errors import BoardNotReadyError, EdgeshipError, TransportError


@dataclass(frozen=True)
class PingResult:
    """What pinging one board found: the agent's hello facts, or why the board could not be reached."""

    board: str
    info: dict[str, Any] | None = None  # the agent's hello (version, runtime, delegates, cpu, ...) and rtt_ms
    error: EdgeshipError | None = None  # set when the board could not be reached (then info is None)
    problem: str | None = None  # why a reachable board cannot run models (no numpy, no TFLite runtime)

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def ready(self) -> bool:
        """Reached, and able to run models."""
        return self.error is None and self.problem is None

    def to_json(self) -> dict[str, Any]:
        """The board's name and the agent's hello facts in one flat mapping (what `boards ping` prints as text)."""
        if self.error is not None:
            return {"board": self.board, "error": str(self.error)}
        return {"board": self.board, **(self.info or {}), "ready": self.problem is None,
                **({"problem": self.problem} if self.problem else {})}

    def entry(self) -> dict[str, Any]:
        """This board's entry of `boards ping --json` (sdk.schemas.PingEntry): ok when ready, else the error."""
        from edgeship.sdk.schemas import board_entry

        error = str(self.error) if self.error is not None else self.problem
        return board_entry(self.board, dict(self.info) if self.info is not None else None, error=error)


def ping_board(board: Board, *, accept_new_host: bool = False) -> PingResult:
    """Open a session to ``board``, say hello and close it; raises the EdgeshipError of a board that cannot be reached."""
    session = open_session(board, accept_new_host=accept_new_host)
    try:
        info = {k: v for k, v in session.info.items() if k != "op"}  # the hello frame's op is the protocol's, not a fact
        return PingResult(board.name, info=info, problem=cannot_run(session.info, board.name))
    finally:
        session.close()


def ping_boards(boards: Sequence[Board], *, accept_new_host: bool = False) -> list[PingResult]:
    """Ping each board in turn; a board that cannot be reached is a result with ``error`` set."""
    results = []
    for board in boards:
        try:
            results.append(ping_board(board, accept_new_host=accept_new_host))
        except EdgeshipError as exc:
            results.append(PingResult(board.name, error=exc))
    return results


def failure(results: Sequence[PingResult]) -> EdgeshipError | None:
    """The one error for these results: unreachable boards (TransportError), else boards that cannot run models
    (BoardNotReadyError); None when every board is ready. One board's error is that board's own."""
    failed = [r for r in results if not r.reachable]
    unready = [r for r in results if r.reachable and not r.ready]
    if len(results) == 1 and (failed or unready):
        return failed[0].error if failed else BoardNotReadyError(unready[0].problem or "")
    if not failed and not unready:
        return None
    parts = ([f"unreachable: {', '.join(r.board for r in failed)}"] if failed else []) + (
        [f"cannot run models: {', '.join(r.board for r in unready)} (`edgeship boards setup BOARD` installs numpy "
         f"and a runtime)"] if unready else [])
    return (TransportError if failed else BoardNotReadyError)("; ".join(parts))
