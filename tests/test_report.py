"""`edgeship report`: the HTML opens in headless Chromium with its plots rendered; incomparable results are flagged."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def rendered_images(html: Path, tmp_path: Path) -> tuple[int, int]:
    """(images in the page, images headless Chromium actually decoded), from the report's body attributes."""
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    images = int(re.search(r'data-images="(\d+)"', body.group(0)).group(1))  # type: ignore[union-attr]
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(0)).group(1))  # type: ignore[union-attr]
    return images, loaded


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, convert_digits: Any, digits: Path) -> Path:
    out = tmp_path_factory.mktemp("results")
    env_store = str(out / "store")
    for recipe in ("float32", "int8"):
        bundle = str(convert_digits(recipe).bundle)
        for args in (["eval", bundle, "--data", str(digits / "test.npz")], ["bench", bundle, "--runs", "200"]):
            proc = subprocess.run([str(Path(__import__("sys").executable).parent / "edgeship"), *args, "-q",
                                   "--results-dir", str(out / "docs")], capture_output=True, text=True,
                                  env={**__import__("os").environ, "EDGESHIP_LOCAL_STORE": env_store})
            assert proc.returncode == 0, proc.stderr
    return out / "docs"


def test_html_report_renders_its_plots_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    proc = run_cli("report", str(results), "--html", str(html), "--markdown", str(tmp_path / "report.md"))
    assert proc.returncode == 0, proc.stderr
    images, loaded = rendered_images(html, tmp_path)
    assert images >= 4 and loaded == images  # latency, accuracy-vs-latency, one confusion matrix per eval
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1300,1800",
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
    md = (tmp_path / "report.md").read_text()
    assert "| local | int8 | eval |" in md and "| local | float32 | bench |" in md


def test_incomparable_results_are_flagged_not_merged(results: Path, tmp_path: Path) -> None:
    docs = sorted(results.glob("bench-*.json"))
    doc = json.loads(docs[0].read_text())
    doc["result"]["runtime"] = {"name": "tflite_runtime", "version": "2.14.0"}
    (tmp_path / "other.json").write_text(json.dumps(doc))
    proc = run_cli("report", str(results), str(tmp_path / "other.json"))
    assert proc.returncode == 0, proc.stderr
    assert "differ in runtime" in proc.stdout and "listed separately" in proc.stdout
    assert proc.stdout.count("| local | " + doc["recipe"] + " | bench |") == 2


def test_report_of_nothing_or_garbage_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    proc = run_cli("report", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "not an edgeship result document" in proc.stderr
