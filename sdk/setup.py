"""`edgeship boards setup BOARD`: bring a board from a bare Python to one that runs models.

For an SSH board, one small probe (the board's Python running a constant script) says what
is there: the interpreter's version and arch, whether it is externally managed (PEP 668),
numpy, the TFLite runtimes that import, and the same for edgeship's venv on the board
(``~/.edgeship/venv``, under :data:`sdk.transport.ssh.AGENT_DIR`). From that a plan follows:

1. ``venv``: create the venv with the board's Python (never a system-wide pip install);
2. ``install``: numpy and the best runtime with a wheel for that Python and arch
   (:func:`runtime_candidates`: ai-edge-litert, else tflite-runtime with numpy < 2), pip on
   the board choosing the wheel; a board whose pip cannot reach the index gets the exact
   lines to do it by hand instead (:func:`offline_lines`);
3. ``agent``: place the agent zipapp (:func:`sdk.transport.ssh.place_agent`, hash-checked);

then a ping with the venv's interpreter shows the runtime. Steps already in place are not
run again, so a second run changes nothing; ``dry_run`` returns the plan and changes nothing.
Every remote command line is built from constants and ``shlex.quote``-d values only.

A serial board cannot be reached before its agent runs, so for it the steps are returned
as text (:func:`serial_steps`): the zipapp, the venv, and the systemd unit of
docs/protocol.md section 9.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from edgeship.sdk import boards
from edgeship.sdk.boards import Board
from edgeship.sdk.errors import BoardSetupError, UsageError

VENV_DIR = "venv"  # under the board's edgeship directory
PROBE_TIMEOUT_S = 120.0  # the probe imports the runtimes: seconds on a Pi, more under emulation
PIP_SILENCE_S = 300.0  # the longest a pip install on the board may print nothing (a slow wheel unpack)
PIP_NETWORK_TIMEOUT_S = 15  # pip's own --timeout per connection: a board without the index fails fast
_MARKER = "EDGESHIP-PROBE "

# The wheels that exist on the package index (checked with `pip index versions --python-version X
# --platform P` in 2026-12): ai-edge-litert has manylinux_2_27 wheels for x86_64 and aarch64,
# CPython 3.9 (up to 2.1.0) and 3.10-3.13 (2.3.0); tflite-runtime 2.14 has manylinux2014 wheels for
# x86_64 and aarch64 on 3.9-3.11, and 2.13 armv7l wheels on 3.9-3.10; tflite-runtime needs numpy < 2.
LITERT = ("numpy", "ai-edge-litert")
TFLITE_RUNTIME = ("numpy<2", "tflite-runtime")

# pip's words for "the index could not be reached" (pip and urllib3 messages; any one is enough).
_OFFLINE_SIGNS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "Read timed out",
                  "ProxyError", "Could not fetch URL", "No route to host", "Connection refused")
_NO_WHEEL_SIGNS = ("No matching distribution found for", "Could not find a version that satisfies the requirement")

# The probe: runs on the board under the given Python (3.9+; nothing but the standard library),
# writes no files, and prints one marked JSON line. FACTS describes the interpreter running it; the
# probe runs it for itself and, in a child process, for edgeship's venv if there is one.
_FACTS = r'''
import importlib, importlib.util, json, os, platform, sys, sysconfig
sys.dont_write_bytecode = True
def _dist(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None
def _load(module, top, dist):
    try:
        importlib.import_module(module)
        return {"ok": True, "version": getattr(sys.modules[top], "__version__", None) or _dist(dist)}
    except Exception as exc:
        return {"ok": False, "error": (type(exc).__name__ + ": " + str(exc))[:300]}
def facts():
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
    return {
        "executable": sys.executable, "version": list(sys.version_info[:3]),
        "implementation": platform.python_implementation(), "machine": platform.machine(),
        "libc": list(platform.libc_ver()), "prefix": sys.prefix, "in_venv": in_venv,
        "externally_managed": os.path.isfile(marker) and not in_venv,
        "venv_module": all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip")),
        "numpy": _load("numpy", "numpy", "numpy"),
        "runtimes": {"ai_edge_litert": _load("ai_edge_litert.interpreter", "ai_edge_litert", "ai-edge-litert"),
                     "tflite_runtime": _load("tflite_runtime.interpreter", "tflite_runtime", "tflite-runtime")},
        "tensorflow": importlib.util.find_spec("tensorflow") is not None,
    }
'''
_PROBE = r'''
import json, os, subprocess, sys
sys.dont_write_bytecode = True
FACTS = @FACTS@
g = {}
exec(FACTS, g)
home = os.path.abspath(os.path.expanduser(sys.argv[1]))
venv = os.path.join(home, "@VENV@")
vpy = os.path.join(venv, "bin", "python")
out = {"probe": 1, "python": g["facts"](), "edgeship_dir": home, "venv_dir": venv, "venv_python": vpy,
       "venv_exists": os.path.isdir(venv), "venv": None}
if os.path.abspath(sys.prefix) == venv:
    out["venv"] = out["python"]
elif os.path.isfile(vpy):
    try:
        r = subprocess.run([vpy, "-B", "-c", FACTS + "\nprint(json.dumps(facts()))"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=float(sys.argv[2]))
        out["venv"] = json.loads(r.stdout.decode().strip().splitlines()[-1])
    except Exception as exc:
        out["venv_error"] = (type(exc).__name__ + ": " + str(exc))[:300]
print("@MARKER@" + json.dumps(out))
'''
_PROBE_SOURCE = (_PROBE.replace("@FACTS@", repr(_FACTS)).replace("@VENV@", VENV_DIR)
                 .replace("@MARKER@", _MARKER))
# One line of base64 characters: a single word for any login shell (sh, bash, zsh, fish, csh).
PROBE = "import base64;exec(base64.b64decode(\"" + base64.b64encode(_PROBE_SOURCE.encode()).decode() + "\"))"


@dataclass(frozen=True)
class Interpreter:
    """What the probe found out about one Python on the board."""

    executable: str
    version: tuple[int, int, int]
    machine: str
    libc: tuple[str, str]
    in_venv: bool
    externally_managed: bool
    venv_module: bool
    numpy: Optional[str]  # its version, None when it does not import
    runtimes: dict[str, str]  # the runtimes that import, with their versions
    problems: dict[str, str]  # what failed to import, and why (numpy, a runtime)

    @property
    def ready(self) -> bool:
        """numpy and a TFLite runtime import: the agent can run models."""
        return self.numpy is not None and bool(self.runtimes)

    @property
    def short_version(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def describe(self) -> str:
        parts = [f"Python {'.'.join(map(str, self.version))} on {self.machine}"]
        parts.append(f"numpy {self.numpy}" if self.numpy else "no numpy")
        parts.append(", ".join(f"{n} {v}" for n, v in self.runtimes.items()) if self.runtimes else "no TFLite runtime")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"executable": self.executable, "version": ".".join(map(str, self.version)), "machine": self.machine,
                "libc": " ".join(self.libc).strip(), "in_venv": self.in_venv,
                "externally_managed": self.externally_managed, "venv_module": self.venv_module,
                "numpy": self.numpy, "runtimes": dict(self.runtimes), "problems": dict(self.problems)}


@dataclass(frozen=True)
class Probe:
    """The board's Python, and edgeship's venv on the board (None when it has no interpreter yet)."""

    python: Interpreter
    edgeship_dir: str
    venv_dir: str
    venv_python: str
    venv_exists: bool
    venv: Optional[Interpreter]

    def as_dict(self) -> dict[str, Any]:
        return {"python": self.python.as_dict(), "edgeship_dir": self.edgeship_dir, "venv_dir": self.venv_dir,
                "venv_python": self.venv_python, "venv": self.venv.as_dict() if self.venv else None}


@dataclass(frozen=True)
class Step:
    """One thing setup does on the board; ``needed`` False when it is in place already."""

    action: str  # python (the given one is ready) | venv | install | agent
    what: str
    command: str  # the remote command line, as run (or what places the file)
    needed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "what": self.what, "command": self.command, "needed": self.needed}


@dataclass
class Plan:
    """What setup will do (or did) to a board, and the interpreter its board entry should name."""

    board: Board
    probe: Probe
    python: str  # the interpreter the agent runs with after setup (python=)
    candidates: list[tuple[str, ...]]  # package sets to try, best first (empty: nothing to install)
    steps: list[Step] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return any(s.needed for s in self.steps)


def runtime_candidates(version: tuple[int, ...], machine: str, libc: tuple[str, str]) -> list[tuple[str, ...]]:
    """The package sets (numpy + a runtime) that have wheels for this Python and arch, best first (see the table above)."""
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine.lower())
    minor = tuple(version[:2])
    glibc = _glibc(libc)
    if libc[0] and glibc is None:  # musl or another libc: no manylinux wheel installs there
        return []
    out: list[tuple[str, ...]] = []
    if arch in ("x86_64", "aarch64") and minor >= (3, 9) and (glibc is None or glibc >= (2, 27)):
        out.append(LITERT)
    if (arch in ("x86_64", "aarch64") and (3, 9) <= minor <= (3, 11)) or (arch == "armv7l" and (3, 9) <= minor <= (3, 10)):
        out.append(TFLITE_RUNTIME)
    return out


def _glibc(libc: tuple[str, str]) -> Optional[tuple[int, int]]:
    name, ver = libc
    if name != "glibc":
        return None
    try:
        major, minor = ver.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


# -- the probe ----------------------------------------------------------------------------------


def probe_command(python: str) -> str:
    """The one remote command line of the probe: constants and quoted values only."""
    from edgeship.sdk.transport import ssh

    return " ".join([shlex.quote(python), "-c", shlex.quote(PROBE), shlex.quote(ssh.AGENT_DIR),
                     str(int(PROBE_TIMEOUT_S))])


def run_probe(client: Any, board: Board) -> Probe:
    """Run the probe with the board's Python and read its answer (validated: the board is not trusted)."""
    from edgeship.sdk.transport.ssh import run_command

    status, out = run_command(client, probe_command(board.python), timeout=PROBE_TIMEOUT_S,
                              label=f"{board.python} -c <edgeship probe>")
    lines = [line for line in out.splitlines() if line.startswith(_MARKER)]
    if status != 0 or not lines:
        tail = " | ".join(out.strip().splitlines()[-5:])
        raise BoardSetupError(f"{board.name}: the board's Python ({board.python}) did not run edgeship's probe "
                              f"(exit status {status}): {tail or 'no output'}. Check that python= names a Python 3.9+ "
                              f"on the board (e.g. python=/usr/bin/python3).")
    try:
        doc = json.loads(lines[-1][len(_MARKER):])
        return _read_probe(doc)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise BoardSetupError(f"{board.name}: the board's probe answered something edgeship cannot read "
                              f"({type(exc).__name__}: {exc}).") from exc


def _read_probe(doc: dict[str, Any]) -> Probe:
    def text(v: Any) -> str:
        if not isinstance(v, str):
            raise TypeError(f"expected a string, got {type(v).__name__}")
        return v

    venv = doc.get("venv")
    return Probe(python=_read_interpreter(doc["python"]), edgeship_dir=text(doc["edgeship_dir"]),
                 venv_dir=text(doc["venv_dir"]), venv_python=text(doc["venv_python"]),
                 venv_exists=bool(doc["venv_exists"]), venv=_read_interpreter(venv) if isinstance(venv, dict) else None)


def _read_interpreter(d: dict[str, Any]) -> Interpreter:
    version = tuple(int(x) for x in d["version"][:3])
    if len(version) != 3:
        raise ValueError("version must have three numbers")
    problems: dict[str, str] = {}
    numpy = None
    if d["numpy"].get("ok"):
        numpy = str(d["numpy"].get("version") or "unknown")
    else:
        problems["numpy"] = str(d["numpy"].get("error", ""))
    runtimes: dict[str, str] = {}
    for name in ("ai_edge_litert", "tflite_runtime"):
        r = d["runtimes"][name]
        if r.get("ok"):
            runtimes[name] = str(r.get("version") or "unknown")
        else:
            problems[name] = str(r.get("error", ""))
    libc = [*(str(x) for x in d["libc"][:2]), "", ""]
    return Interpreter(executable=str(d["executable"]), version=(version[0], version[1], version[2]),
                       machine=str(d["machine"]), libc=(libc[0], libc[1]), in_venv=bool(d["in_venv"]),
                       externally_managed=bool(d["externally_managed"]), venv_module=bool(d["venv_module"]),
                       numpy=numpy, runtimes=runtimes, problems=problems)


# -- the plan -----------------------------------------------------------------------------------


def pip_command(python: str, packages: tuple[str, ...]) -> str:
    """The board's pip install line: wheels only (no hour-long source build on a board), bounded network waits."""
    return " ".join([shlex.quote(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                     "--progress-bar", "off", "--only-binary", ":all:", "--timeout", str(PIP_NETWORK_TIMEOUT_S),
                     "--retries", "1", *(shlex.quote(p) for p in packages)])


def make_plan(board: Board, probe: Probe, agent_missing: bool) -> Plan:
    """Decide what to do from the probe: nothing that is in place already."""
    from edgeship.sdk.transport import ssh

    given = probe.python
    agent_step = Step("agent", "place the agent zipapp (sha256-checked on the board)",
                      f"sftp {ssh.AGENT_DIR}/agent-<sha256>.pyz", agent_missing)
    if given.ready:
        return Plan(board, probe, board.python, [], [Step("python", f"{board.python}: {given.describe()}", "", False),
                                                      agent_step])
    target = probe.venv_python
    if not boards._SAFE_PYTHON.fullmatch(target):
        raise BoardSetupError(f"{board.name}: the venv's interpreter would be {target!r}, a path with characters "
                              f"edgeship does not pass to a remote shell; give the board's login user a plain home "
                              f"directory.")
    steps: list[Step] = []
    venv = probe.venv
    basis = venv or given
    if venv is None:
        if not given.venv_module:
            raise BoardSetupError(
                f"{board.name}: {board.python} (Python {given.short_version}) has no venv/ensurepip module, so "
                f"edgeship cannot make its venv. Install it on the board (Debian, Raspberry Pi OS: "
                f"sudo apt install python{given.short_version}-venv), then run `edgeship boards setup` again.")
        if probe.venv_exists:
            raise BoardSetupError(f"{board.name}: {probe.venv_dir} exists on the board but has no bin/python; "
                                  f"remove it (rm -r {shlex.quote(probe.venv_dir)}) and run setup again.")
        steps.append(Step("venv", f"create the venv {probe.venv_dir}",
                          " ".join([shlex.quote(board.python), "-m", "venv", shlex.quote(probe.venv_dir)]), True))
    candidates: list[tuple[str, ...]] = []
    if venv is not None and venv.ready:
        steps.append(Step("venv", f"the venv {probe.venv_dir}: {venv.describe()}", "", False))
    else:
        candidates = runtime_candidates(basis.version, basis.machine, basis.libc)
        if not candidates:
            raise BoardSetupError(
                f"{board.name}: no TFLite runtime has a wheel for Python {basis.short_version} on {basis.machine} "
                f"(ai-edge-litert: 64-bit x86_64/aarch64 with glibc 2.27+; tflite-runtime: Python 3.9-3.11, or "
                f"3.9-3.10 on armv7l). Use a Python the board offers in that range (python=...), or build "
                f"tflite-runtime for it.")
        fallback = f" (if no wheel: {' '.join(candidates[1])})" if len(candidates) > 1 else ""
        steps.append(Step("install", f"install {' '.join(candidates[0])} into the venv{fallback}",
                          pip_command(target, candidates[0]), True))
    steps.append(agent_step)
    return Plan(board, probe, target, candidates, steps)


def offline_lines(board: Board, plan: Plan) -> list[str]:
    """What to type when the board's pip cannot reach the index: download the wheels here, copy them, install there."""
    basis = plan.probe.venv or plan.probe.python
    packages = plan.candidates[0] if plan.candidates else LITERT
    arch = {"arm64": "aarch64"}.get(basis.machine, basis.machine)
    glibc = _glibc(basis.libc)
    if arch == "armv7l":
        platforms = ["manylinux2014_armv7l", "linux_armv7l"]
    elif glibc is not None and glibc >= (2, 27):
        platforms = [f"manylinux_2_27_{arch}", f"manylinux2014_{arch}"]
    else:
        platforms = [f"manylinux2014_{arch}"]
    wheels = f"{plan.probe.edgeship_dir}/wheels"
    login = f"{board.user}@{board.host}" if board.user else board.host
    port = f"-P {board.port} " if board.port != 22 else ""
    quoted = " ".join(shlex.quote(p) for p in packages)
    lines = ["# on a machine that reaches the package index:",
             "python3 -m pip download --only-binary :all: --python-version " + basis.short_version + " "
             + " ".join(f"--platform {p}" for p in platforms) + f" -d edgeship-wheels {quoted}",
             f"scp {port}-r edgeship-wheels {shlex.quote(login + ':' + wheels)}",
             "# then on the board:"]
    if plan.probe.venv is None:
        lines.append(f"{shlex.quote(plan.board.python)} -m venv {shlex.quote(plan.probe.venv_dir)}")
    lines.append(f"{shlex.quote(plan.python)} -m pip install --no-index --find-links {shlex.quote(wheels)} {quoted}")
    lines.append("# then run `edgeship boards setup` again: it places the agent and pings the board")
    return lines


# -- running it ---------------------------------------------------------------------------------


def board_line(board: Board, python: str) -> str:
    """How the board entry names the set-up interpreter: the inline URL with python=, or a boards.yaml line."""
    if board.spec is not None or not board.name.startswith("ssh://"):
        return f"python: {python}"
    parts = urlsplit(board.name)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query["python"] = python
    return urlunsplit(parts._replace(query=urlencode(query, safe="/~")))


def setup_board(board: Board, *, dry_run: bool = False, accept_new_host: bool = False,
                say: Callable[[str], None] | None = None, serial_device: str = "ttyS0") -> dict[str, Any]:
    """Prepare ``board`` to run models (see the module docstring); the plan and what happened, as one document."""
    say = say or (lambda _m: None)
    if board.transport == "serial":
        return serial_steps(board, serial_device)
    if board.transport != "ssh":
        how = ("it runs on this machine's own Python" if board.transport == "local" else
               "edgeship starts it on this machine (`edgeship emulate setup` prepares the emulated boards)")
        raise UsageError(f"board {board.name!r} ({board.transport}): {how}, so it needs no setup. "
                         f"`boards setup` prepares SSH boards (and prints the steps for serial ones).")
    from edgeship.sdk.transport.ssh import place_agent, run_command

    client = boards.ssh_transport(board, accept_new_host=accept_new_host).connect()
    try:
        say("probing the board's Python")
        probe = run_probe(client, board)
        _, _, agent_missing = place_agent(client, check_only=True)
        plan = make_plan(board, probe, agent_missing)
        doc: dict[str, Any] = {"board": board.name, "transport": "ssh", "dry_run": dry_run, "probe": probe.as_dict(),
                               "steps": [s.as_dict() for s in plan.steps], "changed": False, "python": plan.python,
                               "board_line": board_line(board, plan.python), "installed": None, "ping": None}
        if dry_run:
            return doc
        for step in plan.steps:
            if not step.needed:
                continue
            say(step.what)
            if step.action == "venv":
                status, out = run_command(client, step.command, timeout=PIP_SILENCE_S, label=step.command)
                if status != 0:
                    raise BoardSetupError(f"{board.name}: `{step.command}` failed on the board (exit status "
                                          f"{status}): {_tail(out)}")
            elif step.action == "install":
                doc["installed"] = list(_install(client, board, plan, say))
            elif step.action == "agent":
                place_agent(client)
            doc["changed"] = True
    finally:
        client.close()
    say("pinging the agent")
    doc["ping"] = _ping(replace(board, python=plan.python), accept_new_host)
    return doc


def _install(client: Any, board: Board, plan: Plan, say: Callable[[str], None]) -> tuple[str, ...]:
    """pip-install the first candidate that has wheels and then imports; BoardSetupError with what to do otherwise."""
    from edgeship.sdk.transport.ssh import run_command

    for i, packages in enumerate(plan.candidates):
        command = pip_command(plan.python, packages)
        status, out = run_command(client, command, timeout=PIP_SILENCE_S, label=command)
        if status != 0:
            if any(sign in out for sign in _OFFLINE_SIGNS):
                raise BoardSetupError(f"{board.name}: pip on the board cannot reach the package index "
                                      f"({_tail(out, 2)}). Install by hand: " + " ; ".join(offline_lines(board, plan)))
            if not any(sign in out for sign in _NO_WHEEL_SIGNS):
                raise BoardSetupError(f"{board.name}: `{command}` failed on the board (exit status {status}): "
                                      f"{_tail(out)}")
            say(f"no wheel of {packages[-1]} for this Python and arch" + ("; trying the next runtime"
                                                                             if i + 1 < len(plan.candidates) else ""))
            continue
        venv = run_probe(client, replace(board, python=plan.python)).python
        if venv.ready:
            return packages
        say(f"{packages[-1]} installed but does not import ({'; '.join(venv.problems.values())})")
    raise BoardSetupError(f"{board.name}: none of {', '.join(p[-1] for p in plan.candidates)} could be installed "
                          f"and imported on the board; a dry run of the setup shows the probe's "
                          f"findings, or install a TFLite runtime into {plan.probe.venv_dir} by hand.")


def _ping(board: Board, accept_new_host: bool) -> dict[str, Any]:
    from edgeship.sdk.ping import ping_board

    info = ping_board(board, accept_new_host=accept_new_host).info or {}
    runtime = info.get("runtime")
    if not isinstance(runtime, dict) or not runtime.get("name"):
        raise BoardSetupError(f"{board.name}: the agent runs with {board.python} but reports no TFLite runtime; "
                              f"a dry run of the setup shows what the probe finds.")
    return info


def _tail(out: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in out.strip().splitlines()[-lines:]) or "no output"


# -- serial boards ------------------------------------------------------------------------------

# The unit of docs/protocol.md section 9 with the venv's interpreter; %I is the board's tty (ttyS0).
SYSTEMD_UNIT = """\
[Unit]
Description=edgeship agent on /dev/%I
BindsTo=dev-%i.device
After=dev-%i.device

[Service]
User=edgeship
# the user needs the serial device (Debian: the dialout group)
SupplementaryGroups=dialout
UMask=0077
ExecStart=/opt/edgeship/venv/bin/python /opt/edgeship/edgeship-agent.pyz --serial /dev/%I --baud {baud} \
--store /var/lib/edgeship/store
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def serial_steps(board: Board, serial_device: str = "ttyS0") -> dict[str, Any]:
    """What to do on a serial board, by hand (nothing can reach it before its agent runs): the steps as commands."""
    if not boards._SAFE_PYTHON.fullmatch(serial_device) or "/" in serial_device:
        raise UsageError(f"{serial_device!r}: give the board's tty name, e.g. ttyS0, ttyAMA0 or ttyUSB0",
                         option="serial_device")
    unit = SYSTEMD_UNIT.format(baud=board.baud)
    steps = [
        {"where": "host", "what": "build the agent and copy it to the board (scp, or the SD card)",
         "commands": ["edgeship agent build -o edgeship-agent.pyz"]},
        {"where": "board", "what": "a user for the agent, its directories, a venv with numpy and a TFLite runtime",
         "commands": ["sudo useradd --system --home-dir /var/lib/edgeship --create-home edgeship",
                      "sudo install -d -o edgeship -m 0700 /var/lib/edgeship/store",
                      "sudo install -d /opt/edgeship",
                      "sudo install -m 0644 edgeship-agent.pyz /opt/edgeship/edgeship-agent.pyz",
                      "sudo python3 -m venv /opt/edgeship/venv",
                      "sudo /opt/edgeship/venv/bin/python -m pip install numpy ai-edge-litert",
                      "# no ai-edge-litert wheel (32-bit armv7l, Python 3.9-3.10): "
                      "sudo /opt/edgeship/venv/bin/python -m pip install 'numpy<2' tflite-runtime"]},
        {"where": "board", "what": f"free /dev/{serial_device} from the serial console: a login getty (or the kernel "
                                   f"console) on the agent's port answers its frames with a login prompt",
         "commands": [f"sudo systemctl disable --now serial-getty@{serial_device}.service",
                      "# and remove console=serial0,115200 (or console=" + serial_device + ",...) from the kernel command "
                      "line (Raspberry Pi OS: /boot/firmware/cmdline.txt, or raspi-config > Interface Options > "
                      "Serial Port: login shell No, hardware Yes), then reboot"]},
        {"where": "board", "what": "keep the agent running: this systemd unit as "
                                   "/etc/systemd/system/edgeship-agent@.service (docs/protocol.md section 9)",
         "commands": [f"sudo systemctl enable --now edgeship-agent@{serial_device}"], "file": unit},
        {"where": "host", "what": "then check it from here",
         "commands": [f"edgeship boards ping {shlex.quote(board.name)}"]},
    ]
    return {"board": board.name, "transport": "serial", "dry_run": True, "device": serial_device,
            "unit_path": "/etc/systemd/system/edgeship-agent@.service", "unit": unit, "steps": steps,
            "changed": False}
