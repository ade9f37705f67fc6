"""The package's shape, read from its own source: a pure core, imports down the flow, rooms
of a readable size.

- The judging core (certwatch.core: values, certificate analysis, the threshold policy,
  assessment, alert decisions), the renderings (certwatch.render) and the configuration
  kit (certwatch.config) import nothing that does network, database, scheduler or thread
  I/O, directly or through another certwatch module.
- Imports point down the flow: each folder imports only from folders below it.
- Only the entry point imports the CLI.
- No module over 500 lines, no class over 220, no function over 90.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "certwatch"

# Modules that do I/O the pure parts must not reach (each with its submodules).
IO_MODULES = ("socket", "ssl", "OpenSSL", "asyncio", "selectors", "http", "urllib.request", "httpx",
              "aiohttp", "sqlite3", "smtplib", "apscheduler", "threading", "concurrent",
              "multiprocessing", "subprocess", "prometheus_client")
PURE = ("certwatch.core", "certwatch.render", "certwatch.config")
# The flow, bottom up: a room may import from its own room and from the floors below.
FLOORS = {
    "certwatch.core": 0,
    "certwatch.config": 1, "certwatch.render": 1, "certwatch.logs": 1,
    "certwatch.sources": 2, "certwatch.state": 2, "certwatch.eventloop": 2,
    "certwatch.memory": 2,
    "certwatch.sweep": 3, "certwatch.alerting": 3,
    "certwatch.serving": 4,
    "certwatch.daemon": 5,
    "certwatch.cli": 6,
    "certwatch.__main__": 7,
}
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 500, 220, 90


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module `module` imports, at any level of its code (lazy imports too)."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return frozenset(found)


def reached(module: str) -> dict[str, str]:
    """Every module reached from `module` through certwatch modules: name -> via which."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        for name in imports_of(current):
            if name in seen:
                continue
            seen[name] = current
            if name in MODULES:
                todo.append(name)
            elif (parent := name.rpartition(".")[0]) in MODULES and parent not in seen:
                seen[parent] = current
                todo.append(parent)
    return seen


def room(module: str) -> str:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    if module == "certwatch":
        return "certwatch.core"  # the package's face holds only the version
    raise AssertionError(f"{module} is in no room of the layout; add it to FLOORS")


def is_io(name: str) -> bool:
    return any(name == io or name.startswith(io + ".") for io in IO_MODULES)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(PURE)])
def test_the_pure_parts_reach_no_io(module: str) -> None:
    found = {name: via for name, via in reached(module).items() if is_io(name)}
    assert not found, f"{module} reaches I/O modules: " + ", ".join(
        f"{name} (imported by {via})" for name, via in sorted(found.items()))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_flow(module: str) -> None:
    here = room(module)
    upward = []
    for name in imports_of(module):
        if not name.startswith("certwatch.") or name not in MODULES:
            continue
        there = room(name)
        if there != here and FLOORS[there] >= FLOORS[here]:
            upward.append(f"{name} ({there}, floor {FLOORS[there]})")
    assert not upward, f"{module} ({here}, floor {FLOORS[here]}) imports up or across: {upward}"


def test_only_the_entry_point_imports_the_cli() -> None:
    importers = [m for m in MODULES if "certwatch.cli" in imports_of(m)]
    assert importers == ["certwatch.__main__"]


def test_the_rules_are_read_from_real_imports() -> None:
    # The checks above must see what they check: the wire source does use sockets and
    # TLS, and the daemon reaches the CLI-free core.
    assert "socket" in imports_of("certwatch.sources.wire")
    assert "OpenSSL" in imports_of("certwatch.sources.handshake")
    assert "certwatch.core.assess" in reached("certwatch.daemon")
    assert is_io("asyncio.events") and not is_io("asyncioish")


def sizes() -> list[tuple[str, str, int, int]]:
    """(where, kind, lines, limit) of every module, class and function over its limit."""
    over = []
    for module, path in MODULES.items():
        text = path.read_text()
        if (lines := text.count("\n")) > MAX_MODULE:
            over.append((module, "module", lines, MAX_MODULE))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                kind, limit = "class", MAX_CLASS
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind, limit = "function", MAX_FUNCTION
            else:
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                over.append((f"{module}.{node.name}", kind, length, limit))
    return over


def test_rooms_are_of_a_readable_size() -> None:
    assert sizes() == []
