"""External delegates, only from the board's own allow-list.

A delegate is a shared library the runtime dlopen()s: code. The agent runs no code the host
sends, so a run request names a delegate by NAME and the agent maps the name to a library on
a list that lives on the board, set by its operator at start and never by the wire:

- ``--allow-delegate NAME=PATH`` flags (repeatable), and
- a JSON file, ``--delegate-config FILE``, else ``~/.edgeship/agent-delegates.json`` when it
  exists: ``{"delegates": {"edgetpu": "libedgetpu.so.1", "vx": "/usr/lib/libvx_delegate.so"}}``.

PATH is absolute, or a bare library name the system's loader finds (``libedgetpu.so.1``). A
path inside the agent's store (where uploaded blobs live), after resolving symlinks, is never
allowed: the agent refuses to start with one. A request naming a path, or a name not on the
list, is refused (``bad_request``) with the allowed names; options are string keys and values,
bounded in count and size. Text sent back to the peer names the delegate, never its library
path or any other board path.

``hello`` says which allowed delegates load: each is loaded once, at the first hello, in a
child process (a library whose constructor crashes costs that child, not the agent).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

DEFAULT_CONFIG = "~/.edgeship/agent-delegates.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
OPTION_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_REQUESTED = 4  # delegates in one run request
MAX_OPTIONS = 16  # options per delegate
MAX_VALUE = 256  # characters in one option value
PROBE_TIMEOUT = 30.0  # seconds for one child to load the allowed delegates at the first hello
_PATHLIKE = re.compile(r"(?:~|\.{0,2})?/[^\s'\"(),:;]*")


class AllowListError(Exception):
    """The operator's allow-list is wrong (a bad flag or file, a library in the store): the agent does not start."""


class DelegateRefused(ValueError):
    """A run request's delegates are not acceptable: the agent answers bad_request with this message."""


class DelegateRequired(Exception):
    """A delegate the request requires did not load or could not be applied (status delegate_failed)."""


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_library(name: str, library: str, store_dir: Path) -> str:
    """The library for NAME as the runtime gets it; AllowListError if it may not be allowed."""
    if not NAME.match(name):
        raise AllowListError(f"delegate name {name!r}: use 1-32 letters, digits, '_', '.', '-' (starting with a "
                             f"letter or digit)")
    text = os.path.expanduser(library.strip())
    if not text or "\0" in text:
        raise AllowListError(f"delegate {name}: give the library's absolute path or a bare library name")
    store = Path(os.path.realpath(store_dir))
    if "/" not in text:  # a bare name: the system's loader searches its own library path
        for folder in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":")):
            if _inside(Path(os.path.realpath(folder)), store):
                raise AllowListError(f"delegate {name}: LD_LIBRARY_PATH reaches into the agent's store {store_dir}; "
                                     f"a library from the store can never be allowed")
        return text
    if not text.startswith("/"):
        raise AllowListError(f"delegate {name}: library {library!r} is a relative path; give an absolute one")
    for candidate in (Path(os.path.abspath(text)), Path(os.path.realpath(text))):
        if _inside(candidate, store):
            raise AllowListError(f"delegate {name}: library {library} is inside the agent's store {store_dir} "
                                 f"(uploaded blobs live there); a library from the store can never be allowed")
    return text


def parse_flag(flag: str) -> Tuple[str, str]:
    """`NAME=PATH` of one --allow-delegate flag."""
    name, sep, library = flag.partition("=")
    if not sep or not name.strip() or not library.strip():
        raise AllowListError(f"--allow-delegate {flag!r}: expected NAME=PATH, e.g. edgetpu=libedgetpu.so.1")
    return name.strip(), library.strip()


def read_config(path: Path) -> List[Tuple[str, str]]:
    """(name, library) pairs of a delegate config file: {"delegates": {"NAME": "PATH", ...}}."""
    try:
        if os.stat(path).st_mode & 0o002:
            raise AllowListError(f"{path}: anyone can write this delegate config; chmod o-w it")
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AllowListError(f"{path}: cannot read the delegate config ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise AllowListError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) - {"delegates"} or not isinstance(doc.get("delegates", {}), dict):
        raise AllowListError(f'{path}: expected {{"delegates": {{"NAME": "PATH", ...}}}}')
    pairs = []
    for name, library in doc.get("delegates", {}).items():
        if not isinstance(library, str):
            raise AllowListError(f"{path}: delegate {name!r}: the library must be a string (a path or a library name)")
        pairs.append((str(name), library))
    return pairs


def load_allow_list(flags: Iterable[str], config: Optional[Path], store_dir: Path) -> Dict[str, str]:
    """NAME -> library from the flags and the config file (given, else the default one if it exists)."""
    pairs = [parse_flag(f) for f in flags]
    if config is None:
        default = Path(DEFAULT_CONFIG).expanduser()
        config = default if default.is_file() else None
    if config is not None:
        pairs += read_config(Path(config).expanduser())
    allowed: Dict[str, str] = {}
    for name, library in pairs:
        if name in allowed:
            raise AllowListError(f"delegate {name} is allowed twice; give each name once")
        allowed[name] = check_library(name, library, store_dir)
    return allowed


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class AllowList:
    """The delegates this agent may load, by name; validates run requests against it."""

    def __init__(self, allowed: Dict[str, str], store_dir: Path) -> None:
        self.store_dir = store_dir
        self.allowed = {name: check_library(name, lib, store_dir) for name, lib in allowed.items()}
        self._probed: Optional[List[Dict[str, Any]]] = None

    def _names(self) -> str:
        if not self.allowed:
            return ("none (the board's operator allows delegates with --allow-delegate NAME=PATH or "
                    f"{DEFAULT_CONFIG})")
        return ", ".join(sorted(self.allowed))

    def resolve(self, value: Any) -> List[Dict[str, Any]]:
        """The worker's delegate specs for a run's `delegates` option; DelegateRefused says what is wrong."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise DelegateRefused("option delegates must be a list of {name, options, required}")
        if len(value) > MAX_REQUESTED:
            raise DelegateRefused(f"option delegates: at most {MAX_REQUESTED} delegates in one run")
        specs: List[Dict[str, Any]] = []
        for item in value:
            if not isinstance(item, dict):
                raise DelegateRefused("option delegates: each entry is an object {name, options, required}")
            name = item.get("name")
            if "library" in item or "path" in item or (isinstance(name, str) and "/" in name):
                raise DelegateRefused(f"delegates are named from the board's allow-list, never given by path; "
                                      f"this board allows: {self._names()}")
            unknown = sorted(str(k) for k in item if k not in ("name", "options", "required"))
            if unknown:
                raise DelegateRefused(f"option delegates: unknown key(s) {_show(', '.join(unknown))}; "
                                      f"an entry has name, options, required")
            if not isinstance(name, str) or name not in self.allowed:
                raise DelegateRefused(f"delegate {_show(name)} is not on this board's allow-list; "
                                      f"this board allows: {self._names()}")
            if any(s["name"] == name for s in specs):
                raise DelegateRefused(f"delegate {name} is named twice")
            required = item.get("required", False)
            if not isinstance(required, bool):
                raise DelegateRefused(f"delegate {name}: required must be true or false")
            library = check_library(name, self.allowed[name], self.store_dir)  # again: a symlink may have moved
            specs.append({"name": name, "library": library, "options": _options(name, item.get("options")),
                          "required": required})
        return specs

    def hello(self, runtime: Optional[str], memory_limit: int) -> List[Dict[str, Any]]:
        """[{name, loaded, error?}] for every allowed delegate: probed once, in child processes."""
        if self._probed is None:
            if runtime == "tflite_micro":
                self._probed = [{"name": n, "loaded": False, "error": "the tflite_micro runtime takes no delegates"}
                                for n in sorted(self.allowed)]
            elif not self.allowed:
                self._probed = []
            else:
                try:
                    self._probed = probe(self.allowed, runtime, memory_limit)
                except ImportError as exc:  # no numpy on the board: hello still answers, and says so
                    self._probed = [{"name": n, "loaded": False, "error": f"not probed: {type(exc).__name__}: {exc}"}
                                    for n in sorted(self.allowed)]
        return [dict(d) for d in self._probed]


def _options(name: str, value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DelegateRefused(f"delegate {name}: options must be an object of string keys and values")
    if len(value) > MAX_OPTIONS:
        raise DelegateRefused(f"delegate {name}: at most {MAX_OPTIONS} options")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not OPTION_KEY.match(key):
            raise DelegateRefused(f"delegate {name}: option key {_show(key)}: use 1-64 letters, digits, '_', '.', '-'")
        if not isinstance(val, str) or len(val) > MAX_VALUE or not val.isprintable():
            raise DelegateRefused(f"delegate {name}: option {key} must be a printable string of at most "
                                  f"{MAX_VALUE} characters")
        out[key] = val
    return out


def scrub(text: str, name: str, library: str) -> str:
    """`text` (a loader's or a delegate's message) fit for the peer: the library shown as NAME, no board paths."""
    for path in {library, os.path.realpath(library) if "/" in library else library} - {""}:
        text = text.replace(path, f"<{name}>")
    text = _PATHLIKE.sub("<path>", text)
    return " ".join(text.split())[:300]


def load(rt: Any, resolved: List[Dict[str, Any]]) -> Tuple[List[Any], List[Dict[str, Any]], List[str]]:
    """Load the requested delegates: (delegate objects, [{name, options, loaded, applied}], notes); DelegateRequired.

    ``resolved`` is what AllowList.resolve made of the request: each entry's ``library`` is the board's
    allow-list path for its name, never a value from the wire.
    """
    from edgeship.device_agent.runtime import quiet_native_stderr

    objects: List[Any] = []
    report: List[Dict[str, Any]] = []
    notes: List[str] = []
    for entry in resolved:
        try:
            with quiet_native_stderr():
                objects.append(rt.load_delegate(entry["library"], dict(entry.get("options") or {})))
            report.append({"name": entry["name"], "options": entry.get("options") or {}, "loaded": True, "applied": True})
        except (ValueError, OSError, RuntimeError, AttributeError) as exc:
            why = scrub(f"{type(exc).__name__}: {exc}", entry["name"], entry["library"])
            report.append({"name": entry["name"], "options": entry.get("options") or {}, "loaded": False,
                           "applied": False})
            if entry.get("required"):
                raise DelegateRequired(f"delegate {entry['name']} failed to load ({why}) and the request requires it") from exc
            notes.append(f"delegate {entry['name']} failed to load ({why}); running without it")
    return objects, report, notes


def partition(ops: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Which of the model's nodes the delegates took, from the interpreter's node list after delegation.

    The runtime lists the model's own nodes, then one DELEGATE node per partition, whose inputs and
    outputs are the partition's boundary tensors. A node is in a partition when walking back from
    the partition's outputs, through producers, reaches it before reaching a partition input.
    """
    ops = [{**o, "index": o.get("index", i)} for i, o in enumerate(ops)]  # every runtime lists them in order
    original = [o for o in ops if o.get("op_name") != "DELEGATE"]
    producer = {int(t): o for o in original for t in o.get("outputs", [])}
    taken: Dict[int, str] = {}
    for d in (o for o in ops if o.get("op_name") == "DELEGATE"):
        boundary = {int(t) for t in d.get("inputs", [])}
        todo = [int(t) for t in d.get("outputs", [])]
        seen = set()
        while todo:
            t = todo.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            node = producer[t]
            taken[int(node["index"])] = str(node.get("op_name", ""))
            todo.extend(int(i) for i in node.get("inputs", []) if int(i) >= 0)
    taken_ops: Dict[str, int] = {}
    for op in taken.values():
        taken_ops[op] = taken_ops.get(op, 0) + 1
    left = sorted({str(o.get("op_name", "")) for o in original if int(o["index"]) not in taken})
    return {"delegate_kernels": len(ops) - len(original), "nodes": len(original), "nodes_taken": len(taken),
            "taken_ops": dict(sorted(taken_ops.items())), "cpu_ops": left}


# --------------------------------------------------------------------------- the hello probe
def _ending(rc: int) -> str:
    if rc >= 0:
        return f"exit status {rc}"
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def probe_main() -> None:
    """Child: load each delegate of the JSON request on stdin once; one JSON line before and after each."""
    req = json.loads(sys.stdin.read())
    from edgeship.device_agent.runtime import RuntimeNotFound, load_runtime, quiet_native_stderr

    try:
        rt = load_runtime(req.get("runtime"))
    except RuntimeNotFound:
        for d in req["delegates"]:
            print(json.dumps({"name": d["name"], "loaded": False, "error": "no TFLite runtime on the board"}), flush=True)
        return
    for d in req["delegates"]:
        print(json.dumps({"probing": d["name"]}), flush=True)
        try:
            with quiet_native_stderr():
                delegate = rt.load_delegate(d["library"], {})
            del delegate
            line: Dict[str, Any] = {"name": d["name"], "loaded": True}
        except Exception as exc:  # whatever a foreign library's loader raises: reported, never fatal
            line = {"name": d["name"], "loaded": False, "error": scrub(f"{type(exc).__name__}: {exc}", d["name"], d["library"])}
        print(json.dumps(line), flush=True)


def probe(allowed: Dict[str, str], runtime: Optional[str], memory_limit: int) -> List[Dict[str, Any]]:
    """[{name, loaded, error?}] for each allowed delegate, each loaded (with no options) in a child process.

    A delegate that crashes or hangs its child is reported as not loading; the rest are probed
    in a fresh child.
    """
    from edgeship.device_agent.child import child_command, json_lines, kill, limit_memory

    results: Dict[str, Dict[str, Any]] = {}
    todo = sorted(allowed)
    while todo:
        req = {"runtime": runtime, "delegates": [{"name": n, "library": allowed[n]} for n in todo]}
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        proc = subprocess.Popen(child_command("edgeship.device_agent.delegates", "probe_main"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                preexec_fn=limit_memory(memory_limit))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(req).encode())
        proc.stdin.close()
        current: Optional[str] = None
        buf = b""
        deadline = time.monotonic() + PROBE_TIMEOUT
        timed_out = True
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 14)
            if not chunk:
                timed_out = False
                break
            lines, buf = json_lines(buf + chunk)
            for line in lines:
                if "probing" in line:
                    current = str(line["probing"])
                elif line.get("name") in allowed:
                    results[str(line["name"])] = {k: line[k] for k in ("name", "loaded", "error") if k in line}
                    current = None
        if timed_out:
            kill(proc)
        rc = proc.wait()
        if current is not None and current not in results:
            how = (f"did not load within {PROBE_TIMEOUT:.0f} s" if timed_out else
                   f"crashed the loading process ({_ending(rc)})")
            results[current] = {"name": current, "loaded": False, "error": how}
        remaining = [n for n in todo if n not in results]
        if remaining == todo:  # the child died before it started on any: say so for all
            for n in remaining:
                results[n] = {"name": n, "loaded": False, "error": "the loading process failed before it reached it"}
            remaining = []
        todo = remaining
    return [results[n] for n in sorted(allowed)]
