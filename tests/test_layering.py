"""The package's shape: its public names, modules that import alone, and the layers of DESIGN.md.

- `siyi_sdk.__all__` is sorted, complete and importable (as httpx's test_exported_members).
- Every module imports alone, in an interpreter that has loaded nothing of the package.
- The import graph, read from the source with `ast` (imports inside functions and under
  ``TYPE_CHECKING`` included), has no cycle, and its arrows point down the layers.
- ``import siyi_sdk`` loads neither aiohttp's server side nor Redis nor OpenTelemetry.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import siyi_sdk

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "siyi_sdk"
README = ROOT / "README.md"


def module_names() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package is its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_names()


# __all__ -------------------------------------------------------------------------------------


def _ruff_order(name: str) -> tuple[int, str]:
    """RUF022's order: SCREAMING_CASE first, then CamelCase, then the rest."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted_and_unique() -> None:
    assert siyi_sdk.__all__ == sorted(set(siyi_sdk.__all__), key=_ruff_order)


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from siyi_sdk import *", namespace)  # the star import is the subject
    assert set(siyi_sdk.__all__) <= namespace.keys()
    for name in siyi_sdk.__all__:
        assert getattr(siyi_sdk, name) is namespace[name]
    assert set(siyi_sdk.__all__) <= set(dir(siyi_sdk))


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(siyi_sdk).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    lazy = set(siyi_sdk._LAZY)  # the server's names, importable before they are loaded
    assert set(siyi_sdk.__all__) == public | lazy | {"__version__"}


def test_the_subpackages_public_classes_and_every_exception_are_exported() -> None:
    from siyi_sdk import adapters, api, errors

    exported = set(siyi_sdk.__all__)
    for module in (adapters, api):
        classes = {n for n in module.__all__ if isinstance(getattr(module, n), type)}
        assert classes <= exported, module.__name__
    exceptions = {
        name
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), BaseException)
    }
    assert exceptions <= exported


def readme_imports() -> Iterator[str]:
    """The names the README's code imports ``from siyi_sdk import ...``."""
    text = README.read_text(encoding="utf-8")
    for match in re.finditer(r"^from siyi_sdk import (\([^)]*\)|.*)$", text, re.MULTILINE):
        names = match.group(1).strip("()")
        for name in re.split(r"[,\s]+", names.split("#")[0]):
            if name:
                yield name


def test_the_readme_imports_only_exported_names() -> None:
    names = set(readme_imports())
    assert {"ProtocolServer", "ProtocolClient", "Command"} <= names  # the parser found them
    assert names <= set(siyi_sdk.__all__)


# Each module alone -----------------------------------------------------------------------------

# Runs in a child interpreter. Third-party libraries are loaded once; then each module of the
# package is imported in a fork of that interpreter, which has loaded nothing of the package:
# the same order of first imports as `python -c "import siyi_sdk.x"`, at a fraction of the cost.
_IMPORT_EACH = """
import importlib, os, subprocess, sys, traceback
import aiohttp, aiohttp.web, orjson, pydantic, tenacity
assert not any(m == "siyi_sdk" or m.startswith("siyi_sdk.") for m in sys.modules)
failed = []
for name in sys.argv[1:]:
    if not hasattr(os, "fork"):
        code = subprocess.call([sys.executable, "-c", f"import {name}"])
    else:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        failed.append(name)
print("FAILED:" + ",".join(failed))
"""


def test_each_module_imports_alone() -> None:
    names = sorted(MODULES)
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "FAILED:", done.stderr


# The import graph ------------------------------------------------------------------------------


def _package_of(module: str) -> str:
    """The package a module's relative imports start from."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = _package_of(module).split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _import_module_call(node: ast.Call) -> str | None:
    """The constant module name of ``importlib.import_module("...", ...)``, if it is one."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(module: str) -> set[str]:
    """The package's modules that `module` imports directly, wherever the import stands."""
    found: set[str] = set()

    def add(target: str, names: tuple[str, ...] = ()) -> None:
        if target != "siyi_sdk" and not target.startswith("siyi_sdk."):
            return
        found.add(target)
        found.update(f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES)

    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            add(_resolve(module, node.level, node.module), tuple(a.name for a in node.names))
        elif isinstance(node, ast.Call) and (dynamic := _import_module_call(node)):
            level = len(dynamic) - len(dynamic.lstrip("."))
            add(_resolve(module, level, dynamic.lstrip(".") or None))
    return found


def _edges(module: str) -> set[str]:
    """`imports_of`, plus the packages Python runs on the way to each (not the root's facade)."""
    edges = set()
    for target in imports_of(module):
        edges.add(target)
        parts = target.split(".")
        for depth in range(2, len(parts)):
            parent = ".".join(parts[:depth])
            if not (module == parent or module.startswith(parent + ".")):
                edges.add(parent)
    edges.discard("siyi_sdk")  # checked on its own: no module imports the facade
    edges.discard(module)
    return edges


GRAPH = {module: _edges(module) for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    # The reader itself: an import inside a function, under TYPE_CHECKING, and a PEP 562 one.
    assert "siyi_sdk.server" in imports_of("siyi_sdk")
    assert "siyi_sdk.server.redis_backplane" in imports_of("siyi_sdk.server")
    assert "siyi_sdk.peer" in imports_of("siyi_sdk.server.lifecycle")  # TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    assert find_cycle(GRAPH) is None


def _in(module: str, *layers: str) -> bool:
    return any(module == f"siyi_sdk.{x}" or module.startswith(f"siyi_sdk.{x}.") for x in layers)


def _violations(importer_layers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} -> {target}"
        for module, targets in sorted(GRAPH.items())
        if _in(module, *importer_layers)
        for target in sorted(imports_of(module))
        if _in(target, *forbidden)
    ]


def _outside(module: str, *allowed: str) -> list[str]:
    return sorted(t for t in imports_of(module) if not _in(t, *allowed))


ABOVE_PEER = ("adapters", "api", "server", "client", "cli", "demo", "testing")


def test_the_bottom_layers() -> None:
    # errors: the exception tree, naming nothing of the package (not even for type checking).
    assert _outside("siyi_sdk.errors") == []
    # packets raise protocol errors and know nothing else.
    assert _outside("siyi_sdk.packets", "errors") == []
    # What client and server share sits below both.
    assert _outside("siyi_sdk.wire", "errors", "packets") == []
    assert _outside("siyi_sdk.retry", "errors") == []
    # The engine of one WebSocket knows neither side's code.
    assert _violations(("peer",), ABOVE_PEER) == []


def test_adapters_know_nothing_above_them() -> None:
    assert _violations(("adapters",), ("server", "api", "client", "cli", "demo", "testing")) == []


def test_the_api_is_a_client_layer() -> None:
    assert _violations(("api",), ("server", "client", "cli", "demo")) == []


def test_the_server_imports_no_client_code() -> None:
    # The server shares with the client only what lies below both (packets, errors, peer,
    # wire, retry) and the typed `Command` model of its routes: never adapters/ (the client's
    # transports and upload engine), the Api, the client or the demo.
    assert _violations(("server",), ("adapters", "client", "cli", "demo")) == []
    api_uses = [
        f"{m} -> {t}"
        for m in GRAPH
        if _in(m, "server")
        for t in imports_of(m)
        if _in(t, "api") and t != "siyi_sdk.api.command"
    ]
    assert api_uses == []


def test_the_client_does_not_import_the_server() -> None:
    assert _violations(("client",), ("server", "cli", "demo")) == []


def test_only_the_command_line_imports_the_demo_and_nothing_imports_the_facade() -> None:
    demo_users = [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if not _in(m, "demo", "cli", "__main__")
        for t in targets
        if _in(t, "demo")
    ]
    assert demo_users == []
    cli_users = [m for m, targets in GRAPH.items() if "siyi_sdk.cli" in targets]
    assert cli_users == ["siyi_sdk.__main__"]
    facade_users = [m for m in MODULES if m != "siyi_sdk" and "siyi_sdk" in imports_of(m)]
    assert facade_users == []


# What a client loads ---------------------------------------------------------------------------


def test_a_client_loads_no_server_no_redis_and_no_opentelemetry() -> None:
    script = (
        "import sys, siyi_sdk\n"
        "print('aiohttp.web' in sys.modules, 'redis' in sys.modules)\n"
        "siyi_sdk.Tracing\n"  # OpenTelemetry loads when a Tracing is made, not before
        "print('aiohttp.web' in sys.modules, 'opentelemetry' in sys.modules)\n"
        "siyi_sdk.ProtocolServer\n"
        "print('aiohttp.web' in sys.modules, 'siyi_sdk.server.redis_backplane' in sys.modules)\n"
        "siyi_sdk.RedisBackplane\n"
        "print('siyi_sdk.server.redis_backplane' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False False", "False False", "True False", "True"]


MAX_LINES = 400
_STATED = re.compile(r"Why (?:one module of )?(about|a little over) ([\d,]+) lines")


def test_every_module_is_short_or_says_why() -> None:
    """Under 400 lines, or its docstring says why (and the size it gives is about right)."""
    unexplained: list[str] = []
    stale: list[str] = []
    for name, path in module_names().items():
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines <= MAX_LINES:
            continue
        stated = _STATED.search(ast.get_docstring(ast.parse(source)) or "")
        if stated is None:
            unexplained.append(f"{name} ({lines} lines)")
        else:
            size = int(stated.group(2).replace(",", ""))
            if abs(size - lines) > 0.15 * lines or (stated.group(1) != "about" and lines < size):
                stale.append(f"{name}: says {stated.group(1)} {size}, has {lines}")
    assert not unexplained, f"over {MAX_LINES} lines with no reason given: {unexplained}"
    assert not stale, f"the size a module states is out of date: {stale}"
