"""The house rules, read from the code: one direction of dependency between ferry's packages, no import cycle,
no module too long to read, no test module importing another. (Imports under `if TYPE_CHECKING:` are for
annotations only and do not count.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ferry"
MAX_LINES = 650

# What each package or top-level module may import of ferry, besides itself. The layers, bottom up: routing, xds,
# dataplane (the register of what outlives ferry), statedir (the private state folder) and the small leaves (tasks,
# logs, tls); certs, envoy (it writes the node metadata xds reads); the backends, the autoscaler, rollouts and the
# activator; the file formats' faces (kn, knative_cli, manifests); the test hooks; the HTTP API; the replicas; the
# reconciler; the daemon; the CLI. "" is ferry/__init__.py.
_LEAVES = {"routing", "xds", "dataplane", "statedir", "tasks", "logs", "tls"}
_BELOW_RECONCILE = _LEAVES | {"certs", "envoy", "backends", "autoscaler", "rollout", "activator", "testhooks"}
ALLOWED = {
    "": set(),
    "routing": set(),
    "xds": set(),
    "dataplane": set(),
    "statedir": set(),
    "tasks": set(),
    "logs": set(),
    "tls": set(),
    "certs": {"statedir", "tls"},
    "envoy": {"xds", "dataplane", "statedir"},
    "backends": {"routing", "dataplane", "statedir"},
    "autoscaler": {"routing", "envoy", "tasks"},
    "rollout": {"routing", "envoy", "tasks"},
    "activator": {"xds", "dataplane"},
    "kn": {"routing"},
    "knative_cli": {"routing"},
    "manifests": {"backends", "envoy"},
    "testhooks": {"routing", "xds"},
    "api": {"routing", "tls"},
    "replicas": {"api", "tasks", "tls", "xds"},
    # the reconciler, the daemon and the CLI may use everything below them, and nothing above
    "reconcile": _BELOW_RECONCILE,
    "daemon": _BELOW_RECONCILE | {"reconcile", "api", "replicas"},
    "cli": _BELOW_RECONCILE | {"reconcile", "api", "replicas", "daemon", "kn", "knative_cli", "manifests"},
    "__main__": {"cli"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """Whether dotted `name` (ferry.x.y) is a module or package of ferry, by its file."""
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, module: str | None = None) -> set[str]:
    """The ferry modules `path` (the module named `module`, by default the one at that place in ferry/) imports at
    run time. `from ferry.x import y` is ferry.x.y when y is a submodule (the module it uses), ferry.x when y is a
    name defined in ferry.x."""
    tree = ast.parse(path.read_text())
    module = module or _module(path)
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
                for alias in node.names:
                    found.add(f"{name}.{alias.name}" if _is_module(f"{name}.{alias.name}") else name)
    return found


MODULES = {_module(p): p for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_lower_layers_import_nothing_above_them(module: str):
    package = _package(module)
    assert package in ALLOWED, f"{module}: add {package!r} to ALLOWED, with what it may import"
    outside = {_package(name) for name in _imports(MODULES[module])} - {package}
    assert outside <= ALLOWED[package], f"{module} imports {sorted(outside - ALLOWED[package])}"


def test_allowed_names_only_real_packages_and_modules():
    """A name in ALLOWED that is no package or module of ferry is a typo that would let a rule pass silently."""
    real = {_package(module) for module in MODULES}
    named = set(ALLOWED) | set().union(*ALLOWED.values())
    assert named <= real, sorted(named - real)


def test_submodule_imports_resolve_to_the_submodule(tmp_path: Path):
    """`from .. import dataplane` uses ferry.dataplane, not ferry/__init__.py: the cycle check and the layers see the
    module itself; a name defined in a package's __init__ is the package."""
    probe = tmp_path / "probe.py"
    probe.write_text("from .. import dataplane, statedir\n"
                     "from ferry.reconcile import controller\n"
                     "from ..xds import resources as xds\n"
                     "from ferry.routing import ConfigError\n"
                     "from . import roles\n"
                     "import ferry.tasks\n")
    assert _imports(probe, "ferry.daemon.probe") == {
        "ferry.dataplane", "ferry.statedir", "ferry.reconcile.controller", "ferry.xds.resources", "ferry.routing",
        "ferry.daemon.roles", "ferry.tasks"}


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


# -- tests ------------------------------------------------------------------------------------------------

TESTS = ROOT.parent / "tests"


def _test_modules_imported(path: Path) -> set[str]:
    """The tests/test_*.py modules `path` (a file under tests/) imports, by module name (test_x)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: tests/ is the package, its subfolders are not
                base = (node.module or "").split(".") if node.module else []
            elif (node.module or "").split(".")[0] == "tests":
                base = node.module.split(".")[1:]
            else:
                continue
            names |= {".".join(["tests", *base, a.name]) for a in node.names}  # `from . import test_x` too
            names.add(".".join(["tests", *base]))
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "tests":
            parts = parts[1:]
        if len(parts) == 1 and parts[0].startswith("test_") and (TESTS / f"{parts[0]}.py").is_file():
            found.add(parts[0])
    return found


@pytest.mark.parametrize("path", sorted(TESTS.rglob("*.py")), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_module_imports_a_test_module(path: Path):
    """What tests share lives in helper modules (helpers, ferry_process, xds_client, load, ...): a test module
    imported by another runs its tests' module-level code twice and ties their fates together."""
    imported = _test_modules_imported(path) - {path.stem}
    assert not imported, f"{path.relative_to(TESTS)} imports test module(s) {sorted(imported)}: move what they " \
                         f"share into a helper module"


def test_the_test_import_check_sees_every_form(tmp_path: Path):
    """The check above is not vacuous: it catches each way of writing the import, and passes helper imports."""
    forms = ["from .test_layers import ALLOWED", "from tests.test_layers import ALLOWED", "import tests.test_layers",
             "from . import test_layers", "from tests import test_layers"]
    for form in forms:
        probe = tmp_path / "probe.py"
        probe.write_text(form + "\n")
        assert _test_modules_imported(probe) == {"test_layers"}, form
    probe = tmp_path / "probe.py"
    probe.write_text("from .helpers import wait_until\nfrom . import ferry_process\nimport tests.load\n")
    assert _test_modules_imported(probe) == set()
