"""The board catalogue: boards.yaml, validated once against a versioned schema (docs/boards.md).

The shipped file lists the built-in boards and example profiles of real hardware. Two
user files add boards or replace earlier ones by name, in this order: the default user
file (``$XDG_CONFIG_HOME/edgeship/boards.yaml``, else ``~/.config/edgeship/boards.yaml``;
``edgeship boards add`` writes it), then the file of ``--boards PATH`` / ``EDGESHIP_BOARDS``.
Every problem is one error naming the file, the board and the key.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeship.sdk.errors import CatalogueError, UsageError

SCHEMA_VERSION = 1
def _shipped() -> Path:
    """The shipped boards.yaml: package data of `edgeship`, wherever that is installed (a wheel, --user,
    pipx, an editable install); in a checkout, edgeship/boards.yaml links to the top-level file, named here."""
    from importlib.resources import files

    return Path(str(files("edgeship") / "boards.yaml")).resolve()


SHIPPED = _shipped()
ENV_VAR = "EDGESHIP_BOARDS"
BOARD_ENV_VAR = "EDGESHIP_BOARD"  # the board of commands given no --board
#: What `boards add` accepts as a name: usable with --board as it stands (no commas, no "://", no spaces).
BOARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def user_file() -> Path:
    """The default user boards file, by the XDG base-directory rules (a relative $XDG_CONFIG_HOME is ignored)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path("~/.config").expanduser()
    return root / "edgeship" / "boards.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SSHParams(_Strict):
    host: str
    port: int = 22
    user: Optional[str] = None
    key: Optional[str] = None
    known_hosts: Optional[str] = None


class SerialParams(_Strict):
    url: str
    baud: int = 115200


class DelegateSpec(_Strict):
    # What runs ask for (--delegate NAME); the board's agent maps the name to a library on its allow-list.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    library: Optional[str] = None  # that library: a local board's agent is started allowing it (--allow-delegate)
    options: dict[str, str] = Field(default_factory=dict)
    input_types: Optional[list[Literal["int8", "uint8", "int16", "float32", "float16"]]] = None
    required: bool = False


class StoreSpec(_Strict):
    dir: str = "~/.edgeship/store"
    quota_mb: int = 512


class Constraints(_Strict):
    int8_only: bool = False
    allowed_ops: Optional[list[str]] = None
    max_model_bytes: Optional[int] = None
    arena_bytes: Optional[int] = None


class BoardSpec(_Strict):
    description: str
    transport: Literal["local", "ssh", "serial", "emulated"]
    ssh: Optional[SSHParams] = None
    serial: Optional[SerialParams] = None
    emulator: Optional[str] = None  # for transport: emulated, which emulator (emu-serial, emu-pi, emu-mcu)
    python: str = "python3"
    runtime: Optional[str] = None
    runtime_version: Optional[str] = None
    delegates: list[DelegateSpec] = Field(default_factory=list)
    custom_ops: list[str] = Field(default_factory=list)  # custom ops the board's runtime build registers
    arch: Optional[str] = None
    cores: Optional[int] = None
    ram_mb: Optional[int] = None
    store: StoreSpec = Field(default_factory=StoreSpec)
    constraints: Constraints = Field(default_factory=Constraints)
    example: bool = False  # a profile of real hardware: needs the user's address


class CatalogueFile(_Strict):
    schema_version: Literal[1]
    boards: dict[str, BoardSpec]


def _describe(err: dict[str, Any]) -> tuple[str | None, str]:
    loc = [str(p) for p in err["loc"]]
    board = loc[1] if len(loc) >= 2 and loc[0] == "boards" else None
    key = ".".join(loc[2:] if board else loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return board, f"unknown key '{key}'"
    if kind == "missing":
        return board, f"missing key '{key}'"
    return board, f"key '{key}': {err['msg']}"


def load_file(path: Path) -> dict[str, BoardSpec]:
    """One catalogue file, validated; CatalogueError names the file, the board and the key."""
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"{path}: no such boards file")
    return validate(_read_yaml(path), path)


def _read_yaml(path: Path, text: str | None = None) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text() if text is None else text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CatalogueError(f"{path}: not valid YAML{where}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{path}: cannot read it ({exc})") from exc


def validate(raw: Any, path: Path) -> dict[str, BoardSpec]:
    """A parsed catalogue document checked against the schema; errors name `path`, the board and the key."""
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}: expected a mapping with schema_version and boards")
    if raw.get("schema_version") not in (None, SCHEMA_VERSION):
        raise CatalogueError(f"{path}: schema_version {raw.get('schema_version')!r} is not supported "
                             f"(this edgeship reads {SCHEMA_VERSION})")
    try:
        parsed = CatalogueFile.model_validate(raw)
    except ValidationError as exc:
        board, what = _describe(dict(exc.errors()[0]))
        raise CatalogueError(f"{path}: " + (f"board '{board}': " if board else "") + what) from exc
    for name, spec in parsed.boards.items():
        needed = {"ssh": spec.ssh, "serial": spec.serial, "emulated": spec.emulator}
        if spec.transport in needed and needed[spec.transport] is None:
            key = "emulator" if spec.transport == "emulated" else spec.transport
            raise CatalogueError(f"{path}: board '{name}': missing key '{key}' (transport is {spec.transport})")
        for i, d in enumerate(spec.delegates):
            if spec.transport == "local" and not d.library:
                raise CatalogueError(f"{path}: board '{name}': missing key 'delegates.{i}.library' (a local board's "
                                     f"agent is started allowing that library under the name {d.name!r})")
    return dict(parsed.boards)


def catalogue_files(given: Path | None = None) -> list[Path]:
    """The files the catalogue is read from, later ones overriding earlier ones by board name.

    The shipped boards.yaml, the default user file if it exists, then `given` (else $EDGESHIP_BOARDS).
    """
    files = [SHIPPED] if SHIPPED.exists() else []
    default = user_file()
    if default.exists():
        files.append(default)
    extra = given or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None)
    if extra is not None and Path(extra).expanduser() != default:
        files.append(Path(extra).expanduser())
    return files


def load_sources(given: Path | None = None) -> dict[str, tuple[BoardSpec, Path]]:
    """Every board with the file its entry comes from (see catalogue_files for the order)."""
    boards: dict[str, tuple[BoardSpec, Path]] = {}
    for path in catalogue_files(given):
        boards.update({name: (spec, path) for name, spec in load_file(path).items()})
    return boards


def load_catalogue(user_file: Path | None = None) -> dict[str, BoardSpec]:
    """The shipped boards, extended or overridden by the default user file, then by `user_file` or $EDGESHIP_BOARDS."""
    return {name: spec for name, (spec, _) in load_sources(user_file).items()}


def resolve(spec: str, user_file: Path | None = None) -> Any:
    """A Board from a catalogue name or an inline form (local, ssh://..., user@host, an ssh Host alias, ...).

    A catalogue name comes first: a Host alias of ~/.ssh/config with the same name is not used.
    """
    from edgeship.sdk.boards import Board

    if "://" in spec:
        return Board.parse(spec)
    boards = load_catalogue(user_file)
    if spec not in boards:
        board = Board.parse_address(spec)
        if board is not None:
            return board
        known = ", ".join(sorted(boards)) or "none"
        raise UsageError(f"unknown board {spec!r}: boards.yaml has {known}, and your ssh config has no Host {spec}; "
                         f"or give user@host[:port], ssh://user@host:port, /dev/ttyUSB0, serial://<device>?baud=N")
    return Board.from_spec(spec, boards[spec])


def entry_for(address: str, *, description: str | None = None, runtime: str | None = None) -> dict[str, Any]:
    """A catalogue entry (plain data, as boards.yaml holds it) for a board given in any inline form."""
    from edgeship.sdk.boards import Board

    board = Board.parse(address)
    entry: dict[str, Any] = {"description": description or f"added with edgeship boards add ({address})",
                             "transport": board.transport}
    if board.transport == "ssh":
        ssh: dict[str, Any] = {"host": board.host}
        if board.port is not None:  # unset: the ssh config's Port, else 22, when the board is used
            ssh["port"] = board.port
        for key, value in (("user", board.user), ("key", board.key), ("known_hosts", board.known_hosts)):
            if value is not None:
                ssh[key] = str(value)
        entry["ssh"] = ssh
        if board.python != "python3":
            entry["python"] = board.python
        if board.store is not None:
            entry["store"] = {"dir": str(board.store)}
    elif board.transport == "serial":
        entry["serial"] = {"url": board.url, "baud": board.baud}
    if runtime:
        entry["runtime"] = runtime
    return entry


def add_board(name: str, entry: dict[str, Any], *, force: bool = False, path: Path | None = None) -> tuple[Path, bool]:
    """Write one board into the default user file (or `path`): (the file, whether its comments were kept).

    The file and its directory are created private (0600 in 0700). Existing entries are kept,
    and so is the text around them when the file's `boards:` block can be edited in place (the
    result is parsed back and compared; otherwise the file is rewritten from its data, comments
    lost, entries kept). An existing name needs `force`. The new document is validated against
    the schema before anything is written, and the write is atomic (temp file, fsync, rename).
    """
    import yaml

    path = Path(path) if path is not None else user_file()
    if not BOARD_NAME.fullmatch(name):
        raise UsageError(f"board name {name!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or "
                         f"digit), so that the name alone means this board")
    old_text = path.read_text() if path.exists() else None
    raw = _read_yaml(path, old_text) if old_text is not None else None
    if old_text is not None and raw is None:  # an empty file (or only comments): start the document in it
        raw = {}
    if raw is None:
        raw = {"schema_version": SCHEMA_VERSION, "boards": {}}
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}: expected a mapping with schema_version and boards")
    raw.setdefault("schema_version", SCHEMA_VERSION)
    if raw.get("boards") is None:
        raw["boards"] = {}
    validate(raw, path)  # the file as it is: a malformed one is reported, never overwritten
    if name in raw["boards"] and not force:
        raise UsageError(f"board {name!r} exists already in {path}; set it to replace the board", option="force")
    wanted = {**raw, "boards": {**raw["boards"], name: entry}}
    validate(wanted, path)
    text = _edited(old_text, name, entry, name in raw["boards"]) if old_text is not None else None
    kept = text is not None and _read_yaml(path, text) == wanted
    if not kept:
        head = "# edgeship boards: your own boards (docs/boards.md). `edgeship boards add` writes here.\n"
        text = head + yaml.safe_dump(wanted, sort_keys=False, default_flow_style=False)
    _write_private(path, text or "")
    return path, kept or old_text is None


def _edited(text: str, name: str, entry: dict[str, Any], exists: bool) -> str | None:
    """`text` with board `name` set to `entry` inside its block-style `boards:` mapping; None if that is not plain."""
    import yaml

    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"boards:[ \t]*(#.*)?\n", line)]
    if len(starts) != 1:
        return None
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "\t", "#", "\n")), len(lines))
    children = [i for i in range(start + 1, end) if lines[i].strip() and not lines[i].lstrip().startswith("#")]
    indent = len(lines[children[0]]) - len(lines[children[0]].lstrip(" ")) if children else 2
    pad = " " * indent
    block = yaml.safe_dump({name: entry}, sort_keys=False, default_flow_style=False)
    snippet = ["\n" if not line.strip() else pad + line for line in block.splitlines(keepends=True)]
    at = [i for i in children if lines[i].startswith(pad + name + ":") and len(lines[i]) - len(lines[i].lstrip(" ")) == indent]
    if at:  # replace that entry: its key line up to the next line at its indent or less
        first = at[0]
        last = next((i for i in children if i > first and len(lines[i]) - len(lines[i].lstrip(" ")) <= indent), end)
        while last > first + 1 and not lines[last - 1].strip():  # keep the blank lines between entries
            last -= 1
        return "".join(lines[:first] + snippet + lines[last:])
    if exists:  # there, but not as a plain key line this can find (quoted, flow style): no in-place edit
        return None
    after = (children[-1] + 1) if children else start + 1
    return "".join(lines[:after] + snippet + lines[after:])


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, the file 0600 (an existing file keeps its mode) in a directory made 0700."""
    import tempfile

    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask
    mode = (path.stat().st_mode & 0o777) if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable too
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
