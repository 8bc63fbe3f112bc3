"""The CLI's rendering half: tables, lines and progress bars for what the library returns.

sdk/cli.py parses arguments, calls the library and picks exit codes; this module turns the
library's results into text on stdout (and progress on stderr). Nothing here decides whether a
command succeeded. Strings a board sent are escaped before they are printed (sdk.report.safe_text).
rich is imported where a table or a bar is drawn, so `edgeship --help` does not load it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from edgeship.sdk.progress import Phase

import click


def emit_json(data: Any) -> None:
    """One JSON document on stdout (what --json prints)."""
    click.echo(json.dumps(data, indent=2, default=str))  # ensure_ascii: control characters come out as \\u escapes


def printable(value: Any) -> Any:
    """A board's document with every string made safe to print (sdk.report.safe_text), for the text output."""
    from edgeship.sdk.report import safe_text

    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


def progress_printer(enabled: bool, *, file: TextIO | None = None,
                     terminal: bool | None = None) -> Callable[[str], None] | None:
    """A library progress callback that prints each message on stderr (or ``file``), or None (--quiet, --json).

    A counted message (sdk.progress.Counted: the batches of a fine-tuning epoch) is drawn as a bar
    on one line that the next message replaces, on a terminal only; elsewhere it is left out, so a
    log gets the messages it always got. ``terminal`` overrides what ``file.isatty()`` says.
    """
    if not enabled:
        return None
    from edgeship.sdk.progress import Counted

    out = file if file is not None else sys.stderr
    on_terminal = out.isatty() if terminal is None else terminal
    drawn = False  # a counted line is on the screen, without its newline

    def say(message: str) -> None:
        nonlocal drawn
        if isinstance(message, Counted):
            if on_terminal:
                fraction = message.done / message.total if message.total else 0.0
                out.write(f"\r  {message.what} {text_bar(fraction)} {message[len(message.what) + 2:]}\x1b[K")
                out.flush()
                drawn = True
            return
        out.write(("\r\x1b[K" if drawn else "") + f"  {message}\n")
        out.flush()
        drawn = False

    return say


def text_bar(fraction: float, width: int = 24) -> str:
    """A bar of `width` characters, `fraction` of it full (what a counted line and the fleet table draw)."""
    full = max(0.0, min(1.0, fraction)) * width
    whole = int(full)
    half = "╸" if full - whole >= 0.5 else ""
    return "━" * whole + half + "─" * (width - whole - len(half))


def size_text(n: float, total: float | None = None) -> str:
    """A byte count in binary units, one decimal: KiB below 1 MiB, else MiB (summaries and bars alike).

    ``total`` picks the unit for both numbers of a "done/total" pair.
    """
    scale = total if total is not None else n
    return f"{n / (1 << 20):.1f} MiB" if scale >= 1 << 20 else f"{n / 1024:.1f} KiB"


def duration_text(seconds: float | None) -> str:
    """A time left as m:ss (h:mm:ss past an hour); -:-- when it is not known yet."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 360_000:
        return "-:--"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def upload_amount(done: int, total: int) -> tuple[float, str]:
    """An upload's share done and its text: "12.3/45.6 KiB" (the bytes on the wire, as push's summary counts them)."""
    done = max(0, min(done, total))
    return (done / total if total else 1.0), f"{size_text(done, total).split()[0]}/{size_text(total)}"


def run_amount(p: dict[str, Any]) -> tuple[float | None, str]:
    """A bench's share done and its text from the agent's progress message: "37/50 runs · 0.4/1.0 s".

    A bench lasts at least `runs` runs and at least `min_seconds`, so the share is the smaller of
    the two and the count stops at its total (the report gives how many runs there were).
    """
    done, runs = _number(p.get("done")), _number(p.get("runs"))
    min_s, elapsed = _number(p.get("min_seconds")), _number(p.get("elapsed_s"))
    if not runs:
        return None, f"{int(done or 0):,} runs"
    shares = [min(1.0, (done or 0) / runs)]
    text = f"{int(min(done or 0, runs)):,}/{int(runs):,} runs"
    if min_s:
        shares.append(min(1.0, (elapsed or 0) / min_s))
        text += f" · {min(elapsed or 0, min_s):.1f}/{min_s:.1f} s"
    return min(shares), text


def run_eta(p: dict[str, Any]) -> float | None:
    """Seconds a bench has left: until both its runs and its minimum time are reached, at the rate so far."""
    done, runs = _number(p.get("done")), _number(p.get("runs"))
    min_s, elapsed = _number(p.get("min_seconds")) or 0.0, _number(p.get("elapsed_s"))
    if not done or not elapsed or runs is None:
        return None
    return max(0.0, (runs - done) * elapsed / done, min_s - elapsed)


def _number(value: Any) -> float | None:
    """A number from a board's message, or None (a board's progress is shown, never trusted to be well formed)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stdout; cells are plain text (no rich markup) with control characters escaped."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from edgeship.sdk.report import safe_text

    grid = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in columns:
        grid.add_column(col)
    for row in rows:
        grid.add_row(*["" if v is None else escape(safe_text(v)) for v in row])
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160).print(grid)  # piped: no 80-column wrap


def kib(n: int) -> str:
    """A byte count as the summaries print it: the transfer bars' units (size_text)."""
    return size_text(n)


def quant(q: dict[str, Any] | None) -> str:
    """A tensor's quantization in a few words: per-tensor scale and zero point, or per-axis."""
    if not q:
        return "-"
    if len(q["scale"]) == 1:
        return f"scale {q['scale'][0]:.6g}, zero point {q['zero_point'][0]}"
    return f"per-axis ({len(q['scale'])} scales, axis {q['axis']})"


def integer_verdict(facts: dict[str, Any]) -> str:
    """One line from TFLiteModel.integer_facts(): what convert, bundle, inspect and debug-quant all print."""
    if facts["fully_integer"]:
        verdict = "yes"
    elif not facts["float_ops"]:
        verdict = "integer ops, float I/O"
    elif facts.get("activations") == "float":  # every op computes in float: nothing to name
        verdict = f"no (a float model, {len(facts['float_ops'])} float ops)"
    else:
        verdict = f"no ({float_ops(facts['float_ops'], facts.get('float_op_tensors') or [], 6)})"
    if facts.get("activations") == "int16":
        verdict += "; int16 activations (int16x8: XNNPACK, the Edge TPU and int8-only boards do not run it)"
    return f"fully integer: {verdict}"


def float_ops(ops: list[str], tensors: list[str], limit: int) -> str:
    """'1 float op: NEG#20 (ln_1/Neg)': the ops that stayed float, with the tensor (layer) each makes."""
    from edgeship.converters.manifest import named_float_ops

    return f"{len(ops)} float op{'s' if len(ops) != 1 else ''}: " + named_float_ops(ops, tensors, limit)


def state_text(variables: list[str], resources: list[str]) -> str:
    """A stateful model's state, in words: what an evaluator resets between samples."""
    parts = []
    if variables:
        parts.append(f"variable tensors {', '.join(variables[:6])}" + (" ..." if len(variables) > 6 else ""))
    if resources:
        parts.append(f"resource variables {', '.join(resources[:6])}" + (" ..." if len(resources) > 6 else ""))
    return "; ".join(parts) + "; a run depends on the runs before it"


def recipe_text(recipe: dict[str, Any]) -> str:
    """A manifest's recipe in a few words: its name and the options that change the model (io, sparsity, ...)."""
    parts = [recipe["precision"]] if recipe.get("precision") else []
    if recipe.get("io") and recipe["io"] != "float32":
        parts.append(f"io {recipe['io']}")
    if recipe.get("calib_samples"):
        parts.append(f"{recipe['calib_samples']} calibration samples")
    c = recipe.get("compression") or {}
    if c.get("sparsity") is not None:
        parts.append(f"sparsity {c['sparsity']:g}")
    if c.get("clusters") is not None:
        parts.append(f"{c['clusters']} clusters")
    if recipe.get("keep_float"):
        keep = recipe["keep_float"]
        parts.append(f"keep-float {keep if isinstance(keep, str) else ','.join(keep)}")
    if recipe.get("int8_strict"):
        parts.append("int8-strict")
    return recipe["name"] + (f" ({', '.join(parts)})" if parts else "")


def compression_text(facts: Any) -> str:
    """How a model compresses (manifest `compression`): the zlib size, what pruning and clustering buy on the wire."""
    return (f"zlib {kib(facts.zlib_size)} ({facts.zlib_ratio:.0%} of the size), weights {facts.sparsity:.1%} zero")


def show_bundle(path: Path, m: Any) -> None:
    """What convert and bundle print about the bundle they wrote."""
    recipe = m.recipe["name"] + (f", {m.recipe['precision']}" if m.recipe.get("precision") else "")
    click.echo(f"wrote {path}/ ({recipe}, {kib(m.size)}, sha256 {m.sha256[:12]})")
    if m.recipe.get("compression") and m.compression is not None:  # what --sparsity / --clusters were asked for
        click.echo(f"compressed: {compression_text(m.compression)}")
    table("inputs / outputs", ["", "name", "shape", "dtype", "quantization"],
           [[kind, t.name, "x".join(map(str, t.shape)), t.dtype,
             quant(t.quantization.model_dump() if t.quantization else None)]
            for kind, ts in (("in", m.inputs), ("out", m.outputs)) for t in ts])
    click.echo("operators: " + ", ".join(f"{o.name} v{o.version}" for o in m.operators))
    custom = [o.name for o in m.operators if o.kind == "custom"]
    if custom:
        click.echo(f"custom ops (a board must register them): {', '.join(custom)}")
    click.echo(f"min runtime: {m.min_runtime_version or 'not recorded in the file'}")
    click.echo(integer_verdict(m.integer.model_dump()))
    if m.integer.float_ops and m.recipe["name"] in ("int8", "int16x8", "qat") and not m.float_fallback:
        click.echo("  (left float by the converter, as a plain TFLiteConverter does; --int8-strict refuses such a model)")
    if m.stateful and m.state is not None:
        click.echo(f"stateful: yes ({state_text(m.state.variable_tensors, m.state.resource_variables)})")


def show_tflite(info: dict[str, Any]) -> None:
    """What `inspect` prints about a .tflite file."""
    click.echo(f"{info['path']}: TFLite model, {kib(info['size'])} (weights {kib(info['weights_bytes'])}, "
               f"graph {kib(info['graph_bytes'])}; zlib {kib(info['zlib_size'])}), {info['tensors']} tensors, "
               f"{info['subgraphs']} subgraph(s), min runtime {info['min_runtime_version'] or 'unknown'}")
    table("inputs / outputs", ["", "name", "shape", "dtype", "quantization"],
           [[kind, t["name"], "x".join(map(str, t["shape"])), t["dtype"], quant(t["quantization"])]
            for kind, ts in (("in", info["inputs"]), ("out", info["outputs"])) for t in ts])
    table("operators", ["op", "kind", "version", "nodes"],
           [[o["name"], o["kind"], o["version"], o["count"]] for o in info["operators"]])
    if info["weights"]:
        table(f"weights (sparsity {info['sparsity']:.1%} overall; zlib {info['zlib_ratio']:.2f} of the size)",
               ["tensor", "op", "elements", "sparsity", "distinct values"],
               [[w["tensor"].split(";")[0], w["op"], f"{w['elements']:,}", f"{w['sparsity']:.1%}", w["distinct_values"]]
                for w in info["weights"]])
    click.echo(integer_verdict(info))
    if info["stateful"]:
        click.echo(f"stateful: yes ({state_text(info['variable_tensors'], info['resource_variables'])})")


def show_bundle_info(info: dict[str, Any]) -> None:
    """What `inspect` prints about a bundle: the manifest's recipe, source and host accuracy, then its model."""
    from edgeship.converters.manifest import Manifest

    m = Manifest.model_validate(info["manifest"])
    click.echo(f"{info['path']}: bundle, recipe {recipe_text(m.recipe)}, batch {m.batch}, model sha256 {m.sha256[:12]}")
    src = m.source
    click.echo(f"  source: {src.path} ({src.kind}" + (f", sha256 {src.sha256[:12]}" if src.sha256 else "")
               + (f", signature {src.signature}" if src.signature and src.kind == "savedmodel" else "") + ")")
    if m.tools:
        click.echo("  made with " + ", ".join(f"{k} {v}" for k, v in m.tools.items()))
    if m.compression is not None and m.recipe.get("compression"):
        click.echo(f"  compressed: {compression_text(m.compression)}")
    if m.float_fallback is not None:
        ff = m.float_fallback
        click.echo(f"  kept in float: {', '.join(ff.layers)} ({ff.size_cost:+,} bytes over the int8 model)")
    if m.accuracy is not None:
        click.echo("  ", nl=False)
        show_host_accuracy(m.accuracy)
    show_tflite(info["model"])


def show_saved_model(info: dict[str, Any]) -> None:
    """What `inspect` prints about a SavedModel: its signatures and assets."""
    click.echo(f"{info['path']}: SavedModel, variables {kib(info['variables_bytes'])}, "
               f"{len(info['assets'])} asset(s){' (Keras metadata)' if info['keras_metadata'] else ''}")
    for mg in info["meta_graphs"]:
        for sig in mg["signatures"]:
            rows = [[kind, t["name"], t["dtype"], "unknown" if t["shape"] is None else
                     "x".join("?" if d is None else str(d) for d in t["shape"]), t["tensor"]]
                    for kind, ts in (("in", sig["inputs"]), ("out", sig["outputs"])) for t in ts]
            table(f"signature {sig['key']!r} (tags {', '.join(mg['tags'])})",
                   ["", "name", "dtype", "shape", "tensor"], rows)
    for asset in info["assets"]:
        click.echo(f"asset: {asset}")


def show_keras(info: dict[str, Any]) -> None:
    """What `inspect` prints about a Keras model: its layers."""
    click.echo(f"{info['path']}: {info['keras']} model {info['name']!r}, {info['params']:,} parameters "
               f"({info['trainable_params']:,} trainable)")
    table("layers", ["name", "class", "output shape", "params"],
           [[la["name"], la["class"], la["output_shape"], f"{la['params']:,}"] for la in info["layers"]])


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; '-' when there is none."""
    return "-" if value is None else f"{value * 100:.2f}%"


class Bars:
    """One board's progress on stderr, on a terminal (silent with --json or --quiet), gone when it ends.

    A line says the phase the board is in (sdk.progress.Phase: starting an emulated board,
    connecting, placing the agent, uploading, running the model) and how long it has lasted;
    under it a bar per upload counts bytes in KiB/MiB with the rate and the time left, and a
    bench's bar counts runs ("37/50 runs · 0.4/1.0 s"). ``console`` draws them elsewhere (a test's
    recording console); without one they go to stderr when it is a terminal.
    """

    def __init__(self, enabled: bool, console: Any = None) -> None:
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self.console = console
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, tuple[float, int]] = {}  # an upload's first report: when, at which byte
        self._phase: tuple[str, float] | None = None

    def __enter__(self) -> Bars:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn
            from rich.table import Column
            from rich.text import Text

            bars = self

            class _Lines(Progress):  # the phase line above the bars
                def get_renderables(self) -> Any:
                    if bars._phase is not None:  # its time first: a narrow terminal cuts the line's end
                        text, since = bars._phase
                        yield Text(f"{duration_text(time.monotonic() - since)} {text}", style="dim",
                                   overflow="ellipsis", no_wrap=True)
                    if self.tasks:
                        yield self.make_tasks_table(self.tasks)

            self._progress = _Lines(TextColumn("  {task.description}"), BarColumn(bar_width=20),
                                    TextColumn("{task.fields[amount]}", table_column=Column(min_width=22)),
                                    TextColumn("{task.fields[rate]}", table_column=Column(min_width=11)),
                                    TextColumn("eta {task.fields[eta]}"),
                                    console=self.console or Console(stderr=True), transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def phase(self, p: Phase) -> None:
        """The board is in a new phase: the line above the bars says it (escaped: it may quote what the board said)."""
        from edgeship.sdk.report import safe_text

        self._phase = (safe_text(p.text), time.monotonic())
        if self._progress is not None:
            self._progress.refresh()

    def upload(self, what: str, done: int, total: int) -> None:
        """`done` of `total` bytes of `what` (model, data) are on the board."""
        if self._progress is None:
            return
        now = time.monotonic()
        share, amount = upload_amount(done, total)
        first = self._started.setdefault(what, (now, done))
        # The rate since the first report, once it spans a second: the first replies come in a burst
        # (a window of chunks in flight), so an earlier rate says nothing about the line.
        rate = (done - first[1]) / (now - first[0]) if now - first[0] >= 1.0 and done > first[1] else None
        eta = 0.0 if share >= 1 else (total - done) / rate if rate else None
        fields = {"amount": amount, "rate": f"{size_text(rate)}/s" if rate else "", "eta": duration_text(eta)}
        if what not in self._tasks:
            self._tasks[what] = self._progress.add_task(f"upload {what}", total=1000, **fields)
        self._progress.update(self._tasks[what], completed=share * 1000, **fields)

    def run(self, p: dict[str, Any]) -> None:
        """A bench's progress message from the agent (done, runs, min_seconds, elapsed_s)."""
        if self._progress is None:
            return
        share, amount = run_amount(p)
        fields = {"amount": amount, "rate": "", "eta": duration_text(run_eta(p))}
        if "run" not in self._tasks:
            self._tasks["run"] = self._progress.add_task("run", total=None if share is None else 1000, **fields)
        self._progress.update(self._tasks["run"], completed=(share or 0) * 1000, **fields)


def report_run(doc: dict[str, Any]) -> None:
    """What bench and eval on one board print: runtime, delegate, latency, accuracy, agreement, memory."""
    from edgeship.sdk.report import memory_text

    doc = printable(doc)  # what the board sent, escaped: runtime names, messages, notes
    r = doc["result"]
    a = doc["agent"]
    rt = r.get("runtime") or a.get("runtime") or {}
    click.echo(f"{doc['board']}: {doc['kind']} of {doc['model_sha256'][:12]} on {rt.get('name')} {rt.get('version')}"
               f" ({(a.get('cpu') or {}).get('arch')}), status {r.get('status')}")
    if r.get("status") != "ok":
        click.echo(f"  {r.get('message', '')}")
        return
    d = r.get("delegate") or {}
    taken = "" if "nodes_taken" not in d else f", took {d['nodes_taken']} of them"
    left = f"; on the CPU: {', '.join(d['cpu_ops'])}" if d.get("cpu_ops") and d.get("delegate_kernels") else ""
    click.echo(f"  load {r.get('load_ms', 0):.2f} ms, threads {r.get('threads') or 'default'}, delegate "
               f"{', '.join(d.get('applied') or []) or 'none'} ({d.get('delegate_kernels', 0)} partition(s) over "
               f"{d.get('nodes', 0)} nodes{taken}{left})")
    for ext in d.get("external") or []:
        opts = ",".join(f"{k}={v}" for k, v in (ext.get("options") or {}).items())
        click.echo(f"  delegate {ext.get('name')}{':' + opts if opts else ''}: "
                   f"{'applied' if ext.get('applied') else 'loaded, not applied' if ext.get('loaded') else 'not loaded'}")
    for note in d.get("notes") or []:
        click.echo(f"  note: {note}")
    lat = r.get("latency_ms") or {}
    if doc["kind"] == "bench":
        click.echo(f"  first inference {r['first_inference_ms']:.3f} ms, warm-up {r['warmup']['count']} runs")
        generated = r.get("generated_inputs")
        if generated:  # no --data: say what the model was fed
            click.echo("  inputs generated (no --data): " + "; ".join(
                f"{g['name']} {'x'.join(map(str, g['shape']))} {g['values']}" for g in generated))
    if lat:
        click.echo(f"  latency over {lat['count']} runs: mean {lat['mean']:.3f} ms, std {lat['std']:.3f}, min {lat['min']:.3f}, "
                   f"p50 {lat['p50']:.3f}, p90 {lat['p90']:.3f}, p95 {lat['p95']:.3f}, p99 {lat['p99']:.3f}, max {lat['max']:.3f}")
    if r.get("accuracy") is not None:
        host = doc.get("host") or {}
        line = f"  accuracy {r['accuracy'] * 100:.2f}% on {r['samples']} samples of output {r.get('output')!r}"
        line += f", state {r['state']}" if r.get("state") else ""
        if host.get("accuracy") is not None:
            line += f" (host {host['accuracy'] * 100:.2f}%)"
        click.echo(line)
    agr = r.get("agreement")
    if agr and "argmax_agreement" in agr:
        click.echo(f"  vs host reference: argmax agreement {agr['argmax_agreement'] * 100:.2f}%, RMSE {agr['rmse']:.3g}, "
                   f"max abs error {agr['max_abs_error']:.3g}, cosine {agr['cosine_mean']:.6f}")
    click.echo(f"  memory: {memory_text(r)}")


class LiveTable:
    """A live table of every board's progress on stderr (a terminal only): its phase, a bar, and how far it is.

    ``update`` takes sdk.fleet's status of a board; a board's progress reads "model 40% of 12.3 KiB"
    while it uploads and "12/50 runs · 0.4/1.0 s" while a bench runs. ``console``: as for Bars.
    """

    def __init__(self, boards: list[str], enabled: bool, console: Any = None) -> None:
        import threading

        self.state: dict[str, dict[str, Any]] = {b: {"phase": "waiting"} for b in boards}
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self.console = console
        self._lock = threading.Lock()
        self._live: Any = None

    @staticmethod
    def progress(s: dict[str, Any]) -> tuple[float | None, str]:
        """A board's share done (None: not counted) and the words for it, from its status."""
        if s.get("unit") == "bytes" and isinstance(s.get("total"), int) and isinstance(s.get("done"), int):
            done, _ = upload_amount(s["done"], s["total"])
            return done, f"{s.get('what', '')} {done:.0%} of {size_text(s['total'])}".strip()
        if s.get("unit") == "runs":
            counts = {"done": s.get("done"), "runs": s.get("total"), "min_seconds": s.get("min_seconds"),
                      "elapsed_s": s.get("elapsed_s")}
            share, text = run_amount(counts)
            eta = run_eta(counts)
            return share, text + (f", eta {duration_text(eta)}" if eta is not None else "")
        return None, str(s.get("text") or "")

    def render(self) -> Any:
        """The table as it stands (a rich renderable)."""
        from rich.markup import escape
        from rich.table import Table

        from edgeship.sdk.report import safe_text

        table = Table(show_edge=False)
        widths = {"board": min(24, max(map(len, self.state), default=5)), "phase": len("placing agent"), "": 16}
        for col in ("board", "phase", "", "progress"):  # the first three keep their width; a long line is cut short
            table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=widths.get(col))
        for board, s in self.state.items():
            share, words = self.progress(s)
            table.add_row(escape(safe_text(board)), str(s.get("phase", "")), "" if share is None else text_bar(share, 16),
                          escape(safe_text(words)))
        return table

    def __enter__(self) -> LiveTable:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.render(), console=self.console or Console(stderr=True), refresh_per_second=8,
                              transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, board: str, status: dict[str, Any]) -> None:
        """A board's new status; a count keeps the line its phase began with until the phase changes."""
        with self._lock:
            before = self.state.get(board, {})
            same = before.get("phase") == status.get("phase")
            self.state[board] = {**({"text": before["text"]} if same and "text" in before else {}), **status}
            if self._live is not None:  # a new phase is drawn at once, a count at the next refresh
                self._live.update(self.render(), refresh=not same)


def delegate_names(delegates: Any) -> list[str]:
    """Delegate names from hello: plain names, or objects with a name (agents that report more)."""
    return [str(d.get("name")) if isinstance(d, dict) else str(d) for d in delegates or []]


def emulator_where(state: dict[str, Any]) -> str:
    """Where a running emulated board listens."""
    if state.get("url"):
        return f"serial line {state['url']}"
    return f"sshd on {state.get('host')}:{state.get('port')}"



def source_text(path: Path, short: bool = True) -> str:
    """Where a board's entry comes from: built-in, or the file (short: ~ for home, as `boards list` shows it)."""
    from edgeship.sdk.catalogue import SHIPPED

    if path == SHIPPED:
        return "built-in"
    if not short:
        return str(path)
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if home not in ("/", "") and text.startswith(home + "/") else text


def show_ping(results: Sequence[Any]) -> None:
    """What `boards ping` prints: one line per board (sdk.ping.PingResult), what the agent said escaped."""
    for info in (printable(r.to_json()) for r in results):
        if "error" in info:
            click.echo(f"{info['board']}: unreachable: {info['error']}")
            continue
        rt = info.get("runtime") or {}
        cpu = info.get("cpu") or {}
        click.echo(f"{info['board']}: agent {info.get('agent_version')} (protocol {info.get('protocol')}, Python "
                   f"{info.get('python')}), runtime {' '.join(str(v) for v in (rt.get('name'), rt.get('version')) if v) or 'none'}"
                   + (f" (TFLite {rt['tflite_level']})" if rt.get("tflite_level") else "") + f", {cpu.get('arch')} "
                   f"x{cpu.get('cores')}, delegates {', '.join(delegate_names(info.get('delegates')))}, "
                   f"rtt {info.get('rtt_ms', 0):.1f} ms")
        for d in info.get("external_delegates") or []:
            if isinstance(d, dict) and not d.get("loaded"):
                click.echo(f"  delegate {d.get('name')} is allowed but does not load: {d.get('error', '')}")
        if info.get("problem") and len(results) > 1:  # one board: the error line says it
            click.echo(f"  {info['problem']}")


def show_setup(doc: dict[str, Any], dry_run: bool) -> None:
    """What `boards setup` prints: the probe, each step done or in place, the ping; or a serial board's steps."""
    if doc["transport"] == "serial":  # edgeship's own text: printed as it is
        click.echo(f"{doc['board']}: a serial board is set up by hand (nothing reaches it before its agent runs):")
        for n, step in enumerate(doc["steps"], 1):
            click.echo(f"{n}. on the {step['where']}: {step['what']}")
            for line in step["commands"]:
                click.echo(f"     {line}")
            if step.get("file"):
                click.echo(f"   {doc['unit_path']}:")
                click.echo("\n".join(f"     {line}" for line in step["file"].rstrip().splitlines()))
        return
    doc = printable(doc)  # what the board said, made safe to print
    py = doc["probe"]["python"]
    click.echo(f"{doc['board']}: {py['executable']}: Python {py['version']} on {py['machine']}, "
               + (f"numpy {py['numpy']}" if py["numpy"] else "no numpy") + ", "
               + (", ".join(f"{k} {v}" for k, v in py["runtimes"].items()) or "no TFLite runtime")
               + (" (externally managed, PEP 668: no system-wide pip install)" if py["externally_managed"] else ""))
    mark = {True: "would do" if dry_run else "done", False: "in place"}
    for step in doc["steps"]:
        click.echo(f"  [{mark[step['needed']]}] {step['what']}")
        if step["needed"]:
            click.echo(f"      $ {step['command']}")
    if dry_run:
        click.echo("dry run: nothing was changed" if any(s["needed"] for s in doc["steps"])
                   else "nothing to change: everything is in place")
    else:
        if not doc["changed"]:
            click.echo("nothing to change: everything is in place")
        elif doc["installed"]:
            click.echo(f"installed {' '.join(doc['installed'])}")
        info = doc["ping"]
        rt = info.get("runtime") or {}
        click.echo(f"ping: agent {info.get('agent_version')}, runtime {rt.get('name')} {rt.get('version', '')}"
                   + (f" (TFLite {rt['tflite_level']})" if rt.get("tflite_level") else "")
                   + f", Python {info.get('python')}")
    where = "use the board as" if doc["board_line"].startswith("ssh://") else "in the board's boards.yaml entry"
    click.echo(f"{where}: {doc['board_line']}")


def fleet_table(kind: str, outcomes: Sequence[Any], flag: Callable[[str], str | None]) -> None:
    """What bench and eval on several boards print: one row per board (sdk.fleet outcomes), its status and numbers.

    ``flag`` words a missed gate by the CLI flag that set it.
    """
    from edgeship.sdk.report import memory_text
    from edgeship.sdk.results import gate_message

    def share(value: float | None) -> str:  # a blank cell, not '-', where a board has no number
        return "" if value is None else f"{value * 100:.2f}%"

    rows = []
    for o in outcomes:
        res = o.result
        p50, p90 = (res.latency("p50"), res.latency("p90")) if res else (None, None)
        row = [o.board, "ok" if o.ok else ("missed gate" if o.gate else "FAILED"), share(res.accuracy if res else None)]
        if kind == "eval":  # next to the host's number, and how often the board's top-1 is the host's
            row += [share(res.host_accuracy if res else None), share(res.argmax_agreement if res else None)]
        gate = gate_message(o.board, o.missed, flag) if o.missed else None
        rows.append([*row, f"{p50:.3f}" if p50 is not None else "", f"{p90:.3f}" if p90 is not None else "",
                     memory_text(res.result, short=True) if res else "", o.error or gate or o.results_error or ""])
    table(f"{kind} on {len(outcomes)} boards",
          ["board", "status", "accuracy", *(["host", "agreement"] if kind == "eval" else []), "p50 ms", "p90 ms",
           "memory", "problem"], rows)


def show_host_accuracy(a: Any) -> None:
    """The line convert prints for --eval: the model's host accuracy next to the float source's."""
    tuned = ("" if a.finetuned_float_model is None else
             f", fine-tuned float {a.finetuned_float_model * 100:.2f}% "
             f"({(a.finetuned_float_model - a.float_model) * 100:+.2f} points)")
    click.echo(f"host accuracy on {a.samples} samples (output {a.output}): model {a.model * 100:.2f}%, "
               f"float source {a.float_model * 100:.2f}% ({(a.model - a.float_model) * 100:+.2f} points){tuned}")


def show_ops(opset: Any, models: int) -> None:
    """What `ops` prints: the union of the operators of `models` models, and warnings for what no registration covers."""
    table(f"operators of {models} model(s)", ["op", "kind", "versions", "nodes"],
          [[o.name, o.kind, f"{o.min_version}" if o.min_version == o.max_version else f"{o.min_version}-{o.max_version}",
            o.count] for o in opset.ops])
    flex = opset.of_kind("select_tf")
    if flex:
        click.echo(f"warning: Select-TF ops need the Flex delegate and are not in the generated registration: "
                   f"{', '.join(o.name for o in flex)}", err=True)
    unsupported = opset.micro_unsupported()
    if unsupported:
        click.echo(f"warning: TFLite Micro has no kernel for {', '.join(o.name for o in unsupported)}: unsupported on "
                   f"TFLM (left out of micro_op_resolver.h)", err=True)


def show_host_eval(report: dict[str, Any]) -> None:
    """What `eval-host` prints: accuracy on the host's interpreter and latency per invoke."""
    lat = report["latency_ms"]
    click.echo(f"{report['model']}: accuracy {report['accuracy'] * 100:.2f}% on {report['samples']} samples "
               f"of output {report['output']!r}, state {report['state']} ({report['runtime']}, "
               f"{report['threads'] or 'default'} threads)")
    click.echo(f"latency per invoke: mean {lat['mean']:.3f} ms, p50 {lat['p50']:.3f}, p90 {lat['p90']:.3f}, "
               f"p99 {lat['p99']:.3f}, max {lat['max']:.3f} ms")


def show_debug_quant(report: Any, top: int) -> None:
    """What `debug-quant` prints: the `top` worst layers (0: all), float vs int8 accuracy, and each keep-float trial."""
    layers = report.layers if top == 0 else report.layers[:top]
    table(f"int8 error per layer, worst first ({len(layers)} of {len(report.layers)}; "
          f"RMSE/scale ~0.29 is plain rounding)",
          ["#", "layer", "op", "RMSE/scale", "scale", "mean |err|", "max |err|", "node"],
          [[i + 1, e.layer or "-", e.op, f"{e.rmse_over_scale:.3g}", f"{e.scale:.3g}", f"{e.mean_abs_error:.3g}",
            f"{e.max_abs_error:.3g}", e.node] for i, e in enumerate(layers)])
    click.echo(f"accuracy on {report.eval_samples} samples: float {pct(report.float_accuracy)}, "
               f"int8 {pct(report.int8_accuracy)}; int8 agrees with float on "
               f"{pct(report.output_error.get('argmax_agreement'))} (output RMSE {report.output_error.get('rmse') or 0:.4g})")
    click.echo(integer_verdict(report.integer) + " (the fully int8 model)")
    for t in report.trials:
        click.echo(f"--keep-float auto:{t.kept}: accuracy {pct(t.accuracy)}, {kib(t.size)} "
                   f"({t.size - report.int8_size:+,} bytes over int8)")


def show_checks(manifest: Any, docs: Sequence[dict[str, Any]]) -> None:
    """What `check` prints for several boards: one row per board, compatible or its problems, then the notes."""
    rows = []
    for d in docs:
        arena = d["arena"]
        detail = "; ".join(p["message"] for p in d["problems"]) if d["problems"] else (
            f"TFLM arena {arena['needed']:,} bytes" + (f" of {arena['size']:,}" if arena["size"] else "")
            if arena is not None else "")
        rows.append([d["board"], "compatible" if d["compatible"] else "INCOMPATIBLE", detail])
    table(f"check of {manifest.sha256[:12]} ({manifest.size:,} bytes, {len(manifest.operators)} op kinds) "
          f"on {len(docs)} boards", ["board", "status", "problems / arena"], rows)
    customs = docs[0]["custom_ops"] if docs else []
    if customs:
        click.echo(f"custom ops: {', '.join(customs)}")
    for d in docs:
        for remark in d["notes"]:
            click.echo(f"note ({d['board']}): {remark}")


def show_compatible(board: str, manifest: Any, customs: list[str], arena: dict[str, Any] | None, remarks: list[str]) -> None:
    """What `check` prints for a compatible bundle: its size, custom ops, the TFLM arena it needs, and notes."""
    click.echo(f"{board}: compatible ({manifest.size:,} bytes, {len(manifest.operators)} op kinds)")
    if customs:
        click.echo(f"custom ops: {', '.join(customs)}")
    if arena is not None:
        of = (f", {arena['needed'] / arena['size']:.1%} of the board's {arena['size']:,}" if arena["size"]
              else " (the board sets no arena limit)")
        click.echo(f"  TFLM tensor arena: the model allocates in {arena['needed']:,} bytes{of} (planned on this "
                   f"host: an estimate, a 32-bit build with optimized kernels differs)")
    for remark in remarks:
        click.echo(f"note: {remark}")
