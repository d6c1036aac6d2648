"""The packages depend one way, export <- engine <- bench <- cli, and no two modules import
each other, however indirectly.

Checked statically over every module's imports, at module level and inside functions (and
``import_module("advx....")`` calls with a literal name), so that an import hidden in a function
cannot run the dependency backwards or close a cycle; imports under ``if TYPE_CHECKING:`` are
annotations, never run, and are left out. ``advx/__init__.py`` (the public API) may name any
layer.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# each layer imports only itself and the layers before it
LAYERS = ("export", "engine", "bench", "cli")


def _package_dirs() -> dict[str, Path]:
    """advx's packages and their folders, as pyproject.toml installs them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder
            for pkg, folder in config["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__), for every module of advx."""
    dirs = _package_dirs()
    out: dict[str, tuple[Path, bool]] = {}
    for pkg, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = (path, is_pkg)
    return out


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    target: str  # the absolute module imported from
    names: tuple[str, ...]  # for `from target import a, b`; () for `import target`


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out |= {id(n) for n in ast.walk(child)}
    return out


def _imports(module: str, path: Path, is_pkg: bool) -> list[Import]:
    """Every import of ``path``, wherever it sits (module level, functions, classes, blocks),
    except those under ``if TYPE_CHECKING:``."""
    package = module if is_pkg else module.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append(Import(path, node.lineno, target, tuple(a.name for a in node.names)))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            found.append(Import(path, node.lineno, node.args[0].value, ()))
    return [i for i in found if i.target == "advx" or i.target.startswith("advx.")]


def _layer(module: str) -> str | None:
    """The layer of an advx module (None for the top-level package ``advx`` itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _targets(imp: Import, modules: dict) -> list[str]:
    """The advx modules an import loads (``from advx.x import sub`` loads ``advx.x.sub``)."""
    return [imp.target, *(f"{imp.target}.{n}" for n in imp.names
                          if f"{imp.target}.{n}" in modules)]


def layering_violations() -> list[str]:
    modules = _modules()
    bad = []
    for module, (path, is_pkg) in modules.items():
        if module == "advx":
            continue  # the public API names every layer (lazily)
        mine = _layer(module)
        for imp in _imports(module, path, is_pkg):
            where = f"{path.relative_to(ROOT)}:{imp.line}"
            if imp.target == "advx":
                # the root package re-exports every layer: only its version (and its
                # subpackages, checked below as modules) may be imported from it
                names = set(imp.names) - {"__version__"} - {
                    n for n in imp.names if f"advx.{n}" in modules}
                if names:
                    bad.append(f"{where}: {module} imports {sorted(names)} from advx itself "
                               f"(name the module that defines them)")
            for target in _targets(imp, modules):
                theirs = _layer(target)
                if mine and theirs and LAYERS.index(theirs) > LAYERS.index(mine):
                    bad.append(f"{where}: {module} ({mine}) imports {target} ({theirs})")
    return bad


def package_cycles() -> list[list[str]]:
    """Cycles in the graph of layers (a layer -> the layers it imports)."""
    modules = _modules()
    graph: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for module, (path, is_pkg) in modules.items():
        mine = _layer(module)
        if mine is None:
            continue
        for imp in _imports(module, path, is_pkg):
            for target in _targets(imp, modules):
                theirs = _layer(target)
                if theirs and theirs != mine:
                    graph[mine].add(theirs)
    cycles: set[tuple[str, ...]] = set()

    def walk(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                loop = stack[stack.index(nxt):]
                first = loop.index(min(loop))
                cycles.add((*loop[first:], *loop[:first], min(loop)))
            else:
                walk(nxt, [*stack, nxt])

    for layer in LAYERS:
        walk(layer, [layer])
    return [list(c) for c in sorted(cycles)]


def module_graph() -> dict[str, set[str]]:
    """advx module -> the advx modules it imports (``from pkg import sub`` imports ``pkg.sub``;
    ``from pkg import name`` imports ``pkg``, its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, is_pkg) in modules.items():
        for imp in _imports(module, path, is_pkg):
            subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in modules]
            plain = [n for n in imp.names if f"{imp.target}.{n}" not in modules]
            targets = subs + ([imp.target] if plain or not imp.names else [])
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def module_cycles() -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    graph = module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_every_layer_is_found():
    layers = {_layer(m) for m in _modules()}
    assert set(LAYERS) <= layers, f"no modules found for {set(LAYERS) - layers}"


def test_every_package_is_installed():
    """Each folder with an __init__.py is a package pyproject.toml installs (a wheel would
    leave an unlisted one out, while an editable install still finds it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {m for m, (_, is_pkg) in _modules().items() if is_pkg}
    assert packages == set(config["packages"])


def test_layers_import_only_the_layers_before_them():
    bad = layering_violations()
    assert not bad, "imports against the layering export <- engine <- bench <- cli:\n" + \
        "\n".join(bad)


def test_no_package_imports_one_that_imports_it_back():
    cycles = package_cycles()
    assert not cycles, "package import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_one_that_imports_it_back():
    cycles = module_cycles()
    assert not cycles, "module import cycles (each group imports itself back):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle_through_a_function(tmp_path, monkeypatch):
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "__init__.py").write_text("")
    (engine / "a.py").write_text("from .b import x\n")
    (engine / "b.py").write_text("def f():\n    from . import a\nx = 1\n")
    (engine / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from .a import y\n")
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "_package_dirs", lambda: {"advx.engine": engine})
    assert module_cycles() == [["advx.engine.a", "advx.engine.b"]]


@pytest.mark.parametrize("where, source, expect", [
    ("probe.py", "from ..bench import run", "imports advx.bench"),
    ("zoo/probe.py", "def f():\n    from ...cli.main import cli", "imports advx.cli.main"),
    ("zoo/probe.py", "import advx.bench.report", "imports advx.bench.report"),
    ("probe.py", "from advx import export_classifier", "from advx itself"),
    ("probe.py", "import importlib\nimportlib.import_module('advx.cli')", "imports advx.cli"),
])
def test_the_check_sees_hidden_imports(tmp_path, monkeypatch, where, source, expect):
    """The checker itself: a backwards import in an engine module, however written, is found."""
    engine = tmp_path / "engine"
    (engine / "zoo").mkdir(parents=True)
    for init in (engine / "__init__.py", engine / "zoo" / "__init__.py"):
        init.write_text("")
    (engine / where).write_text(source + "\n")
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "_package_dirs", lambda: {"advx.engine": engine})
    monkeypatch.setattr(me, "ROOT", tmp_path)
    (bad,) = layering_violations()
    assert f"engine/{where}" in bad and expect in bad
