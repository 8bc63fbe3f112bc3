"""The board catalogue: boards.yaml, validated once against a versioned schema (docs/boards.md).

The shipped file lists the built-in boards and example profiles of real hardware; a
user file (``--boards PATH`` or ``EDGESHIP_BOARDS``) adds boards or replaces shipped
ones by name. Every problem is one error naming the file, the board and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdk.errors import CatalogueError, UsageError

SCHEMA_VERSION = 1
def _shipped() -> Path:
    """boards.yaml beside the packages (a checkout, an editable install), else the installed copy."""
    import sys

    here = Path(__file__).resolve().parent.parent / "boards.yaml"
    installed = Path(sys.prefix) / "share" / "edgeship" / "boards.yaml"
    return here if here.exists() or not installed.exists() else installed


SHIPPED = _shipped()
ENV_VAR = "EDGESHIP_BOARDS"


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
    import yaml

    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"{path}: no such boards file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CatalogueError(f"{path}: not valid YAML{where}") from exc
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


def load_catalogue(user_file: Path | None = None) -> dict[str, BoardSpec]:
    """The shipped boards, extended or overridden by the user's file (argument, else $EDGESHIP_BOARDS)."""
    boards = load_file(SHIPPED) if SHIPPED.exists() else {}
    user = user_file or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None)
    if user is not None:
        boards.update(load_file(Path(user).expanduser()))
    return boards


def resolve(spec: str, user_file: Path | None = None) -> Any:
    """A Board from a catalogue name or an inline form (local, ssh://..., user@host, an ssh Host alias, ...).

    A catalogue name comes first: a Host alias of ~/.ssh/config with the same name is not used.
    """
    from sdk.boards import Board

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
