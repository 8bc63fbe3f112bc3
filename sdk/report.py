"""`edgeship report`: compare result documents across boards and recipes, as HTML or Markdown.

Every row says which model it is (bundle name, model sha256 prefix, recipe and its options)
and when it ran. Repeated runs of the same thing (same board, kind, model, options, runtime,
threads, delegate and data) are one group: one row with the number of runs, the latest run's
numbers and the spread of the median latency over the runs. Results of one board and model
whose metadata differ in a way that changes the numbers (runtime or its version, threads,
delegate, dataset) are flagged as incomparable and listed apart, never merged.
Boards that are emulated on this machine (emu-*) are marked wherever their latency shows: it
is the emulator's latency, not a device's. Plots are SVG (text kept as text), embedded as
data URIs, so the HTML is one file. A `debug-quant` result (the quantization debugger) adds
its per-layer int8 error as a table and a bar plot, worst layer first.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.sdk.errors import EdgeshipError, UsageError
from edgeship.sdk.results import DEBUG_KIND, RunResult

# Characters a terminal acts on: C0 and C1 controls, DEL, and the bidirectional overrides that reorder a line.
_BIDI = {0x200E, 0x200F, 0x061C, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def safe_text(value: object, limit: int | None = None) -> str:
    """`value` as text that is safe to print: every control character escaped as \\xNN / \\uNNNN.

    Whatever a board sends (an error message, a delegate note, a runtime name, a CPU model,
    its version) goes through this before it reaches a terminal, so escape sequences cannot
    clear the screen, retitle the window, hide text or fake a prompt. Newlines and tabs are
    escaped too: one board value stays on one line. `limit` clips long text.
    """
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable() and not any(ord(c) in _BIDI for c in text):
        return text
    out = []
    for c in text:
        n = ord(c)
        if n < 0x20 or 0x7F <= n < 0xA0:
            out.append(f"\\x{n:02x}")
        elif n in _BIDI or (not c.isprintable() and c != " "):
            out.append(f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}")
        else:
            out.append(c)
    return "".join(out)



# What must match for two results of the same board, model and kind to be compared or merged.
COMPARABLE_KEYS = ("runtime", "threads", "delegate", "data")


@dataclass
class Row:
    path: Path
    run: RunResult

    @property
    def doc(self) -> dict[str, Any]:
        """The document as written (docs/results.md)."""
        return self.run.to_json()

    @property
    def result(self) -> dict[str, Any]:
        return dict(self.run.result)

    def meta(self) -> dict[str, Any]:
        return {
            "runtime": self.run.runtime,
            "threads": self.run.result.get("threads"),
            "delegate": ",".join(self.run.delegates_applied) or "none",
            "data": self.run.data_file_sha256,  # the user's data file (the upload adds per-model references)
            "model_sha256": self.run.model_sha256,
        }


@dataclass(frozen=True)
class ModelInfo:
    """Which model a result ran: its bundle's name, sha256 and recipe with the recipe's options.

    A result document carries the recipe's name only; its options (sparsity, clusters, layers
    kept in float, QAT, ...) are in the bundle's manifest.json, read when the bundle is still
    where the run found it and still holds the same model. `options_from` says where they came from.
    """

    sha256: str
    name: str  # the bundle directory's name (debug-quant: the source model's file name)
    recipe: str
    io: str | None
    size: int | None
    options: tuple[str, ...]  # the recipe's options in words (recipe_options)
    options_from: str  # "manifest.json of PATH", or why the options are not known

    @property
    def label(self) -> str:
        return f"{self.name} · {self.sha256[:8]}"

    @property
    def recipe_text(self) -> str:
        """The recipe with the options that make a different model (calibration left to the Models table)."""
        shown = [o for o in self.options if not o.endswith(_CALIBRATION)]
        return self.recipe + (f" ({', '.join(shown)})" if shown else "")


_CALIBRATION = "calibration samples"


def recipe_options(recipe: dict[str, Any]) -> list[str]:
    """A manifest's recipe options in words ('sparsity 0.5', 'keep float auto:2', ...), most telling first."""
    out = []
    comp = recipe.get("compression") or {}
    if comp.get("sparsity") is not None:
        out.append(f"sparsity {comp['sparsity']:g}" + (f" in blocks of {comp['block']}" if comp.get("block") else ""))
    if comp.get("clusters") is not None:
        out.append(f"{comp['clusters']} clusters")
    keep = recipe.get("keep_float")
    if keep:
        out.append("keep float " + (keep if isinstance(keep, str) else ", ".join(str(k) for k in keep)))
    qat = recipe.get("qat")
    if qat:
        out.append("QAT" + (f" {qat['epochs']} epochs" if isinstance(qat, dict) and qat.get("epochs") else ""))
    if recipe.get("int8_strict"):
        out.append("int8 strict")
    dist = recipe.get("distribution") or {}
    if dist.get("strategy"):
        out.append(f"{dist['strategy']} on {dist.get('replicas')} replicas")
    if recipe.get("calib_samples"):
        out.append(f"{recipe['calib_samples']} {_CALIBRATION}")
    return out


def _bundle_dir(bundle: str, source: Path) -> Path | None:
    """Where a result's bundle is now: as recorded (relative to here), else relative to a folder above the result file
    (a run from a project's root writes `build/x` and results under it)."""
    given = Path(bundle)
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, *(a / given for a in source.resolve().parents)]
    return next((c for c in candidates if (c / "manifest.json").is_file()), None)


def model_info(run: RunResult, source: Path, cache: dict[tuple[str, str], ModelInfo] | None = None) -> ModelInfo:
    """The ModelInfo of one result, its recipe options read from the bundle's manifest when it is still there."""
    bundle = run.bundle or run.model or "?"
    key = (bundle, run.model_sha256)
    if cache is not None and key in cache:
        return cache[key]
    options: tuple[str, ...] = ()
    where = "not recorded: the result names no bundle"
    if run.kind == DEBUG_KIND:
        where = "the quantization debugger's own conversion"
    elif run.bundle:
        found = _bundle_dir(run.bundle, source)
        if found is None:
            where = f"unknown: {run.bundle} is not there any more"
        else:
            from edgeship.converters.manifest import Manifest

            try:
                manifest = Manifest.load(found)
            except EdgeshipError as exc:
                where = f"unknown: {exc}"
            else:
                if manifest.sha256 != run.model_sha256:
                    where = f"unknown: {found} holds another model now (converted again since)"
                else:
                    options, where = tuple(recipe_options(manifest.recipe)), f"manifest.json of {found}"
    info = ModelInfo(run.model_sha256, Path(bundle).name, str(run.recipe), run.io, run.model_size, options, where)
    if cache is not None:
        cache[key] = info
    return info


EMULATED, HOST = "emulated", "host"


def board_nature(board: str, catalogue: dict[str, Any] | None) -> str | None:
    """'emulated' for a board emulated on this machine (its latency is the emulator's), 'host' for `local` (this
    machine itself), None for a real board. From the board catalogue (transport, runtime), else the name."""
    spec = (catalogue or {}).get(board)
    if spec is not None:
        if spec.transport == "emulated":
            return EMULATED
        if spec.transport == "local":
            return EMULATED if spec.runtime == "tflite_micro" or board.startswith("emu-") else HOST
        return None
    if board.startswith("emu-"):
        return EMULATED
    return HOST if board == "local" else None


def _catalogue() -> dict[str, Any] | None:
    from edgeship.sdk.catalogue import load_catalogue

    try:
        return load_catalogue()
    except EdgeshipError:  # a broken boards file of the user's: fall back on the names
        return None


@dataclass
class Group:
    """Repeated runs of one thing: one board, kind, model, run options, runtime, threads, delegate and data."""

    runs: list[Row]  # oldest first
    model: ModelInfo
    nature: str | None  # EMULATED, HOST or None (a real board)

    @property
    def latest(self) -> Row:
        return self.runs[-1]

    @property
    def board(self) -> str:
        return self.latest.run.board

    @property
    def kind(self) -> str:
        return self.latest.run.kind

    @property
    def result(self) -> dict[str, Any]:
        return self.latest.result

    @property
    def board_label(self) -> str:
        return self.board + (f" ({self.nature})" if self.nature else "")

    def spread(self, stat: str = "p50") -> tuple[float, float] | None:
        """(least, greatest) of a latency statistic over the runs, or None for fewer than two runs."""
        values = [v for v in (r.run.latency(stat) for r in self.runs) if v is not None]
        return (min(values), max(values)) if len(values) > 1 else None

    def samples(self) -> list[float]:
        """The latency samples of every run, pooled."""
        return [float(s) for r in self.runs for s in (r.result.get("latency_samples_ms") or []) if s is not None]


@dataclass
class Report:
    rows: list[Row]
    flags: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)


def _group_key(row: Row) -> str:
    meta = {k: str(v) for k, v in row.meta().items()}
    return json.dumps([row.run.board, row.run.kind, row.run.status, row.run.options, meta], sort_keys=True, default=str)


def load_results(paths: list[Path]) -> Report:
    """Read result documents (files or directories of them), each validated; a bad one is an error naming the file
    and the field (RunResult.from_json). Repeated runs of the same thing are grouped."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.exists():
            files.append(p)
        else:
            raise UsageError(f"{p}: no such results file or directory")
    if not files:
        raise UsageError("no result documents given (bench/eval write them into .edgeship/results)")
    rows = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{f}: not a JSON result document ({exc})") from exc
        rows.append(Row(f, RunResult.from_json(doc, f)))
    report = Report(rows)
    catalogue = _catalogue()
    models: dict[tuple[str, str], ModelInfo] = {}
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.run.created_utc):
        grouped[_group_key(row)].append(row)
    for members in grouped.values():
        latest = members[-1]
        report.groups.append(Group(members, model_info(latest.run, latest.path, models),
                                   board_nature(latest.run.board, catalogue)))
    report.groups.sort(key=lambda g: (g.kind, g.model.name, g.model.sha256, g.board))
    labels = {g.model.sha256: g.model.label for g in report.groups}
    same: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        same[(row.run.board, row.run.model_sha256, row.run.kind)].append(row)
    for (board, sha, kind), members in same.items():
        metas = [m.meta() for m in members]
        name = labels.get(sha, sha[:8])
        for key in COMPARABLE_KEYS:
            values = sorted({str(m[key]) for m in metas})
            if len(values) > 1:
                shown = ", ".join(v[:16] for v in values)
                report.flags.append(f"{board} / {name} / {kind}: {len(members)} results differ in {key} ({shown}); "
                                    f"they are listed separately, not merged")
    datasets = {str(r.run.data_file_sha256) for r in rows if r.run.kind == "eval"}
    if len(datasets) > 1:
        report.flags.append(f"eval results use {len(datasets)} different datasets; their accuracies are not comparable")
    return report


def _fmt(value: Any, spec: str = ".3f", scale: float = 1.0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value * scale:{spec}}{suffix}"


def _ms(value: Any) -> str:
    """A latency in ms with three significant digits (0.632, 12.4, 1,234)."""
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _when(created: str) -> str:
    return created.replace("T", " ")[:16]

def memory_text(result: dict[str, Any], short: bool = False) -> str:
    """The memory a run used, where it matters: the TFLM tensor arena against the board's, else peak RSS.

    On a TFLite Micro board the arena is the memory that must fit (the process RSS is the
    emulating host's); elsewhere the worker's peak resident memory is what the board gave.
    """
    arena = result.get("arena") or {}
    rss = result.get("peak_rss_kib")
    if arena.get("size"):
        size, used = int(arena["size"]), arena.get("used")
        if used is None:
            return f"arena ? / {size / 1024:.1f} KiB" if short else f"TFLM tensor arena of {size:,} bytes (use not reported)"
        if short:
            return f"arena {used / 1024:.1f} / {size / 1024:.1f} KiB"
        text = f"TFLM tensor arena {int(used):,} of {size:,} bytes used ({used / size:.1%})"
        return text + (f"; the emulating process peaked at {rss / 1024:.1f} MiB RSS" if rss else "")
    if rss:
        return f"RSS {rss / 1024:.1f} MiB" if short else f"peak RSS {rss / 1024:.1f} MiB"
    return "–" if short else "not reported"


@dataclass
class Table:
    """One table of the report: the same rows in Markdown and HTML. `text` names the columns aligned left."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    text: tuple[str, ...] = ("board", "model", "recipe", "kind", "options", "options from", "runtime", "delegate",
                             "ops left on the CPU", "status", "latest (UTC)", "layer", "op", "node")


def _device_groups(report: Report, kind: str | None = None) -> list[Group]:
    return [g for g in report.groups if g.kind != DEBUG_KIND and (kind is None or g.kind == kind)]


def models_table(report: Report) -> Table:
    """One row per distinct model: which bundle, recipe and options, and where the options were read."""
    seen: dict[str, ModelInfo] = {}
    for g in report.groups:
        seen.setdefault(g.model.sha256, g.model)
    rows = [[m.label, m.recipe, ", ".join(m.options) or "–", str(m.io or "–"), _fmt(m.size, ",.0f"), m.options_from]
            for m in sorted(seen.values(), key=lambda m: (m.name, m.sha256))]
    return Table("Models", ["model", "recipe", "options", "io", "size (B)", "options from"], rows,
                 "A result document records the recipe's name; its options come from the bundle's manifest.json "
                 "when the bundle is still where the run found it.")


def _runs_text(g: Group) -> str:
    return str(len(g.runs))


def latency_table(report: Report) -> Table:
    """Bench and eval latency per group: the latest run's numbers, the p50's spread over the runs, load, first
    inference and memory."""
    rows = []
    for g in sorted(_device_groups(report), key=lambda g: (g.kind, g.latest.run.latency("p50") or math.inf)):
        r, run = g.result, g.latest.run
        spread = g.spread("p50")
        rows.append([g.board_label, g.model.label, g.model.recipe_text, g.kind, _runs_text(g), _ms(run.latency("p50")),
                     _ms(run.latency("p90")), _ms(run.latency("p99")),
                     f"{_ms(spread[0])}–{_ms(spread[1])}" if spread else "–", _ms(r.get("load_ms")),
                     _ms(r.get("first_inference_ms")), memory_text(r, short=True), _when(run.created_utc)])
    return Table("Latency", ["board", "model", "recipe", "kind", "runs", "p50 ms", "p90 ms", "p99 ms",
                             "p50 over runs", "load ms", "first ms", "memory", "latest (UTC)"], rows,
                 "Numbers are the latest run's; 'p50 over runs' is the least and greatest median over repeated runs. "
                 "'first ms' is bench's first inference; memory is the TFLM arena used / the board's, else peak RSS. "
                 "Emulated boards ran in an emulator on this machine: their latency is the emulator's, not a "
                 "device's. 'host' is this machine itself.")


def accuracy_table(report: Report) -> Table:
    """Eval per group: accuracy (and the host's on the same data) and how closely the outputs agree with the host's."""
    rows = []
    for g in _device_groups(report, "eval"):
        r, run = g.result, g.latest.run
        agr = r.get("agreement") or {}
        accs = sorted({a for a in (x.run.accuracy for x in g.runs) if a is not None})
        acc = (f"{accs[0]:.2%}–{accs[-1]:.2%}" if len(accs) > 1 else _fmt(run.accuracy, ".2%"))
        cos = "–" if agr.get("cosine_mean") is None else f"{agr['cosine_mean']:.6f} / {_fmt(agr.get('cosine_min'), '.6f')}"
        rows.append([g.board_label, g.model.label, g.model.recipe_text, _runs_text(g), str(r.get("samples") or "–"), acc,
                     _fmt(run.host_accuracy, ".2%"), _fmt(agr.get("argmax_agreement"), ".2%"),
                     _fmt(agr.get("rmse"), ".2g"), _fmt(agr.get("max_abs_error"), ".2g"), cos, _when(run.created_utc)])
    return Table("Accuracy", ["board", "model", "recipe", "runs", "samples", "accuracy", "host", "agreement", "RMSE",
                              "max abs err", "cosine mean / min", "latest (UTC)"], rows,
                 "'host' is the host's accuracy on the same data; agreement, RMSE, max abs error and cosine compare the "
                 "board's outputs with the host's (docs/results.md, 'Agreement with the host').")


def runtime_table(report: Report) -> Table:
    """What ran each group: runtime, threads, delegate, its partitions and the ops left on the CPU; failed runs."""
    rows = []
    for g in sorted(_device_groups(report), key=lambda g: (g.board, g.model.name, g.kind)):
        r = g.result
        d = r.get("delegate") or {}
        nodes = f"{d.get('nodes_taken', 0)} / {d['nodes']}" if d.get("nodes") is not None else "–"
        status = g.latest.run.status + (f": {safe_text(r.get('message'), 160)}" if r.get("message") else "")
        rows.append([g.board_label, g.model.label, g.kind, g.latest.run.runtime, str(r.get("threads") or "default"),
                     ", ".join(g.latest.run.delegates_applied) or "none", str(d.get("delegate_kernels", "–")), nodes,
                     ", ".join(str(o) for o in d.get("cpu_ops") or []) or "–", status])
    return Table("Runtime and delegate", ["board", "model", "kind", "runtime", "threads", "delegate", "partitions",
                                          "nodes on delegate", "ops left on the CPU", "status"], rows,
                 "'partitions' counts the delegate kernels the graph was split into; the ops left on the CPU ran on "
                 "the runtime's own kernels.")


def debug_table(report: Report) -> Table:
    """One row per group of debug-quant results: the float source's accuracy against the fully int8 model's."""
    rows = []
    for g in report.groups:
        if g.kind != DEBUG_KIND:
            continue
        r, run = g.result, g.latest.run
        rows.append([g.board, g.model.recipe, g.kind, g.model.label, _runs_text(g), str(r.get("samples") or "–"),
                     _fmt(r.get("float_accuracy"), ".2%"), _fmt(run.accuracy, ".2%"), _fmt(run.argmax_agreement, ".2%"),
                     _when(run.created_utc)])
    return Table("", ["board", "recipe", "kind", "model", "runs", "samples", "float accuracy", "int8 accuracy",
                      "int8 agrees with float", "latest (UTC)"], rows)


def tables(report: Report) -> list[Table]:
    out = [models_table(report), latency_table(report)]
    if _device_groups(report, "eval"):
        out.append(accuracy_table(report))
    out.append(runtime_table(report))
    return [t for t in out if t.rows]


def table_rows(report: Report) -> list[list[str]]:
    """The latency table's rows (one per group of repeated runs)."""
    return latency_table(report).rows

DEBUG_HEADERS = ["#", "layer", "op", "RMSE/scale", "scale", "mean abs err", "max abs err", "node"]
DEBUG_TOP = 20  # layers listed per debug-quant result
PLOT_LAYERS = 30  # layers plotted per debug-quant result


def _debug_rows(report: Report) -> list[Row]:
    return [r for r in report.rows if r.doc.get("kind") == DEBUG_KIND and r.result.get("layers")]


def _layer_label(layer: dict[str, Any], width: int = 48) -> str:
    label = str(layer.get("layer") or layer.get("node") or "?")
    return label if len(label) <= width else label[: width - 1] + "…"


def debug_summary(row: Row) -> tuple[str, list[str], list[list[str]]]:
    """A debug-quant result as (summary line, table headers, rows of the worst layers)."""
    r = row.result
    agr = (r.get("agreement") or {}).get("argmax_agreement")
    summary = (f"{row.doc.get('model')}: float {_fmt(r.get('float_accuracy'), '.2f', 100, '%')}, "
               f"int8 {_fmt(r.get('accuracy'), '.2f', 100, '%')} on {r.get('samples')} samples "
               f"(int8 agrees with float on {_fmt(agr, '.2f', 100, '%')})")
    trials = "; ".join(f"auto:{t.get('kept')} {_fmt(t.get('accuracy'), '.2f', 100, '%')}, "
                       f"{_fmt(t.get('size'), ',.0f')} B" for t in r.get("trials") or [])
    if trials:
        summary += f"; keeping the worst layers in float: {trials}"
    rows = [[str(i + 1), str(la.get("layer") or "–"), str(la.get("op")), _fmt(la.get("rmse_over_scale"), ".3g"),
             _fmt(la.get("scale"), ".3g"), _fmt(la.get("mean_abs_error"), ".3g"), _fmt(la.get("max_abs_error"), ".3g"),
             str(la.get("node"))] for i, la in enumerate((r.get("layers") or [])[:DEBUG_TOP])]
    return summary, DEBUG_HEADERS, rows


_COLOURS = {EMULATED: "#9a9a9a", HOST: "#4c78a8", None: "#54a24b"}  # emulated, this host, a real board
_NATURE_WORDS = {EMULATED: "emulated board", HOST: "this host (local)", None: "board"}


def _svg(fig: Any) -> str:
    """A figure as an SVG data URI (text kept as text: small, sharp at any zoom)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _nature_legend(ax: Any, natures: set[str | None], extra: tuple[Any, ...] = (), latency: bool = True) -> None:
    """The colours' legend (board, this host, emulated), above the axes where it hides no data."""
    from matplotlib.patches import Patch

    order = [n for n in (None, HOST, EMULATED) if n in natures]
    words = {**_NATURE_WORDS, EMULATED: _NATURE_WORDS[EMULATED] + (" (the emulator's latency)" if latency else "")}
    handles = [Patch(facecolor=_COLOURS[n], hatch="//" if n == EMULATED else None, label=words[n]) for n in order]
    ax.legend(handles=[*handles, *extra], fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=len(handles) + len(extra), frameon=False)


def _latency_plot(groups: list[Group], kind: str) -> tuple[str, str] | None:
    """Latency per board and model for one kind, fastest at the top, each box labelled with its median."""
    import matplotlib.pyplot as plt

    shown = sorted([(g, sorted(g.samples())) for g in groups if g.kind == kind and g.samples()],
                   key=lambda gs: gs[1][len(gs[1]) // 2])
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(shown) + 1.3))
    bp = ax.boxplot([s for _, s in shown], orientation="horizontal", showfliers=False, patch_artist=True, widths=0.6,
                    medianprops={"color": "#222"})
    for patch, (g, _) in zip(bp["boxes"], shown):
        patch.set_facecolor(_COLOURS[g.nature])
        if g.nature == EMULATED:
            patch.set_hatch("//")
    labels = [f"{g.board}{' [emulated]' if g.nature == EMULATED else ''} · {g.model.name} ({g.model.recipe})"
              + (f" ×{len(g.runs)}" if len(g.runs) > 1 else "") for g, _ in shown]
    ax.set_yticks(range(1, len(shown) + 1), labels, fontsize=8)
    ax.invert_yaxis()
    medians = [s[len(s) // 2] for _, s in shown]
    if max(medians) / max(min(medians), 1e-9) > 20:  # orders of magnitude apart (a host and an emulated MCU)
        ax.set_xscale("log")
    for i, (_, s) in enumerate(shown):
        right = bp["whiskers"][2 * i + 1].get_xdata()[1]
        ax.annotate(f"{_ms(s[len(s) // 2])} ms", (right, i + 1), xytext=(5, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.margins(x=0.15)
    ax.set_xlabel("latency per inference (ms" + (", log" if ax.get_xscale() == "log" else "") + ")")
    ax.set_title(f"{kind}: latency per inference, fastest first (×N: N runs pooled)", fontsize=10, pad=24)
    _nature_legend(ax, {g.nature for g, _ in shown})
    words = "bench (steady state)" if kind == "bench" else "eval (one inference per sample)"
    return f"Latency, {words}", _svg(fig)


def _accuracy_plot(groups: list[Group]) -> tuple[str, str] | None:
    """Top-1 accuracy per board and model on a 0-100 % axis, the value written on each bar, the host's as a tick."""
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g.kind == "eval" and g.latest.run.accuracy is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(shown) + 1.3))
    ys = list(range(len(shown)))
    accs = [float(g.latest.run.accuracy or 0) * 100 for g in shown]
    bars = ax.barh(ys, accs, color=[_COLOURS[g.nature] for g in shown], height=0.6)
    for bar, g in zip(bars, shown):
        if g.nature == EMULATED:
            bar.set_hatch("//")
    hosts = [(y, g.latest.run.host_accuracy) for y, g in zip(ys, shown) if g.latest.run.host_accuracy is not None]
    for y, host in hosts:
        ax.plot([host * 100] * 2, [y - 0.38, y + 0.38], color="#d62728", linewidth=2)
    for y, acc in zip(ys, accs):  # inside the bar's end; beside a short bar, where the text would reach the labels
        inside = acc >= 25
        ax.text(acc - 1.5 if inside else acc + 1.5, y, f"{acc:.2f} %", ha="right" if inside else "left", va="center",
                fontsize=8, color="#222", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5, "alpha": 0.9})
    ax.set_yticks(ys, [f"{g.board}{' [emulated]' if g.nature == EMULATED else ''} · {g.model.name} ({g.model.recipe})"
                       for g in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy (%); red tick: the host's on the same data")
    ax.set_title("eval: accuracy per board and model", fontsize=10, pad=24)
    from matplotlib.lines import Line2D

    _nature_legend(ax, {g.nature for g in shown}, (Line2D([], [], color="#d62728", linewidth=2, label="host"),) if hosts
                   else (), latency=False)
    return "Accuracy per board and model", _svg(fig)


def _confusion_plots(groups: list[Group]) -> list[tuple[str, str]]:
    """One confusion matrix (counts in the cells) per distinct model and matrix, naming the boards that gave it; a
    board whose matrix differs from the model's first is drawn apart, with how many samples moved."""
    import matplotlib.pyplot as plt
    import numpy as np

    distinct: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        matrix = g.result.get("confusion")
        if g.kind == "eval" and matrix:
            distinct[(g.model.sha256, json.dumps(matrix))].append(g)
    first: dict[str, tuple[np.ndarray, list[Group]]] = {}
    out = []
    for (sha, text), members in distinct.items():
        m = np.asarray(json.loads(text), dtype=float)
        model = members[0].model
        boards = ", ".join(dict.fromkeys(g.board for g in members))
        wrapped = "\n".join(textwrap.wrap(boards, 44))  # a long list of boards in lines, not a title wider than the plot
        caption = f"Confusion matrix, {model.label} ({model.recipe}) on {boards}"
        if sha in first and first[sha][0].shape == m.shape:
            moved = int(np.abs(m - first[sha][0]).sum() // 2)
            caption += f": {moved} sample(s) classified differently from {first[sha][1][0].board}"
        else:
            first.setdefault(sha, (m, members))
        n = m.shape[0]
        side = min(6.0, 2.2 + 0.28 * n)
        fig, ax = plt.subplots(figsize=(side + 0.6, side))
        ax.imshow(m, cmap="Blues", vmin=0)
        if n <= 20:
            for (i, j), v in np.ndenumerate(m):
                if v:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7 if n > 12 else 8,
                            color="white" if v > m.max() / 2 else ("#b00" if i != j else "#222"))
        ax.set_xticks(range(n)) if n <= 20 else None
        ax.set_yticks(range(n)) if n <= 20 else None
        ax.tick_params(labelsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = np.trace(m) / m.sum() if m.sum() else 0.0
        ax.set_title(f"{model.name} ({model.recipe}), {acc:.2%}\n{wrapped}", fontsize=9)
        out.append((caption, _svg(fig)))
    return out


def _debug_plots(report: Report) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    out = []
    for r in _debug_rows(report):
        layers = list(r.result["layers"])[:PLOT_LAYERS]
        values = [la.get("rmse_over_scale") for la in layers]
        shown = [(_layer_label(la), v) for la, v in zip(layers, values) if v is not None and v > 0]
        if not shown:
            continue
        ideal = float(r.result.get("ideal_rmse_over_scale") or 12 ** -0.5)
        fig, ax = plt.subplots(figsize=(7, max(2.2, 0.32 * len(shown) + 1.2)))
        ys = list(range(len(shown)))
        ax.barh(ys, [v for _, v in shown], color=["#d62728" if v > 2 * ideal else "#1f77b4" for _, v in shown])
        ax.set_yticks(ys, [label for label, _ in shown], fontsize=7)
        ax.invert_yaxis()  # worst at the top
        ax.set_xscale("log")
        ax.axvline(ideal, color="#444", linestyle="--", linewidth=1, label=f"plain rounding ({ideal:.2f})")
        ax.set_xlabel("RMSE / scale of the int8 output (log)")
        ax.set_title(f"Per-layer int8 error, worst first: {Path(str(r.doc.get('model'))).name}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        out.append((f"Per-layer int8 error, {Path(str(r.doc.get('model'))).name}", _svg(fig)))
    return out


def plots(report: Report) -> dict[str, list[tuple[str, str]]]:
    """(caption, SVG data URI) of each plot the results allow, by section: latency, accuracy, confusion, debug."""
    import matplotlib

    matplotlib.use("Agg")
    groups = _device_groups(report)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgeship", "font.size": 9}):
        latency = [p for p in (_latency_plot(groups, "bench"), _latency_plot(groups, "eval")) if p]
        accuracy = [p for p in (_accuracy_plot(groups),) if p]
        return {"latency": latency, "accuracy": accuracy, "confusion": _confusion_plots(groups),
                "debug": _debug_plots(report)}

def _summary(report: Report) -> str:
    boards = sorted({g.board_label for g in _device_groups(report)})
    models = len({g.model.sha256 for g in report.groups})
    return (f"{len(report.rows)} result document(s) in {len(report.groups)} group(s) of repeated runs, "
            f"{models} model(s), board(s): {', '.join(boards) or 'none'}.")


def _md_table(table: Table) -> list[str]:
    cell = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = [f"## {table.title}", ""] + ([table.note, ""] if table.note else [])
    lines += ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows] + [""]


def render_markdown(report: Report) -> str:
    lines = ["# edgeship report", "", _summary(report), ""]
    if report.flags:
        lines += ["## Incomparable results", ""] + [f"- {f}" for f in report.flags] + [""]
    for table in tables(report):
        lines += _md_table(table)
    debug = _debug_rows(report)
    if debug:
        lines += ["## Quantization debugger", "", *_md_table(debug_table(report))[2:]]
    for row in debug:
        summary, headers, rows = debug_summary(row)
        lines += [summary, "", *_md_table(Table("", headers, rows))[2:]]
    lines += ["Sources: " + ", ".join(str(r.path) for r in report.rows), ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 1.5em;max-width:1240px;color:#222;
line-height:1.35}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em}p,li,.flag{overflow-wrap:anywhere}
.note{color:#555;font-size:13px;max-width:60em}
.scroll{overflow-x:auto;max-width:100%;margin:.4em 0 1em}
table{border-collapse:collapse;font-size:12.5px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;
vertical-align:top}th{background:#f3f3f3;text-align:center;font-weight:600}td.t{text-align:left}
td{white-space:nowrap}td.wide{white-space:normal;min-width:14em}td.wrap{white-space:normal;overflow-wrap:anywhere;
min-width:8em}tr:nth-child(even) td{background:#fafafa}
.tag{display:inline-block;font-size:11px;border-radius:3px;padding:0 4px;margin-left:4px;white-space:nowrap}
.tag.emulated{background:#e8e8e8;color:#444;border:1px solid #aaa}.tag.host{background:#e3edf7;color:#24527a;
border:1px solid #9bb8d3}
.flag{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0}
figure{margin:1em 0;max-width:100%}figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:13px;color:#555}.gallery{display:flex;flex-wrap:wrap;gap:1em 2em}
.gallery figure{margin:0;max-width:100%}details{margin-top:2em;font-size:13px}
@media (max-width:640px){figure.wide{overflow-x:auto}figure.wide img{max-width:none;width:600px}}"""

_WIDE = ("ops left on the CPU", "options from")  # columns of prose: wrapped, given room
_WRAP = ("runtime", "options", "delegate", "status")  # may hold one long word (a runtime's version): broken anywhere


def _html_table(table: Table, groups: list[Group] | None = None) -> str:
    esc = html.escape
    out = [f"<h2>{esc(table.title)}</h2>" if table.title else "",
           f"<p class='note'>{esc(table.note)}</p>" if table.note else "",
           "<div class='scroll'><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.headers) + "</tr>"]
    for row in table.rows:
        cells = []
        for h, c in zip(table.headers, row):
            cls = ("t wide" if h in _WIDE else "t wrap" if h in _WRAP else "t") if h in table.text else ""
            text = esc(c)
            for nature in (EMULATED, HOST):  # the board's tag, where its numbers show
                if h == "board" and c.endswith(f" ({nature})"):
                    text = esc(c[: -len(nature) - 3]) + f"<span class='tag {nature}'>{nature}</span>"
            cells.append(f"<td class='{cls}'>{text}</td>" if cls else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(p for p in out if p)


def _figures(figs: list[tuple[str, str]], gallery: bool = False) -> str:
    """Figures with captions; a wide one (not in a gallery) keeps a readable width on a phone and scrolls in its box."""
    esc = html.escape
    items = [f"<figure{'' if gallery else ' class=wide'}><img alt='{esc(title)}' src='{uri}'><figcaption>{esc(title)}</figcaption></figure>"
             for title, uri in figs]
    return (f"<div class='gallery'>{''.join(items)}</div>" if gallery else "\n".join(items))


def render_html(report: Report) -> str:
    esc = html.escape
    figs = plots(report)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>edgeship report</title>"
             f"<style>{_CSS}</style></head><body>", "<h1>edgeship report</h1>", f"<p>{esc(_summary(report))}</p>"]
    if report.flags:
        parts.append("<h2>Incomparable results</h2>")
        parts += [f"<div class='flag'>{esc(f)}</div>" for f in report.flags]
    by_title = {t.title: t for t in tables(report)}
    if "Models" in by_title:
        parts.append(_html_table(by_title["Models"]))
    if "Latency" in by_title:
        parts.append(_html_table(by_title["Latency"]))
        parts.append(_figures(figs["latency"]))
    if "Accuracy" in by_title:
        parts.append(_html_table(by_title["Accuracy"]))
        parts.append(_figures(figs["accuracy"]))
        parts.append(_figures(figs["confusion"], gallery=True))
    if "Runtime and delegate" in by_title:
        parts.append(_html_table(by_title["Runtime and delegate"]))
    debug = _debug_rows(report)
    if debug:
        parts.append("<h2>Quantization debugger</h2>" + _html_table(debug_table(report)))
    for drow in debug:
        summary, headers, rows = debug_summary(drow)
        parts.append(f"<p>{esc(summary)}</p>" + _html_table(Table("", headers, rows)))
    parts.append(_figures(figs["debug"]))
    parts.append(f"<details><summary>Sources ({len(report.rows)} documents)</summary><ul>"
                 + "".join(f"<li>{esc(str(r.path))}</li>" for r in report.rows) + "</ul></details>")
    parts.append("</body></html>")
    return "\n".join(parts)
