"""`edgeship report`: compare result documents across boards and recipes, as HTML or Markdown.

Results are grouped by (board, recipe). Within a group, results whose metadata differ in
a way that changes the numbers (runtime or its version, threads, delegate, dataset,
model) are flagged as incomparable and listed apart, never averaged together.
Plots are rendered with matplotlib and embedded as PNG data URIs, so the HTML is one file.
A `debug-quant` result (the quantization debugger) adds its per-layer int8 error as a
table and a bar plot, worst layer first.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.sdk.errors import UsageError
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


# What must match for two results of the same board and recipe to be compared or merged.
COMPARABLE_KEYS = ("runtime", "threads", "delegate", "data", "model_sha256")


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


@dataclass
class Report:
    rows: list[Row]
    flags: list[str] = field(default_factory=list)


def load_results(paths: list[Path]) -> Report:
    """Read result documents (files or directories of them), each validated; a bad one is an error naming the file
    and the field (RunResult.from_json)."""
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
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row.run.board, str(row.run.recipe), row.run.kind)].append(row)
    for (board, recipe, kind), members in groups.items():
        metas = [m.meta() for m in members]
        for key in COMPARABLE_KEYS:
            values = sorted({str(m[key]) for m in metas})
            if len(values) > 1:
                shown = ", ".join(v[:16] for v in values)
                report.flags.append(f"{board} / {recipe} / {kind}: {len(members)} results differ in {key} ({shown}); "
                                    f"they are listed separately, not merged")
    datasets = {str(r.run.data_file_sha256) for r in rows if r.run.kind == "eval"}
    if len(datasets) > 1:
        report.flags.append(f"eval results use {len(datasets)} different datasets; their accuracies are not comparable")
    return report


def _fmt(value: Any, spec: str = ".3f", scale: float = 1.0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value * scale:{spec}}{suffix}"


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


def table_rows(report: Report) -> list[list[str]]:
    out = []
    for row in sorted(report.rows, key=lambda r: (str(r.doc.get("board")), str(r.doc.get("recipe")), str(r.doc.get("kind")))):
        r = row.result
        lat = r.get("latency_ms") or {}
        agr = (r.get("agreement") or {}).get("argmax_agreement")
        meta = row.meta()
        out.append([
            str(row.doc.get("board")), str(row.doc.get("recipe")), str(row.doc.get("kind")),
            _fmt(row.doc.get("model_size"), ",.0f"), _fmt(r.get("accuracy"), ".2f", 100, "%"),
            _fmt(agr, ".2f", 100, "%"), _fmt(lat.get("p50")), _fmt(lat.get("p90")), _fmt(lat.get("p99")),
            memory_text(r, short=True), meta["runtime"], str(meta["threads"] or "default"), meta["delegate"], str(r.get("status")),
        ])
    return out


HEADERS = ["board", "recipe", "kind", "size (B)", "accuracy", "agreement", "p50 ms", "p90 ms", "p99 ms",
           "memory", "runtime", "threads", "delegate", "status"]


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


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: Report) -> list[tuple[str, str]]:
    """(title, PNG data URI) for each plot the results allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    series = [(f"{r.doc.get('board')}\n{r.doc.get('recipe')} {r.doc.get('kind')}"
               + (f"\n{r.result['threads']} thr" if r.result.get("threads") else ""),
               r.result.get("latency_samples_ms")) for r in report.rows if r.result.get("latency_samples_ms")]
    if series:
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(series)), 3.8))
        ax.boxplot([list(s or []) for _, s in series], showfliers=False)
        ax.set_xticks(range(1, len(series) + 1), [label for label, _ in series], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("latency per inference (ms, log)")
        ax.set_title("Latency distribution per board and recipe")
        out.append(("Latency distributions", _png(fig)))
    points = [r for r in report.rows if r.result.get("accuracy") is not None and r.result.get("latency_ms")]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        recipes = sorted({str(r.doc.get("recipe")) for r in points})
        colours = plt.cm.tab10.colors  # type: ignore[attr-defined]
        for i, recipe in enumerate(recipes):
            pts = [r for r in points if str(r.doc.get("recipe")) == recipe]
            sizes = [max(20.0, (r.doc.get("model_size") or 0) / 2000) for r in pts]
            ax.scatter([r.result["latency_ms"]["p50"] for r in pts], [r.result["accuracy"] * 100 for r in pts],
                       s=sizes, color=colours[i % len(colours)], alpha=0.7, label=recipe)
            for r in pts:
                ax.annotate(str(r.doc.get("board")), (r.result["latency_ms"]["p50"], r.result["accuracy"] * 100),
                            fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency (ms, log)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Accuracy vs latency (marker area: model size)")
        ax.legend(title="recipe", fontsize=8)
        out.append(("Accuracy vs latency vs size", _png(fig)))
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
        out.append((f"Per-layer int8 error, {Path(str(r.doc.get('model'))).name}", _png(fig)))
    for r in report.rows:
        matrix = r.result.get("confusion")
        if not matrix:
            continue
        fig, ax = plt.subplots(figsize=(4, 3.6))
        im = ax.imshow(matrix, cmap="Blues")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion: {r.doc.get('board')} / {r.doc.get('recipe')}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        out.append((f"Confusion matrix, {r.doc.get('board')} / {r.doc.get('recipe')}", _png(fig)))
    return out


def render_markdown(report: Report) -> str:
    lines = ["# edgeship report", "", f"{len(report.rows)} result(s).", ""]
    if report.flags:
        lines += ["## Incomparable results", ""] + [f"- {f}" for f in report.flags] + [""]
    lines += ["## Comparison", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    debug = _debug_rows(report)
    if debug:
        lines += ["", "## Quantization debugger", ""]
    for row in debug:
        summary, headers, rows = debug_summary(row)
        lines += [summary, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows] + [""]
    lines += ["", "Sources: " + ", ".join(str(r.path) for r in report.rows), ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
.flag{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0}figure{display:inline-block;margin:1em}
figcaption{font-size:13px;color:#555}"""

# Marks the page once every image has decoded, so a headless browser (and its test) can tell.
_SCRIPT = """<script>window.addEventListener('load',function(){var imgs=[].slice.call(document.images);
var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
document.body.setAttribute('data-images',imgs.length);document.body.setAttribute('data-images-loaded',ok);});</script>"""


def render_html(report: Report) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeship report</title><style>{_CSS}</style>"
             f"{_SCRIPT}</head><body>", "<h1>edgeship report</h1>", f"<p>{len(report.rows)} result(s).</p>"]
    if report.flags:
        parts.append("<h2>Incomparable results</h2>")
        parts += [f"<div class='flag'>{esc(f)}</div>" for f in report.flags]
    parts.append("<h2>Comparison</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADERS) + "</tr>")
    for row in table_rows(report):
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    debug = _debug_rows(report)
    if debug:
        parts.append("<h2>Quantization debugger</h2>")
    for drow in debug:
        summary, headers, rows = debug_summary(drow)
        parts.append(f"<p>{esc(summary)}</p><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in rows]
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for title, uri in plots(report):
        parts.append(f"<figure><img alt='{esc(title)}' src='{uri}'><figcaption>{esc(title)}</figcaption></figure>")
    parts.append("<h2>Sources</h2><ul>" + "".join(f"<li>{esc(str(r.path))}</li>" for r in report.rows) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
