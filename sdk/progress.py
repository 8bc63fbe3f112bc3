"""What a long operation reports while a person waits: the phase it is in, and how far a counted step is.

Library code never prints (docs/STYLE habit 5). sdk.device, sdk.fleet, sdk.boards, the SSH and
emulated transports and the converters' fine-tuning call an optional callback with these events;
the CLI (sdk/render.py) draws them on stderr. None everywhere means nobody is watching.

- :class:`Phase`: one board's phase (starting an emulated board, connecting, placing the agent,
  uploading, running), with a line that says it; the ``phase=`` callbacks (:data:`OnPhase`) get them.
- :class:`Counted`: a progress message (a str, so a callback that prints messages prints it as a
  line) that also says how far a counted step is, e.g. the batches of one fine-tuning epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

PhaseName = Literal["starting", "connecting", "placing agent", "uploading", "running"]
#: The phases in the order one run goes through them (a board skips those it does not need).
PHASES: tuple[PhaseName, ...] = ("starting", "connecting", "placing agent", "uploading", "running")


@dataclass(frozen=True)
class Phase:
    """A phase one board is in, and a line that says it ("placing the agent on pi (38.1 KiB)")."""

    name: PhaseName
    board: str
    text: str

    def __str__(self) -> str:
        return self.text


OnPhase = Callable[[Phase], None]


def board_label(name: str) -> str:
    """A board's name as a phase's line shows it: an inline address without its ?options (key, paths)."""
    return name.partition("?")[0].removeprefix("ssh://").removeprefix("serial://")


class Counted(str):
    """A progress message that also says how far its step is: `done` of `total` `unit` (e.g. batches).

    Being a str, it goes through the same ``progress`` callbacks as every other message.
    """

    what: str
    done: int
    total: int
    unit: str

    def __new__(cls, what: str, done: int, total: int, unit: str, detail: str = "") -> Counted:
        done = max(0, min(done, total))  # never a count past its total
        self = super().__new__(cls, f"{what}: {unit} {done}/{total}" + (f", {detail}" if detail else ""))
        self.what, self.done, self.total, self.unit = what, done, total, unit
        return self
