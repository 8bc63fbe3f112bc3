"""The import graph of edgeship's three packages has no cycles, and the agent imports neither sdk nor converters.

The graph is read from the source with `ast`, never by importing: every `import` counts, also the
ones inside functions (a lazy import that closes a circle is still a circle, it only fails later),
except those under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sdk", "converters", "device_agent")


def _modules() -> dict[str, Path]:
    """Every module of the three packages by its dotted name (edgeship.sdk.boards), packages as their __init__."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = ["edgeship", *path.relative_to(ROOT).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement that can run, at any depth."""
    found: list[tuple[str, list[str]]] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                todo.extend(getattr(child, "orelse", []))
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, []) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, [alias.name for alias in child.names]))
            todo.append(child)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the three packages it imports (a `from pkg import name` counts pkg.name if a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target, names in _imports(tree, name, path.name == "__init__.py"):
            candidates = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            if len(candidates) < len(names) or not names:  # some names are attributes of `target` itself
                parts = target.split(".")
                while parts and ".".join(parts) not in modules:  # `import edgeship.sdk.errors as e`, say
                    parts.pop()
                if parts:
                    candidates.append(".".join(parts))
            graph[name].update(c for c in candidates if c != name)
    return graph


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import chain from start to goal (breadth first, neighbours in name order)."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            chain = [node]
            while previous[chain[-1]] is not None:
                chain.append(previous[chain[-1]])  # type: ignore[arg-type]
            return chain[::-1]
        for nxt in sorted(graph[node]):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import edge that lies on a circle, closed by the shortest way back; one entry per distinct circle."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            back = _path(graph, b, a)
            if back is None:
                continue
            ring = [a, *back[:-1]]
            turn = ring.index(min(ring))
            key = tuple(ring[turn:] + ring[:turn])
            if key not in seen:
                seen.add(key)
                out.append([*key, key[0]])
    return out


def test_the_import_graph_has_no_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_agent_imports_neither_sdk_nor_converters() -> None:
    graph = import_graph()
    bad = sorted(f"{a} -> {b}" for a, targets in graph.items() if a.startswith("edgeship.device_agent")
                 for b in targets if not b.startswith("edgeship.device_agent"))
    assert not bad, "device_agent imports outside itself:\n" + "\n".join(bad)


def test_the_graph_sees_function_level_imports_and_names_taken_from_packages() -> None:
    """The reader itself: a lazy import inside a function is an edge, `from pkg import module` names the module."""
    graph = import_graph()
    assert "edgeship.device_agent.runtime" in graph["edgeship.sdk.hosteval"]  # imported inside eval_host
    assert "edgeship.sdk.errors" in graph["edgeship.converters.isolated"]  # `from edgeship.sdk import errors`
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(ring) == [["a", "b", "c", "a"]]
