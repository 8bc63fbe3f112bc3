"""emu-pi: a Raspberry-Pi-class aarch64 board, emulated on this machine.

The board is Debian bookworm arm64's own Python 3.11 (the Python of Raspberry Pi OS 12)
with numpy 1.26.4 and tflite-runtime 2.14.0 from their aarch64 wheels, run under qemu
user-mode emulation (``qemu-aarch64-static``). Every instruction of the interpreter,
numpy and TFLite is aarch64 code, so the agent zipapp runs there exactly as on a board;
only the timings are the emulator's, not a board's.

How the root is made (:func:`provision`), all under one cache directory:

    apt/      a private apt configuration (sources, lists, archives) for arm64 only: the
              host's apt state and sources are read, never changed; removed when done
    debs/     the arm64 .debs of python3.11-minimal, libpython3.11-minimal,
              libpython3.11-stdlib and the libraries they load (the minimal closure
              below), fetched with ``apt-get download`` from the host's Debian mirror
    wheels/   the two aarch64 wheels, fetched with ``pip download`` and checked
              against pinned sha256 hashes
    root/     the .debs unpacked with ``dpkg-deb -x``; the wheels unpacked into
              usr/local/lib/python3.11/dist-packages (where pip puts them on a Pi, and on
              the default sys.path, so no PYTHONPATH is needed)

The launcher makes the agent's worker process work without binfmt_misc. qemu user mode
cannot start an aarch64 program that the guest execs by itself, and the agent runs
each model in a child ``sys.executable -c ...``. So the board's ``usr/bin/python3`` is a
small launcher script that execs ``qemu-aarch64-static -L ROOT -0 ROOT/usr/bin/python3
ROOT/usr/bin/python3.11``: ``-0`` makes the launcher the guest's argv[0], so Python's
``sys.executable`` is the launcher, and a child started from it runs under qemu again.
qemu ignores a guest's setrlimit(RLIMIT_AS), so the worker's memory limit is applied by
the launcher to qemu itself (``ulimit -v``) when EDGESHIP_WORKER_MEMORY_LIMIT (bytes) is
in its environment; the limit then covers qemu's mappings too (tflite-runtime needs at
least about 512 MiB to load). The default 2 GiB is ample: no ``--memory-limit 0`` needed.

qemu 7.2 passes the host's /proc/cpuinfo through (an x86 CPU's). With ``-L ROOT`` a
guest's open of /proc/cpuinfo finds ROOT/proc/cpuinfo first, so the root carries an
aarch64-style one whose Hardware line says this is an emulation: that is what the
agent's hello reports as the CPU model.

A second :func:`provision` is a stat and a small read: a marker file in the root holds
a hash of everything the root is built from (package list, wheel pins, layout).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeship.sdk.errors import EdgeshipError

if TYPE_CHECKING:
    from edgeship.sdk.transport.local import LocalStream

__all__ = [
    "DEBS",
    "DEFAULT_CACHE",
    "WHEELS",
    "PiRoot",
    "agent_command",
    "agent_zipapp",
    "find_qemu",
    "open_stream",
    "provision",
]

Progress = Callable[[str], None]

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "edgeship" / "emu-pi"

SUITE = "bookworm"
ARCH = "arm64"
# The minimal closure for the interpreter and what the agent, numpy and TFLite load:
# ctypes (libffi8), hashlib/ssl (libssl3), zipfile's bz2/lzma, pyexpat (libexpat1, linked
# by the interpreter), and the C++ runtime of tflite-runtime. Modules that would need
# more (sqlite3, curses, readline, dbm, nis, crypt, _uuid) are left unloadable.
DEBS: tuple[str, ...] = (
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0",
    "liblzma5", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11-minimal",
)
# (distribution, version, sha256 of its aarch64 cp311 wheel on PyPI)
WHEELS: tuple[tuple[str, str, str], ...] = (
    ("numpy", "1.26.4", "7ab55401287bfec946ced39700c053796e7cc0e3acbef09993a9ad2adba6ca6e"),
    ("tflite-runtime", "2.14.0", "ce9fa5d770a9725c746dcbf6f59f3178233b3759f09982e8b2db8d2234c333b0"),
)
WHEEL_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
QEMU_NAMES = ("qemu-aarch64-static", "qemu-aarch64")

_LAYOUT = 1  # bump when the root's layout changes, so cached roots are rebuilt
_GUEST_PYTHON = "usr/bin/python3.11"
_LAUNCHER = "usr/bin/python3"
_SITE = "usr/local/lib/python3.11/dist-packages"
_MARKER = ".edgeship-emu-pi.json"
_LIMIT_ENV = "EDGESHIP_WORKER_MEMORY_LIMIT"  # bytes; set by the agent for its worker child
_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
_HOST_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

_SMOKE = """\
import json, platform, subprocess, sys
import argparse, bz2, ctypes, hashlib, lzma, resource, select, signal, ssl, tempfile, zipfile, zlib
import numpy, tflite_runtime, tflite_runtime.interpreter
child = subprocess.run([sys.executable, "-c", "import platform; print(platform.machine())"],
                       capture_output=True, text=True, timeout=300)
sys.stdout.write(json.dumps({"python": platform.python_version(), "machine": platform.machine(),
                             "numpy": numpy.__version__, "tflite_runtime": tflite_runtime.__version__,
                             "executable": sys.executable, "child_machine": child.stdout.strip(),
                             "child_error": child.stderr[-500:]}) + "\\n")
"""  # runs on the emulated board (its stdout is the report), not in edgeship


@dataclass(frozen=True)
class PiRoot:
    """A provisioned emu-pi root and how to run its Python.

    ``python`` is the command that runs the board's Python 3.11 (the launcher, which execs
    qemu); run it with ``env``. ``report`` says what :func:`provision` did, one line each.
    """

    root: Path
    python: list[str]
    env: dict[str, str]
    report: list[str]
    qemu: str
    cache: Path
    provisioned: bool  # False when the cache already held this root ("already provisioned")
    download_bytes: int  # bytes fetched by this call (apt indexes, .debs, wheels); 0 when warm
    package_bytes: int  # size of the .debs and wheels the root is built from
    root_bytes: int  # size of the unpacked root
    seconds: float

    @property
    def launcher(self) -> Path:
        """The board's ``python3``: a script that runs ROOT/usr/bin/python3.11 under qemu."""
        return self.root / _LAUNCHER


# ------------------------------------------------------------------------------- public API
def provision(cache: Path = DEFAULT_CACHE, *, progress: Progress | None = None) -> PiRoot:
    """Make (or find) the emu-pi root under `cache`; idempotent, and fast when already done.

    Needs qemu-user-static, apt-get and dpkg-deb (a Debian or Ubuntu host), the Debian
    archive keyring, network access to a Debian mirror and to PyPI (cold only).
    Raises EdgeshipError naming what is missing and how to get it.
    """
    t0 = time.monotonic()
    say = progress or (lambda _line: None)
    cache = Path(cache).expanduser().resolve()
    qemu = find_qemu()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeshipError(f"cannot create the emu-pi cache {cache}: {exc}; pass a writable directory") from exc
    root = cache / "root"
    env = _guest_env()
    with _locked(cache / ".lock"):
        deb_key, wheel_key = _deb_key(), _wheel_key()
        key = _hash({"layout": _LAYOUT, "debs": deb_key, "wheels": wheel_key})
        marker = _read_marker(root)
        if marker.get("key") == key and (root / _GUEST_PYTHON).is_file():
            _write_launcher(root, qemu)
            line = (f"already provisioned: {root} (Debian {SUITE} {ARCH}, Python {marker.get('python')}, "
                    f"numpy {marker.get('numpy')}, tflite_runtime {marker.get('tflite_runtime')}; key {key[:12]})")
            say(line)
            return PiRoot(root, [str(root / _LAUNCHER)], env, [line], qemu, cache, False, 0,
                          int(marker.get("package_bytes", 0)), int(marker.get("root_bytes", 0)),
                          time.monotonic() - t0)

        report: list[str] = []

        def note(line: str) -> None:
            report.append(line)
            say(line)

        note(f"qemu: {qemu} ({_qemu_version(qemu)})")
        debs, deb_fetched = _fetch_debs(cache, deb_key, note)
        wheels, wheel_fetched = _fetch_wheels(cache, wheel_key, note)
        _build_root(cache, root, debs, wheels, note)
        _write_launcher(root, qemu)
        facts = _smoke_check(root, env, note)
        package_bytes = sum(p.stat().st_size for p in [*debs, *wheels])
        root_bytes = _tree_bytes(root)
        note(f"root: {root} ({root_bytes / 1e6:.0f} MB unpacked from {package_bytes / 1e6:.1f} MB of packages)")
        marker = {"key": key, "layout": _LAYOUT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **{k: facts[k] for k in ("python", "numpy", "tflite_runtime")},
                  "debs": [p.name for p in debs], "wheels": [p.name for p in wheels],
                  "package_bytes": package_bytes, "root_bytes": root_bytes}
        _atomic_write(root / _MARKER, json.dumps(marker, indent=2) + "\n")
        seconds = time.monotonic() - t0
        note(f"provisioned in {seconds:.1f} s")
        return PiRoot(root, [str(root / _LAUNCHER)], env, report, qemu, cache, True,
                      deb_fetched + wheel_fetched, package_bytes, root_bytes, seconds)


def agent_command(root: PiRoot, agent_pyz: Path, store: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The command that serves the agent zipapp on stdin/stdout on the emulated board; run it with ``root.env``."""
    return [*root.python, str(agent_pyz), "--stdio", "--store", str(store), *extra_args]


def agent_zipapp(root: PiRoot) -> Path:
    """This edgeship's agent zipapp, written once per content hash under the cache (agents/agent-<sha>.pyz)."""
    from edgeship.sdk.agentbuild import build_zipapp

    data = build_zipapp()
    path = root.cache / "agents" / f"agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)
    return path


def open_stream(root: PiRoot, store: Path, *, agent: Path | None = None, extra_args: Sequence[str] = ()) -> LocalStream:
    """Pipes to the agent zipapp (``agent``, or this edgeship's) running on the emulated board."""
    from edgeship.sdk.transport.local import LocalStream

    pyz = agent if agent is not None else agent_zipapp(root)
    return LocalStream(store, tuple(extra_args), python=root.python[0], agent=pyz, env=dict(root.env))


def find_qemu() -> str:
    """The qemu aarch64 user-mode emulator's path; EdgeshipError says how to install it."""
    for name in QEMU_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise EdgeshipError("emu-pi needs qemu user-mode emulation for aarch64 (qemu-aarch64-static), which is not "
                        "installed; install it with `sudo apt-get install qemu-user-static` (binfmt_misc is not needed)")


# ------------------------------------------------------------------------------- the steps
def _fetch_debs(cache: Path, key: str, note: Progress) -> tuple[list[Path], int]:
    """The arm64 .debs of DEBS, from the cache or from the host's Debian mirror via a private apt."""
    final = cache / "debs"
    cached = _complete(final, key, "*.deb")
    if cached is not None:
        note(f"reused {len(cached)} cached .debs ({_mb(cached)} MB) in {final}")
        return cached, 0
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise EdgeshipError(f"emu-pi provisioning needs {tool} (a Debian or Ubuntu host); it was not found on PATH")
    if not _KEYRING.is_file():
        raise EdgeshipError(f"{_KEYRING} is missing, so Debian's arm64 packages cannot be verified; "
                            f"install it with `sudo apt-get install debian-archive-keyring`")
    main, security = _debian_mirrors()
    apt_dir = cache / "apt"
    shutil.rmtree(apt_dir, ignore_errors=True)
    env = dict(os.environ, APT_CONFIG=str(_write_apt_config(apt_dir, main, security)), LC_ALL="C")
    t0 = time.monotonic()
    out = _run(["apt-get", "update"], "apt-get update (arm64 package lists, private apt state)", env=env, timeout=900,
               hint=f"check that {main} and {security} are reachable")
    failed = [line.strip() for line in (out.stdout + out.stderr).splitlines()
              if line.startswith("Err:") or "Failed to fetch" in line]
    if failed:  # apt-get update exits 0 when index files failed to download
        raise EdgeshipError(f"apt-get update could not fetch the arm64 package lists: {' | '.join(failed[:3])[:600]}; "
                            f"check that {main} and {security} are reachable (or that apt's proxy is set)")
    index_bytes = _apt_fetched_bytes(out.stdout)
    note(f"apt: arm64 package lists of {SUITE}, {SUITE}-updates from {main} and {SUITE}-security from {security} "
         f"({index_bytes / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s; private state in {apt_dir})")
    tmp = cache / "debs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.monotonic()
    _run(["apt-get", "download", *DEBS], "apt-get download (arm64 .debs)", cwd=tmp, env=env, timeout=900,
         hint=f"check that {main} is reachable")
    files = sorted(tmp.glob("*.deb"))
    missing = sorted(set(DEBS) - {p.name.split("_", 1)[0] for p in files})
    if missing:
        raise EdgeshipError(f"apt-get download did not fetch {', '.join(missing)} for {ARCH}; "
                            f"check the mirror {main} carries {SUITE} {ARCH}")
    note(f"downloaded {len(files)} .debs ({_mb(files)} MB, {time.monotonic() - t0:.1f} s): "
         + ", ".join(p.name.removesuffix(f"_{ARCH}.deb").replace("%3a", ":") for p in files))
    _replace_dir(tmp, final)
    (final / ".complete").write_text(key)
    shutil.rmtree(apt_dir, ignore_errors=True)  # ~80 MB of lists; a new download refreshes them anyway
    files = sorted(final.glob("*.deb"))
    return files, index_bytes + sum(p.stat().st_size for p in files)


def _fetch_wheels(cache: Path, key: str, note: Progress) -> tuple[list[Path], int]:
    """numpy and tflite-runtime for cp311 aarch64, hash-checked by pip."""
    final = cache / "wheels"
    cached = _complete(final, key, "*.whl")
    if cached is not None:
        note(f"reused {len(cached)} cached wheels ({_mb(cached)} MB) in {final}")
        return cached, 0
    tmp = cache / "wheels.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    requirements = cache / "wheels.requirements.txt"
    requirements.write_text("".join(f"{dist}=={version} --hash=sha256:{sha}\n" for dist, version, sha in WHEELS))
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    t0 = time.monotonic()
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
          *platforms, "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "-r", str(requirements), "-d", str(tmp)],
         "pip download (aarch64 wheels)", timeout=900, hint="check that PyPI is reachable (or pip's configured index)")
    files = sorted(tmp.glob("*.whl"))
    expected = {dist.replace("-", "_") for dist, _, _ in WHEELS}
    if {p.name.split("-", 1)[0].lower() for p in files} != expected:
        raise EdgeshipError(f"pip download gave {[p.name for p in files]}, expected wheels of {sorted(expected)}")
    note(f"downloaded {len(files)} wheels ({_mb(files)} MB, {time.monotonic() - t0:.1f} s): "
         + ", ".join(p.name for p in files))
    _replace_dir(tmp, final)
    (final / ".complete").write_text(key)
    files = sorted(final.glob("*.whl"))
    return files, sum(p.stat().st_size for p in files)


def _build_root(cache: Path, root: Path, debs: list[Path], wheels: list[Path], note: Progress) -> None:
    """Unpack the .debs and wheels into a fresh root, then swap it in."""
    t0 = time.monotonic()
    tmp = cache / "root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}", timeout=300)
    relinked = _relativize_symlinks(tmp)
    site = tmp / _SITE
    site.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        _install_wheel(whl, site)
    (tmp / "proc").mkdir(exist_ok=True)
    (tmp / "proc" / "cpuinfo").write_text(_cpuinfo())
    _replace_dir(tmp, root)
    note(f"unpacked {len(debs)} .debs and {len(wheels)} wheels into {root} ({time.monotonic() - t0:.1f} s; "
         f"{relinked} absolute symlinks made relative; wheels in /{_SITE})")


def _smoke_check(root: Path, env: dict[str, str], note: Progress) -> dict[str, Any]:
    """Run the board's Python once: versions, arch, and a child via sys.executable (this also writes the .pyc files)."""
    t0 = time.monotonic()
    out = _run([str(root / _LAUNCHER), "-c", _SMOKE], "the emu-pi smoke check", env=env, timeout=600,
               hint=f"remove {root.parent} and provision again")
    try:
        facts: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise EdgeshipError(f"the emu-pi smoke check printed no result: {out.stdout[-300:]!r} {out.stderr[-300:]!r}") from exc
    want = {"machine": "aarch64", "numpy": WHEELS[0][1], "tflite_runtime": WHEELS[1][1], "child_machine": "aarch64"}
    wrong = {k: facts.get(k) for k, v in want.items() if facts.get(k) != v}
    if wrong or not str(facts.get("python", "")).startswith("3.11."):
        raise EdgeshipError(f"the emu-pi root at {root} does not run as expected: got {wrong or facts} "
                            f"(expected {want}, Python 3.11); remove {root.parent} and provision again")
    note(f"smoke check: Python {facts['python']} on {facts['machine']}, numpy {facts['numpy']}, "
         f"tflite_runtime {facts['tflite_runtime']}; a child via sys.executable runs on {facts['child_machine']} "
         f"({time.monotonic() - t0:.1f} s under qemu)")
    return facts


# ------------------------------------------------------------------------------- helpers
def _guest_env() -> dict[str, str]:
    """The minimal environment for the emulated Python (the launcher adds PYTHONNOUSERSITE=1)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME") or "/"}
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def _write_launcher(root: Path, qemu: str) -> None:
    """ROOT/usr/bin/python3: exec qemu on the board's python3.11, with itself as the guest's argv[0]."""
    launcher = root / _LAUNCHER
    q = shlex.quote
    text = (
        "#!/bin/sh\n"
        "# edgeship emu-pi: the board's python3.11 under qemu user-mode emulation (generated; do not edit).\n"
        "# -0 makes this script the guest's argv[0], so sys.executable re-runs through qemu (no binfmt_misc).\n"
        "PYTHONNOUSERSITE=1\n"
        "export PYTHONNOUSERSITE\n"
        "# qemu ignores a guest's setrlimit(RLIMIT_AS): a worker's memory limit is applied here, to qemu itself.\n"
        f'if [ "${{{_LIMIT_ENV}:-0}}" -gt 0 ] 2>/dev/null; then ulimit -v $(( {_LIMIT_ENV} / 1024 )); fi\n'
        f"exec {q(qemu)} -L {q(str(root))} -0 {q(str(launcher))} {q(str(root / _GUEST_PYTHON))} \"$@\"\n"
    )
    if not launcher.is_file() or launcher.read_text() != text:
        _atomic_write(launcher, text)
    if launcher.stat().st_mode & 0o777 != 0o755:
        launcher.chmod(0o755)


def _cpuinfo() -> str:
    """An aarch64-style /proc/cpuinfo that says the board is an emulation."""
    block = ("processor\t: {i}\nBogoMIPS\t: 0.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
             "CPU architecture: 8\n")
    cpus = "\n".join(block.format(i=i) for i in range(os.cpu_count() or 1))
    return (f"{cpus}\nHardware\t: edgeship emu-pi (qemu-aarch64 user-mode emulation, not a real board)\n"
            f"Model\t\t: edgeship emu-pi (Debian {SUITE} {ARCH})\n")


def _install_wheel(whl: Path, site: Path) -> None:
    """Unpack a wheel into site-packages (purelib/platlib .data folded in; scripts and headers dropped)."""
    try:
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(site)
    except (zipfile.BadZipFile, OSError) as exc:
        raise EdgeshipError(f"cannot unpack {whl}: {exc}; remove {whl.parent} and provision again") from exc
    for data in site.glob("*.data"):
        for part in ("purelib", "platlib"):
            src = data / part
            if src.is_dir():
                shutil.copytree(src, site, dirs_exist_ok=True)
        shutil.rmtree(data)


def _relativize_symlinks(root: Path) -> int:
    """Point absolute symlinks (e.g. sitecustomize.py -> /etc/...) inside the root, not at the host."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            link = Path(dirpath, name)
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if target.startswith("/"):
                link.unlink()
                link.symlink_to(os.path.relpath(root / target.lstrip("/"), link.parent))
                count += 1
    return count


def _debian_mirrors() -> tuple[str, str]:
    """The host's Debian mirror and security mirror for bookworm, from its apt sources (deb.debian.org if none)."""
    main = security = None
    for uri, suites in _host_sources():
        if main is None and (SUITE in suites or f"{SUITE}-updates" in suites):
            main = uri
        if security is None and f"{SUITE}-security" in suites:
            security = uri
    return (main or _DEFAULT_MIRROR).rstrip("/"), (security or _DEFAULT_SECURITY).rstrip("/")


def _host_sources() -> Iterator[tuple[str, set[str]]]:
    """(URI, suites) of the host's `deb` sources, in one-line and deb822 form."""
    files: list[Path] = []
    for place in _HOST_APT_SOURCES:
        if place.is_dir():
            files += sorted(p for p in place.iterdir() if p.suffix in (".list", ".sources"))
        elif place.is_file():
            files.append(place)
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                    for uri in fields.get("uris", "").split():
                        yield uri, set(fields.get("suites", "").split())
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if not words or words[0] != "deb":
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words = words[1:]
                    words = words[1:]
                if len(words) >= 2:
                    yield words[0], {words[1]}


def _write_apt_config(apt_dir: Path, main: str, security: str) -> Path:
    """A self-contained apt configuration: arm64 only, its own sources/lists/archives, an empty dpkg status."""
    for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "etc/trusted.gpg.d",
                "state/lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "state" / "status").write_text("")
    opts = f"[arch={ARCH} signed-by={_KEYRING}]"
    (apt_dir / "etc" / "sources.list").write_text(
        f"deb {opts} {main} {SUITE} main\ndeb {opts} {main} {SUITE}-updates main\n"
        f"deb {opts} {security} {SUITE}-security main\n")
    d = str(apt_dir)
    lines = [
        f'Dir::Etc "{d}/etc";', f'Dir::Etc::SourceList "{d}/etc/sources.list";',
        f'Dir::Etc::SourceParts "{d}/etc/sources.list.d";', f'Dir::Etc::Parts "{d}/etc/apt.conf.d";',
        f'Dir::Etc::PreferencesParts "{d}/etc/preferences.d";', f'Dir::Etc::TrustedParts "{d}/etc/trusted.gpg.d";',
        f'Dir::State "{d}/state";', f'Dir::State::status "{d}/state/status";', f'Dir::Cache "{d}/cache";',
        'Dir::Cache::pkgcache "";', 'Dir::Cache::srcpkgcache "";',
        f'APT::Architecture "{ARCH}";', f'APT::Architectures {{ "{ARCH}"; }};', 'Acquire::Languages "none";',
        *_host_apt_proxies(),
    ]
    if os.geteuid() == 0:
        lines.append('APT::Sandbox::User "root";')  # _apt may not be able to enter the cache (e.g. under /root)
    conf = apt_dir / "apt.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _host_apt_proxies() -> list[str]:
    """The host apt's proxy settings (Acquire::http(s)::Proxy...), carried into the private configuration."""
    try:
        out = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.splitlines() if re.match(r"Acquire::https?::Proxy\b", line)]


def _apt_fetched_bytes(output: str) -> int:
    """What apt says it fetched ("Fetched 9,613 kB in 1s"), in bytes."""
    m = re.search(r"Fetched ([\d.,]+) ([kMG]?)B", output)
    if not m:
        return 0
    return int(float(m.group(1).replace(",", "")) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)])


def _deb_key() -> str:
    return _hash({"suite": SUITE, "arch": ARCH, "debs": DEBS})


def _wheel_key() -> str:
    return _hash({"wheels": WHEELS, "platforms": WHEEL_PLATFORMS, "python": "cp311"})


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _complete(folder: Path, key: str, pattern: str) -> list[Path] | None:
    """The folder's files when a finished download with this key is there."""
    stamp = folder / ".complete"
    try:
        if stamp.read_text() == key:
            files = sorted(folder.glob(pattern))
            return files or None
    except OSError:
        pass
    return None


def _read_marker(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run(cmd: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 600, hint: str = "") -> subprocess.CompletedProcess[str]:
    """Run a provisioning step; EdgeshipError with the tail of its output when it fails."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise EdgeshipError(f"{what}: {cmd[0]} not found; emu-pi provisioning needs it") from exc
    except subprocess.TimeoutExpired as exc:
        raise EdgeshipError(f"{what} did not finish within {timeout:.0f} s" + (f"; {hint}" if hint else "")) from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise EdgeshipError(f"{what} failed (exit status {proc.returncode}): {tail[:600]}" + (f"; {hint}" if hint else ""))
    return proc


def _qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "version unknown"
    return out.strip().splitlines()[0] if out.strip() else "version unknown"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One provisioning at a time per cache (parallel test runs share it)."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _replace_dir(new: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _atomic_write(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _mb(files: Sequence[Path]) -> str:
    return f"{sum(p.stat().st_size for p in files) / 1e6:.1f}"
