"""What a person sees while they wait: the phases and bars of real runs, drawn as a terminal would get them.

Every test runs the real thing (an agent in a subprocess, a real sshd, an emulated serial board, a
real fine-tune), records the events the library reports through its callbacks, and draws them live
with the CLI's renderers (sdk/render.py) into a rich Console that records what a terminal would show.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from edgeship.device_agent.options import RunOptions
from edgeship.sdk.boards import Board
from edgeship.sdk.progress import PHASES, Counted, Phase
from edgeship.sdk.render import Bars, LiveTable, progress_printer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COUNTS = re.compile(r"([\d,]+)/([\d,]+) runs")


def terminal() -> tuple[Console, io.StringIO]:
    """A console that draws as on a 120-column terminal, into a string."""
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system="standard"), out


def seen(out: io.StringIO) -> str:
    """What was drawn, escape sequences dropped (every frame of a live display is in it)."""
    return ANSI.sub("", out.getvalue())


def runs_shown(text: str) -> list[tuple[int, int]]:
    return [(int(a.replace(",", "")), int(b.replace(",", ""))) for a, b in COUNTS.findall(text)]


def in_order(names: list[str]) -> bool:
    """Each phase at most once in a row, and in the order a run goes through them."""
    order = [PHASES.index(n) for n in names]  # type: ignore[arg-type]
    return order == sorted(order)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny int8 conv net (tests/helpers_models.py) as a bundle, and 192 samples of data for it (48 KiB)."""
    from edgeship.converters.bundle import bundle_tflite
    from tests import helpers_models

    root = tmp_path_factory.mktemp("progress")
    (root / "tiny.tflite").write_bytes(helpers_models.int8_model())
    bundle_tflite(root / "tiny.tflite", root / "tiny-int8")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((192, 8, 8, 1), dtype=np.float32))
    return root / "tiny-int8"


class Recorder:
    """The callbacks of one run: each event kept, then passed on to the renderer."""

    def __init__(self, bars: Bars) -> None:
        self.bars = bars
        self.phases: list[Phase] = []
        self.uploads: list[tuple[str, int, int]] = []
        self.runs: list[dict[str, Any]] = []

    def phase(self, p: Phase) -> None:
        self.phases.append(p)
        self.bars.phase(p)

    def upload(self, what: str, done: int, total: int) -> None:
        self.uploads.append((what, done, total))
        self.bars.upload(what, done, total)

    def run(self, p: dict[str, Any]) -> None:
        self.runs.append(dict(p))
        self.bars.run(p)


def test_a_bench_on_local_shows_its_phases_and_counts_runs_as_runs(bundle: Path, tmp_path: Path) -> None:
    from edgeship.sdk.device import bench

    console, out = terminal()
    with Bars(True, console=console) as bars:
        rec = Recorder(bars)
        result = bench(bundle, Board("local", "local", store=tmp_path / "store"), data=bundle.parent / "data.npz",
                       options=RunOptions(runs=20, min_seconds=1.2), upload_progress=rec.upload,
                       run_progress=rec.run, phase=rec.phase)
    assert result.result["status"] == "ok"
    assert [p.name for p in rec.phases] == ["connecting", "uploading", "running"]
    assert "tiny-int8" in rec.phases[-1].text and "on local" in rec.phases[-1].text  # the model and the board
    assert {what for what, _, _ in rec.uploads} == {"model", "data"}
    assert rec.runs and all(p["runs"] == 20 and p["min_seconds"] == 1.2 for p in rec.runs)
    assert any(p["done"] > 20 for p in rec.runs)  # a bench passes its run count while its minimum time runs

    text = seen(out)
    at = [text.find(p.text) for p in rec.phases]
    assert -1 not in at and at == sorted(at), text  # every phase was drawn, in order
    shown = runs_shown(text)
    assert shown and all(done <= total == 20 for done, total in shown), shown  # never past its total
    assert re.search(r"20/20 runs · [01]\.\d/1\.2 s", text), text  # the minimum time is what is left
    uploads = [line for line in text.splitlines() if "upload " in line and "━" in line]
    assert uploads and all(re.search(r"\d+\.\d/\d+\.\d KiB", line) for line in uploads), uploads
    assert " bytes" not in text and "kB" not in text
    assert "eta " in text


def test_an_ssh_board_is_connected_then_the_agent_checked_and_placed(bundle: Path, tmp_path: Path) -> None:
    from edgeship.sdk.device import push
    from edgeship.sdk.emulate.sshd import Sshd

    console, out = terminal()
    with Sshd(tmp_path / "sshd") as server, Bars(True, console=console) as bars:
        rec = Recorder(bars)
        board = Board.parse(f"ssh://{server.user}@127.0.0.1:{server.port}?python={sys.executable}"
                            f"&key={server.user_key_path}&known_hosts={tmp_path / 'known_hosts'}"
                            f"&store={tmp_path / 'board-store'}")
        doc = push(bundle, board, accept_new_host=True, progress=rec.upload, phase=rec.phase)
    assert doc["upload"]["sent_bytes"] > 0
    names = [p.name for p in rec.phases]
    assert names[0] == "connecting" and names[-1] == "uploading" and "placing agent" in names and in_order(names)
    assert f"127.0.0.1:{server.port}" in rec.phases[0].text
    placing = [p.text for p in rec.phases if p.name == "placing agent"]
    assert placing[0] == f"checking the agent on {server.user}@127.0.0.1:{server.port}"  # the address, not its key
    assert all(re.search(r"\(\d+\.\d KiB over SFTP\)$", t) for t in placing[1:]), placing  # when it was sent
    text = seen(out)
    assert all(p.text in text for p in rec.phases), text


@pytest.fixture()
def emulate_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from edgeship.sdk.emulate import services

    monkeypatch.setattr(services, "STATE_DIR", tmp_path / "emulate")  # no board another command keeps up
    yield tmp_path


@pytest.mark.emulated
def test_an_emulated_board_is_started_before_it_is_connected(bundle: Path, emulate_dir: Path) -> None:
    from edgeship.sdk.device import bench
    from edgeship.sdk.emulate.services import EmulatedTransport

    console, out = terminal()
    with Bars(True, console=console) as bars:
        rec = Recorder(bars)
        transport = EmulatedTransport("emu-serial", "emu-serial", str(emulate_dir / "store"), 115200, phase=rec.phase)
        bench(bundle, transport, data=bundle.parent / "data.npz", options=RunOptions(runs=10, min_seconds=0.2),
              upload_progress=rec.upload, run_progress=rec.run, phase=rec.phase)
    assert [p.name for p in rec.phases] == ["starting", "connecting", "uploading", "running"]
    assert "115200 baud" in rec.phases[0].text and "serial line" in rec.phases[1].text
    assert all(0 <= done <= total for _, done, total in rec.uploads)
    assert sum(what == "data" for what, _, _ in rec.uploads) > 3  # a paced line: the bar moves chunk by chunk
    text = seen(out)
    at = [text.find(p.text) for p in rec.phases]
    assert -1 not in at and at == sorted(at), text
    assert re.search(r"upload data  .*\d+\.\d/\d+\.\d KiB .*KiB/s", text), text  # a rate in binary units too


def test_the_fleet_table_shows_each_boards_phase_and_progress(bundle: Path, tmp_path: Path) -> None:
    from edgeship.sdk.fleet import run_boards

    boards = [Board(name, "local", store=tmp_path / name) for name in ("desk-a", "desk-b")]
    console, out = terminal()
    updates: list[tuple[str, dict[str, Any]]] = []
    with LiveTable([b.name for b in boards], True, console=console) as live:
        def update(board: str, status: dict[str, Any]) -> None:
            updates.append((board, dict(status)))
            live.update(board, status)

        outcomes = run_boards("bench", bundle, boards, data=bundle.parent / "data.npz",
                              options=RunOptions(runs=20, min_seconds=1.2), on_update=update)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    for board in ("desk-a", "desk-b"):
        mine = [s for b, s in updates if b == board]
        names = [s["phase"] for s in mine]
        assert names[-1] == "done"
        steps = [n for i, n in enumerate(names[:-1]) if i == 0 or n != names[i - 1]]
        assert steps == ["connecting", "uploading", "running"], (board, names)
        counted = [s for s in mine if "unit" in s]
        assert {s["unit"] for s in counted} == {"bytes", "runs"}
        assert all(s["done"] <= s["total"] for s in counted if s["unit"] == "bytes")

    # The live display draws what it has at each refresh; every state it went through, drawn one by one:
    replay_console, replay = terminal()
    table = LiveTable([b.name for b in boards], False)
    for board, status in updates:
        table.update(board, status)
        replay_console.print(table.render())
    for text in (seen(out), seen(replay)):
        assert "desk-a" in text and "desk-b" in text
        shown = runs_shown(text)
        assert shown and all(done <= total == 20 for done, total in shown), shown
        assert re.search(r"20/20 runs · 1\.\d/1\.2 s", text), text
    text = seen(replay)
    assert re.search(r"uploading +│ ━+.*│ (model|data) 100% of \d+\.\d KiB", text), text  # a share, in KiB
    assert re.search(r"connecting +│ +│ connecting to desk-a \(the agent in a subprocess", text), text
    assert re.search(r"running +│ +│ bench of tiny-int8 \(\w{12}\) on desk-b", text), text


def test_counted_messages_are_a_bar_on_a_terminal_and_left_out_of_a_log() -> None:
    """The converters' counted messages through the CLI's printer (the fine-tune test below makes real ones)."""
    tty, log = io.StringIO(), io.StringIO()
    for out, on_terminal in ((tty, True), (log, False)):
        say = progress_printer(True, file=out, terminal=on_terminal)
        assert say is not None
        say("pruning to 50% sparsity over 1 epoch(s)")
        for done in (4, 8, 12):
            say(Counted("prune epoch 1/1", done, 12, "batch", "loss 0.5000"))
        say("prune epoch 1/1: loss 0.4000")
    assert log.getvalue() == "  pruning to 50% sparsity over 1 epoch(s)\n  prune epoch 1/1: loss 0.4000\n"
    drawn = tty.getvalue()
    assert "\r  prune epoch 1/1 " in drawn and "batch 12/12, loss 0.5000" in drawn and "━" * 24 in drawn
    assert drawn.endswith("\r\x1b[K  prune epoch 1/1: loss 0.4000\n")  # the bar's line is replaced, not left
    assert Counted("x", 15, 12, "batch").done == 12  # never a count past its total


def test_a_fine_tuning_epoch_reports_its_batches(digits: Path, tmp_path: Path) -> None:
    """A real pruning fine-tune of the digits model: its batches come out as counted progress messages."""
    from edgeship.converters.convert import convert
    from edgeship.converters.recipe import Recipe

    messages: list[str] = []
    tty = io.StringIO()
    draw = progress_printer(True, file=tty, terminal=True)
    assert draw is not None

    def say(message: str) -> None:
        messages.append(message)
        draw(message)

    recipe = Recipe.from_name("int8", calibration=digits / "train.npz", train=digits / "train.npz", sparsity=0.5,
                              epochs=2)
    convert(digits / "digits.keras", recipe, tmp_path / "pruned", progress=say)
    counted = [m for m in messages if isinstance(m, Counted)]
    assert counted and {m.unit for m in counted} == {"batch"}
    assert all(0 < m.done <= m.total for m in counted)
    for epoch in ("epoch 1/2", "epoch 2/2"):
        mine = [m for m in counted if epoch in m.what]
        assert len(mine) >= 3 and mine[-1].done == mine[-1].total, mine  # several within the epoch, then its end
        assert [m.done for m in mine] == sorted(m.done for m in mine)
        assert any(epoch in m and not isinstance(m, Counted) for m in messages)  # the epoch's own line after
    assert re.search(r"\r  \w+ epoch 1/2 ━+.* batch \d+/\d+, loss \d\.\d{4}", tty.getvalue())
