"""The zoo registry's import structure: no registry <-> backends cycle, one well-defined load."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import advx.export.zoo as zoo

ZOO_DIR = Path(zoo.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (relative ones as '.name'), TYPE_CHECKING blocks included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found |= {f"{base}.{a.name}" if node.module else base + a.name for a in node.names}
    return found


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_registry_imports_nothing_from_backends():
    mods = _imported_modules(ZOO_DIR / "registry.py")
    assert not any(m.endswith("backends") for m in mods), mods
    # the backends module is imported by the package, and by no other zoo module
    importers = sorted(p.name for p in ZOO_DIR.glob("*.py")
                       if any(m.endswith("backends") for m in _imported_modules(p)))
    assert importers == ["__init__.py"]


def test_registry_alone_loads_no_builder():
    """registry.py executed on its own (its package stubbed out): no backends, no torch."""
    out = _run("""
        import sys, types
        from pathlib import Path
        import advx.export
        pkg = types.ModuleType("advx.export.zoo")
        pkg.__path__ = [str(Path(advx.export.__file__).parent / "zoo")]
        sys.modules["advx.export.zoo"] = pkg
        import advx.export.zoo.registry as registry
        print(sorted(m for m in sys.modules if m.startswith("advx.export.zoo")))
        print("torch" in sys.modules, registry.list_backends.__module__)
        try:
            registry.parse_name("effnet-lite0")
        except RuntimeError as e:
            print(e)
    """).splitlines()
    assert out[0] == "['advx.export.zoo', 'advx.export.zoo.registry']"
    assert out[1] == "False advx.export.zoo.registry"
    assert "no model backends are registered: import advx.export.zoo" in out[2]


@pytest.mark.parametrize("first", ["advx.export.zoo.registry", "advx.export.zoo.backends",
                                   "advx.export.zoo.model", "advx.export.zoo", "advx.export"])
def test_lookups_do_not_depend_on_import_order(first):
    out = _run(f"""
        import importlib
        importlib.import_module({first!r})
        from advx.export.zoo.registry import list_backends, list_entries, parse_name
        print(parse_name("effnet-lite0"))
        print(parse_name("onnx:solvers/s.json"))
        print(list_backends(), len(list_entries()))
        from advx.export.zoo import backends
        try:  # a second import would register every builder twice
            importlib.reload(backends)
        except ValueError as e:
            print(e)
    """).splitlines()
    assert out[0] == "ModelRef(backend='alias', arch='effnet-lite0', weights=None)"
    assert out[1] == "ModelRef(backend='onnx', arch='solvers/s.json', weights=None)"
    assert out[2] == f"['hf', 'onnx', 'open_clip', 'timm'] {len(zoo.list_entries())}"
    assert out[3] == "backend 'open_clip' registered twice"


def test_package_names_resolve():
    assert zoo.parse_name("effnet-lite0").backend == "alias"
    assert zoo.parse_name("onnx:solvers/s.json").arch == "solvers/s.json"
    assert zoo.is_solver_name("onnx:solvers/s.json") and not zoo.is_solver_name("effnet-lite0")
    assert zoo.build_backbone is zoo.registry.build_backbone
    for name in zoo.__all__:
        assert getattr(zoo, name) is not None, name
