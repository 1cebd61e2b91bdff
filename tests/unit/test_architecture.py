"""The architecture, checked: which subpackage may import which (DESIGN.md, "Module map").

Every ``import`` in ``streams/`` counts, at the top of a module or inside a function: a lazy
import is still a dependency. The contracts:

* ``clinical`` imports nothing of stepcare (the standard library only);
* every subpackage imports only the floors below it (the table ``MAY_IMPORT``), and
  ``streams.errors``, which imports nothing;
* nothing imports ``cli``; ``analysis`` and ``interfaces`` never import ``worker``;
* there is no cycle between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streams"

# subpackage -> the subpackages it may import (besides itself and streams.errors)
MAY_IMPORT: dict[str, set[str]] = {
    "clinical": set(),
    "formats": {"clinical"},
    "kafka": {"clinical", "formats"},
    "worker": {"clinical", "formats", "kafka"},
    "interfaces": {"clinical", "formats", "kafka"},
    "analysis": {"clinical", "formats"},
    "devtools": {"clinical", "formats", "kafka"},
    "cli": {"clinical", "formats", "kafka", "worker", "interfaces", "analysis", "devtools"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[str]:
    """The stepcare modules ``path`` imports (``from streams.x import y`` yields streams.x.y if
    that is a module, else streams.x)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "streams")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "streams":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                yield child if child in MODULES else node.module


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: sorted(set(imports_of(path)) - {name}) for name, path in MODULES.items()}


def floor(module: str) -> str:
    """The subpackage of a module (``streams.errors`` and ``streams`` are their own)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_import_names_a_module_that_exists() -> None:
    missing = {f"{m} -> {i}" for m, deps in GRAPH.items() for i in deps if i not in MODULES}
    assert not missing


def test_every_module_lives_in_a_subpackage_of_the_module_map() -> None:
    loose = {
        m for m in MODULES if floor(m) not in MAY_IMPORT and m not in {"streams", "streams.errors"}
    }
    assert not loose


def test_streams_errors_imports_nothing() -> None:
    assert GRAPH["streams.errors"] == []


@pytest.mark.parametrize("subpackage", sorted(MAY_IMPORT))
def test_a_subpackage_imports_only_the_floors_below_it(subpackage: str) -> None:
    allowed = MAY_IMPORT[subpackage] | {subpackage}
    if subpackage != "clinical":  # the pure core imports nothing of stepcare, errors included
        allowed |= {"errors"}
    wrong = {
        f"{module} imports {dep}"
        for module, deps in GRAPH.items()
        if floor(module) == subpackage
        for dep in deps
        if floor(dep) not in allowed
    }
    assert not wrong


def test_nothing_imports_the_cli() -> None:
    assert not {
        m for m, deps in GRAPH.items() if floor(m) != "cli" and any(floor(d) == "cli" for d in deps)
    }


def test_analysis_and_interfaces_never_import_the_worker() -> None:
    assert not {
        f"{m} imports {d}"
        for m, deps in GRAPH.items()
        if floor(m) in {"analysis", "interfaces"}
        for d in deps
        if floor(d) == "worker"
    }


def test_there_is_no_import_cycle() -> None:
    """Depth-first search over the module graph; a back edge is a cycle."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in GRAPH.get(module, []):
            if dep == "streams" or module.startswith(dep + "."):  # a package's own __init__
                continue
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles
