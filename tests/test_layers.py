"""The house rules, read from the code: one direction of dependency between ferry's packages, no import cycle,
no module too long to read. (Imports under `if TYPE_CHECKING:` are for annotations only and do not count.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ferry"
MAX_LINES = 650

# What each package may import of ferry, besides itself. The layers, bottom up: routing, xds, dataplane (the
# register of what outlives ferry) and statedir (the private state folder); envoy (it writes the node metadata xds
# reads); the backends, the autoscaler, rollouts and the activator; the reconciler; the daemon.
ALLOWED = {
    "routing": set(),
    "xds": set(),
    "dataplane": set(),
    "statedir": set(),
    "envoy": {"xds", "dataplane", "statedir"},
    "backends": {"routing", "dataplane", "statedir"},
    "autoscaler": {"routing", "envoy", "tasks"},
    "rollout": {"routing", "envoy", "tasks"},
    "activator": {"xds", "dataplane"},
    "ui": {"rollout"},  # the dashboard reads the leader through the API's calls; rollout: the p99 arithmetic
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ferry modules `path` imports at run time."""
    tree = ast.parse(path.read_text())
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ferry"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "ferry":
                found.add(name)
    return found


MODULES = {_module(p): p for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_lower_layers_import_nothing_above_them(module: str):
    package = _package(module)
    if package not in ALLOWED:
        return  # the reconciler, the daemon and the faces (api, cli) may use everything below them
    outside = {_package(name) for name in _imports(MODULES[module])} - {package}
    assert outside <= ALLOWED[package], f"{module} imports {sorted(outside - ALLOWED[package])}"


def test_no_import_cycle():
    graph = {module: {name for name in _imports(path) if name in MODULES} for module, path in MODULES.items()}
    # A package's __init__ importing its own modules is not a cycle through them.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in graph[module]:
            if target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_too_long(module: str):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it where its jobs part"


@pytest.mark.parametrize("module", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_every_package_says_what_it_owns(module: str):
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module} has no docstring"
