"""Packaging, as a user meets it: the wheel pip builds from this checkout, installed for real.

- The wheel holds one top-level name, `edgeship` (sdk, converters and device_agent under it),
  and builds without a setuptools warning.
- boards.yaml is package data: a `pip install --user` into a throwaway HOME lists the shipped
  boards (it used to be looked up under sys.prefix, which a --user install does not write).
- `edgeship[agent]` is a board's install: numpy and LiteRT, none of the host's packages; the agent
  runs from a fresh venv holding only that, and the extra resolves for CPython 3.9 boards.

Real pip, real venvs; pip fetches setuptools (to build) and numpy + ai-edge-litert from PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeship.device_agent import __version__
from edgeship.sdk.client import Session
from edgeship.sdk.transport.local import LocalStream

pytestmark = pytest.mark.install  # builds the wheel, installs into fresh venvs

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 300  # seconds for one pip run (a build fetches setuptools; the agent venv fetches LiteRT)
HOST_ONLY = {"paramiko", "matplotlib", "rich", "pydantic", "click", "pyyaml", "pyserial", "tensorflow"}
#: What a build needs from the checkout: the metadata files, the links in edgeship/ and what they point to.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "boards.yaml", "edgeship", "sdk", "converters", "device_agent")


def _env(**extra: str) -> dict[str, str]:
    """This environment without the checkout on PYTHONPATH: what runs must import the installed copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUSERBASE")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _run(argv: list[Any], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=PIP_TIMEOUT, **kw)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's sources, links kept: builds write build/ and *.egg-info beside them."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir() and not (ROOT / name).is_symlink():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name, follow_symlinks=False)
    return src


def _setuptools_warnings(log: str) -> list[str]:
    """setuptools' warnings (a deprecated table, a package it would drop, a license classifier, the editable
    finder's notice) as they reach pip's output: "...: SetuptoolsDeprecationWarning: ...",
    "...: BuildBackendWarning: ...", or distutils' "warning: ..." lines."""
    return [line for line in log.splitlines() if re.search(r"\w+Warning: |^\s*warning: ", line)]


@pytest.fixture(scope="module")
def built(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel `pip wheel` builds from the sources, and pip's -v log."""
    out = tmp_path_factory.mktemp("wheel")
    proc = _run([sys.executable, "-m", "pip", "wheel", sources, "--no-deps", "-v", "-w", out], env=_env())
    (wheel,) = out.glob("edgeship-*-py3-none-any.whl")
    return wheel, proc.stdout + proc.stderr


def _site_packages(base: Path) -> Path:
    (found,) = base.glob("lib/python*/site-packages")
    return found


def test_wheel_holds_one_top_level_name_the_license_and_the_catalogue(built: tuple[Path, str]) -> None:
    import zipfile

    wheel, log = built
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"edgeship", f"edgeship-{__version__}.dist-info"}
    for package in ("sdk", "sdk/transport", "sdk/emulate", "converters", "device_agent"):
        assert f"edgeship/{package}/__init__.py" in names
    assert "edgeship/converters/templates/registration.cc.tmpl" in names
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("edgeship/boards.yaml") == (ROOT / "boards.yaml").read_bytes()
        assert zf.read(f"edgeship-{__version__}.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        meta = zf.read(f"edgeship-{__version__}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta
    assert "Classifier: Programming Language :: Python :: 3.9" in meta
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0, January 2004" in (ROOT / "LICENSE").read_text()
    assert "Successfully built edgeship" in log
    warnings = _setuptools_warnings(log)
    assert warnings == []


def test_editable_install_is_one_path_line_and_quiet(sources: Path, tmp_path: Path) -> None:
    """What `make install` does (pip install -e): no setuptools warning, and edgeship imports from the checkout."""
    venv = tmp_path / "dev"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    proc = _run([python, "-m", "pip", "install", "--no-deps", "-e", sources], env=_env(), cwd=tmp_path)
    assert _setuptools_warnings(proc.stdout + proc.stderr) == []
    (pth,) = _site_packages(venv).glob("__editable__.edgeship-*.pth")
    assert pth.read_text().split() == [str(sources.resolve())]
    # (no dependencies installed: what needs none of them)
    code = ("import importlib.resources, pathlib, edgeship.device_agent.protocol as p; print(p.__file__); "
            "print(pathlib.Path(str(importlib.resources.files('edgeship') / 'boards.yaml')).resolve())")
    where = _run([python, "-c", code], env=_env(), cwd=tmp_path)
    src = sources.resolve()
    assert where.stdout.split() == [str(src / "edgeship" / "device_agent" / "protocol.py"), str(src / "boards.yaml")]


def test_user_install_lists_the_shipped_boards(built: tuple[Path, str], tmp_path: Path) -> None:
    wheel, _ = built
    home = tmp_path / "home"
    home.mkdir()
    userbase = home / ".local"
    # A Python whose user site is on (a venv only has one with --system-site-packages); the host's
    # dependencies come from the interpreter running these tests, through a .pth after the user site,
    # so the user site itself holds only what `pip install --user` put there.
    base = tmp_path / "py"
    _run([sys.executable, "-m", "venv", "--system-site-packages", base])
    (_site_packages(base) / "edgeship-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = _env(HOME=str(home), PYTHONUSERBASE=str(userbase))
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("EDGESHIP_BOARDS", None)
    _run([base / "bin" / "python", "-m", "pip", "install", "--user", "--no-deps", "--no-index", wheel], env=env, cwd=tmp_path)

    site = _site_packages(userbase)
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == ["edgeship"]
    where = _run([base / "bin" / "python", "-c", "import edgeship.sdk; print(edgeship.sdk.__file__)"], env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(site)  # the --user copy, not the checkout's

    listed = json.loads(_run([userbase / "bin" / "edgeship", "boards", "list", "--json"], env=env, cwd=tmp_path).stdout)
    shipped = yaml.safe_load((ROOT / "boards.yaml").read_text())["boards"]
    assert set(listed) == set(shipped)
    assert {b["source"] for b in listed.values()} == {"built-in"}


def test_agent_extra_installs_numpy_and_litert_only_and_serves(built: tuple[Path, str], tmp_path: Path) -> None:
    wheel, _ = built
    venv = tmp_path / "board"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    env = _env()
    _run([python, "-m", "pip", "install", f"{wheel}[agent]"], env=env, cwd=tmp_path)

    installed = {d["name"].lower() for d in json.loads(_run([python, "-m", "pip", "list", "--format", "json"], env=env).stdout)}
    assert {"edgeship", "numpy", "ai-edge-litert"} <= installed
    assert installed & HOST_ONLY == set()

    version = _run([python, "-m", "edgeship.device_agent", "--version"], env=env, cwd=tmp_path)
    assert version.stdout.strip() == __version__
    session = Session(LocalStream(tmp_path / "store", python=python, env=env))
    try:
        hello = session.hello()
    finally:
        session.close()
    assert hello["agent_version"] == __version__
    assert hello["runtime"]["name"] == "ai_edge_litert" and hello["runtime"]["version"]

    # The console script is there too; without the host's packages it says what to install, in one line.
    cli = subprocess.run([venv / "bin" / "edgeship", "boards", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode != 0
    assert cli.stderr.strip().splitlines() == [cli.stderr.strip()] and "pip install 'edgeship[host]'" in cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_agent_extra_resolves_for_python39_boards(built: tuple[Path, str], tmp_path: Path, arch: str) -> None:
    wheel, _ = built
    report = tmp_path / "report.json"
    _run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, "--python-version", "3.9",
          "--platform", f"manylinux_2_27_{arch}", "--platform", f"manylinux2014_{arch}", "--only-binary", ":all:",
          "--target", tmp_path / "target", f"{wheel}[agent]"], env=_env(), cwd=tmp_path)
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert "numpy" in chosen and "ai-edge-litert" in chosen
    assert chosen.keys() & HOST_ONLY == set()
    (litert,) = [i for i in json.loads(report.read_text())["install"] if i["metadata"]["name"].lower() == "ai-edge-litert"]
    assert "-cp39-" in litert["download_info"]["url"]  # a real 3.9 wheel of a release that has one (2.1.0 and older)
