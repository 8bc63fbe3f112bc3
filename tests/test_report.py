"""`edgeship report` from real runs (local and the emulated emu-mcu, two recipes, repeated runs): rows say which
model they are and group repeats, emulated boards are marked, plots are SVG, and the HTML fits the page at 1280 and
390 px in headless Chromium with every image decoded."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeship.sdk.catalogue import load_file
from edgeship.sdk.report import EMULATED, HOST, board_nature, load_results, recipe_options, render_html
from tests.conftest import ROOT, run_cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Appended to a copy of the report: at load, what a person would see go wrong, sent to the page that framed it. An
# image must have decoded and lie, with its figure's box (a wide plot scrolls in it on a phone), within the page.
PROBE = """<script>window.addEventListener('load',function(){
var W=document.documentElement.clientWidth, imgs=[].slice.call(document.images);
var bad=imgs.filter(function(i){var r=i.getBoundingClientRect(),box=(i.closest('figure')||i).getBoundingClientRect();
  return !(i.complete&&i.naturalWidth>0&&r.width>0&&r.height>0&&box.right<=W+0.5);}).map(function(i){return i.alt;});
var svgs=[].slice.call(document.querySelectorAll('svg')).filter(function(s){var r=s.getBoundingClientRect();
  return !(r.width>0&&r.height>0);}).length;
var scrolling=[].slice.call(document.querySelectorAll('.scroll')).filter(function(d){return d.scrollWidth>d.clientWidth;})
  .map(function(d){var h=d.previousElementSibling;while(h&&h.tagName!=='H2')h=h.previousElementSibling;
  return h?h.textContent:'?';});
window.parent.postMessage(JSON.stringify({width:window.innerWidth,client_width:W,
  scroll_width:document.documentElement.scrollWidth,images:imgs.length,bad_images:bad,bad_svgs:svgs,
  tables:document.querySelectorAll('.scroll').length,scrolling_tables:scrolling}),'*');});</script>"""
# Headless Chromium will not make a window narrower than 500 px: a phone's width is given by an iframe.
FRAME = """<!doctype html><html><head><style>body{{margin:0}}iframe{{border:0;width:{width}px;height:{height}px;
display:block}}</style></head><body><iframe src="{src}"></iframe><script>window.addEventListener('message',
function(e){{document.body.setAttribute('data-probe',e.data);}});</script></body></html>"""


def probe(report: Path, width: int, tmp_path: Path) -> dict[str, Any]:
    """What headless Chromium measured on the report laid out `width` px wide (PROBE's fields)."""
    probed = tmp_path / f"probed-{report.name}"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    frame = tmp_path / f"frame-{width}.html"
    frame.write_text(FRAME.format(width=width, height=900, src=probed.name))
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width + 40},900",
                          "--virtual-time-budget=15000", "--dump-dom", frame.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    return dict(json.loads(html_lib.unescape(found.group(1))))


def rendered_images(report: Path, tmp_path: Path) -> tuple[int, int]:
    """(images in the report, images headless Chromium decoded and laid out within a 1280 px page)."""
    seen = probe(report, 1280, tmp_path)
    return int(seen["images"]), int(seen["images"]) - len(seen["bad_images"])


def screenshot(report: Path, width: int, out: Path, tmp_path: Path, height: int = 2600) -> Path:
    """A PNG of the report's top `height` px, laid out `width` px wide."""
    frame = tmp_path / f"shot-{width}.html"
    frame.write_text(FRAME.format(width=width, height=height, src=report.as_uri()))
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={out}", frame.as_uri()],
                   capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, convert_digits: Any, digits: Path) -> dict[str, Any]:
    """Real result documents: eval and bench of the float32 and int8 digits bundles on `local` (the int8 bench
    twice, a repeat to group), and eval and bench of the int8 bundle on the emulated `emu-mcu`."""
    out = tmp_path_factory.mktemp("results")
    boards = out / "boards.yaml"  # emu-mcu as shipped, with its store in the temp dir
    boards.write_text("schema_version: 1\nboards:\n  emu-mcu:\n    description: test copy of emu-mcu\n"
                      "    transport: local\n    runtime: tflite_micro\n"
                      f"    store: {{dir: {out / 'mcu-store'}, quota_mb: 16}}\n"
                      "    constraints: {int8_only: true, max_model_bytes: 1000000, arena_bytes: 65536}\n")
    env = {"EDGESHIP_LOCAL_STORE": str(out / "store"), "EDGESHIP_BOARDS": str(boards)}
    bundles = {recipe: convert_digits(recipe).bundle for recipe in ("float32", "int8")}
    data = str(digits / "test.npz")
    plan = [("float32", "local", ["eval", "--data", data]), ("float32", "local", ["bench", "--runs", "100"]),
            ("int8", "local", ["eval", "--data", data]), ("int8", "local", ["bench", "--runs", "100"]),
            ("int8", "local", ["bench", "--runs", "100"]), ("int8", "emu-mcu", ["eval", "--data", data]),
            ("int8", "emu-mcu", ["bench", "--runs", "20"])]
    for recipe, board, (command, *args) in plan:
        proc = run_cli(command, str(bundles[recipe]), "--board", board, *args, "-q", "--results-dir", str(out / "docs"),
                       env=env)
        assert proc.returncode == 0, proc.stderr
    return {"docs": out / "docs", "bundles": bundles, "env": env}


def _label(bundle: Path) -> str:
    sha = json.loads((Path(bundle) / "manifest.json").read_text())["sha256"]
    return f"{Path(bundle).name} · {sha[:8]}"


def _images(html: str) -> list[tuple[str, str]]:
    """(caption, decoded SVG text) of every figure of the report."""
    found = re.findall(r"<img alt='([^']*)' src='data:image/svg\+xml;base64,([^']+)'>", html)
    return [(html_lib.unescape(alt), base64.b64decode(data).decode()) for alt, data in found]


def test_html_report_fits_the_page_at_two_widths_with_every_plot_decoded(runs: dict[str, Any], tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    proc = run_cli("report", str(runs["docs"]), "--html", str(html), "--markdown", str(tmp_path / "report.md"))
    assert proc.returncode == 0, proc.stderr
    text = html.read_text()
    assert "data:image/png" not in text and len(_images(text)) == text.count("<img ")  # every plot an SVG
    assert html.stat().st_size < 400_000
    wide, narrow = probe(html, 1280, tmp_path), probe(html, 390, tmp_path)
    for seen, width in ((wide, 1280), (narrow, 390)):
        assert seen["width"] == width  # laid out at the width asked for, so the checks below mean something
        assert seen["scroll_width"] <= seen["client_width"], seen  # nothing wider than the page
        # latency bench + eval, accuracy, and one confusion matrix per model (two models)
        assert seen["images"] == 5 and seen["bad_images"] == [] and seen["bad_svgs"] == 0, seen
    assert wide["tables"] == 4 and wide["scrolling_tables"] == [], wide  # at 1280 px every table fits as it is
    assert narrow["scrolling_tables"], narrow  # at 390 px wide tables scroll inside their box, not the page
    shot = screenshot(html, 1280, tmp_path / "report.png", tmp_path)
    assert shot.exists() and shot.stat().st_size > 50_000


def test_rows_say_which_model_and_when_and_repeats_are_grouped(runs: dict[str, Any], tmp_path: Path) -> None:
    proc = run_cli("report", str(runs["docs"]))
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    int8, f32 = _label(runs["bundles"]["int8"]), _label(runs["bundles"]["float32"])
    assert "7 result document(s) in 6 group(s) of repeated runs, 2 model(s)" in md
    # the int8 bench ran twice on local: one row that says 2 runs and the spread of their medians
    (bench,) = [line for line in md.splitlines() if line.startswith(f"| local (host) | {int8} | int8 | bench |")]
    cells = [c.strip() for c in bench.strip("|").split("|")]
    assert cells[4] == "2" and re.fullmatch(r"[\d.]+–[\d.]+", cells[8]), cells
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", cells[12]), cells  # when: the latest run's time
    assert float(cells[9]) > 0 and float(cells[10]) > 0 and cells[11].startswith("RSS ")  # load, first inference, RSS
    assert md.count(f"| local (host) | {f32} | float32 | bench | 1 |") == 1
    # the emulated board is marked in every table, with its TFLM arena used of the board's
    mcu = [line for line in md.splitlines() if line.startswith("| emu-mcu (emulated) |")]
    assert len(mcu) == 5 and any("arena " in line and " / 64.0 KiB" in line for line in mcu)  # latency x2, accuracy, runtime x2
    assert "emu-mcu |" not in md.replace("emu-mcu (emulated) |", "")
    # the recipe's options come from the bundles' manifests, and the report says so
    assert md.count("manifest.json of ") == 2 and "200 calibration samples" in md
    # accuracy and agreement with the host, delegate partitions and the ops left on the CPU
    (acc,) = [line for line in md.splitlines() if line.startswith(f"| emu-mcu (emulated) | {int8} | int8 | 1 | 360 |")]
    assert re.search(r"\| 100\.00% \| [\d.e-]+ \| [\d.e-]+ \| 1\.000000 / 0\.99\d+ \|", acc), acc
    (ops,) = [line for line in md.splitlines() if line.startswith(f"| local (host) | {int8} | bench | ai_edge_litert")]
    assert "| xnnpack | 1 | 6 / 7 | SOFTMAX | ok |" in ops, ops


def test_plots_mark_emulated_boards_and_show_each_model_once(runs: dict[str, Any], tmp_path: Path) -> None:
    figures = dict(_images(render_html(load_results([runs["docs"]]))))  # in this process: a plotting warning fails
    bench, ev = figures["Latency, bench (steady state)"], figures["Latency, eval (one inference per sample)"]
    assert "emu-mcu [emulated]" in bench and "emu-mcu [emulated]" in ev and "local [emulated]" not in bench
    assert bench.index("local · ") < bench.index("emu-mcu [emulated]")  # fastest first
    assert "×2" in bench  # the two int8 runs pooled into one box
    accuracy = figures["Accuracy per board and model"]
    assert all(f">{tick}<" in accuracy for tick in ("0", "20", "100"))  # an axis from 0 to 100 %, values written on
    assert re.search(r">9\d\.\d\d %<", accuracy)
    confusion = [caption for caption in figures if caption.startswith("Confusion matrix")]
    assert len(confusion) == 2, confusion  # three evals, two models: the int8 matrix is the same on local and emu-mcu
    (int8,) = [c for c in confusion if "(int8)" in c]
    assert "local" in int8 and "emu-mcu" in int8


def test_incomparable_results_are_flagged_not_merged(runs: dict[str, Any], tmp_path: Path) -> None:
    docs = sorted(runs["docs"].glob("bench-local-*.json"))
    doc = json.loads(docs[0].read_text())
    doc["result"]["runtime"] = {"name": "tflite_runtime", "version": "2.14.0"}
    (tmp_path / "other.json").write_text(json.dumps(doc))
    proc = run_cli("report", str(runs["docs"]), str(tmp_path / "other.json"))
    assert proc.returncode == 0, proc.stderr
    assert "differ in runtime" in proc.stdout and "listed separately" in proc.stdout
    label = _label(runs["bundles"][doc["recipe"]])
    rows = [line for line in proc.stdout.splitlines() if line.startswith(f"| local (host) | {label} | {doc['recipe']} | bench |")]
    assert len(rows) == 2  # the runs of the same runtime grouped, the other runtime's apart


def test_recipe_options_say_where_they_came_from_when_the_bundle_is_gone_or_rebuilt(runs: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    doc = json.loads(sorted(runs["docs"].glob("eval-local-*.json"))[0].read_text())
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({**doc, "bundle": str(tmp_path / "no-such-bundle")}))
    rebuilt = tmp_path / "rebuilt.json"
    rebuilt.write_text(json.dumps({**doc, "model_sha256": "f" * 64}))
    report = load_results([gone, rebuilt])
    where = {g.latest.path.name: g.model.options_from for g in report.groups}
    assert where["gone.json"] == f"unknown: {tmp_path / 'no-such-bundle'} is not there any more", where
    assert where["rebuilt.json"].startswith("unknown: ") and "holds another model now" in where["rebuilt.json"], where
    assert all(g.model.options == () for g in report.groups)


def test_recipe_options_in_words() -> None:
    """The manifest's recipe (docs/manifest.md) as the Models table and the rows word it."""
    recipe = {"name": "int8", "io": "int8", "calib_samples": 200, "keep_float": "auto:2", "int8_strict": False,
              "compression": {"train": "x.npz", "sparsity": 0.5, "block": 4, "clusters": 16, "epochs": None}}
    assert recipe_options(recipe) == ["sparsity 0.5 in blocks of 4", "16 clusters", "keep float auto:2",
                                      "200 calibration samples"]
    assert recipe_options({"name": "qat", "qat": {"epochs": 3}, "keep_float": ["dense_1", "conv"]}) == [
        "keep float dense_1, conv", "QAT 3 epochs"]
    assert recipe_options({"name": "float32", "io": "float32"}) == []


def test_board_nature_from_the_shipped_catalogue() -> None:
    shipped = load_file(ROOT / "boards.yaml")
    assert board_nature("emu-mcu", shipped) == EMULATED  # TFLite Micro emulated on this machine
    assert board_nature("emu-pi", shipped) == EMULATED  # qemu
    assert board_nature("emu-serial", shipped) == EMULATED
    assert board_nature("local", shipped) == HOST
    assert board_nature("rpi4-litert", shipped) is None  # a real board's profile
    assert board_nature("ssh://pi@raspberrypi.local", shipped) is None
    assert board_nature("emu-pi", None) == EMULATED and board_nature("local", None) == HOST  # no catalogue: the names


def test_report_of_nothing_or_garbage_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    proc = run_cli("report", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "not an edgeship result document" in proc.stderr

