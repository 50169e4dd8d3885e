"""ARCHITECTURE.md's rules, checked on the source: layers import only downwards, no import
cycle between modules, no private name crosses a module boundary, no module grows past ~400
lines. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"elegantviz": ROOT / "elegantviz", "napari_elegantviz": ROOT / "plugins" / "napari_elegantviz"}
# lowest first; a module may import its own layer and the layers before it (ARCHITECTURE.md)
LAYERS = [
    ("elegantviz", "elegantviz.errors", "elegantviz.classes", "elegantviz.values", "elegantviz.config",
     "elegantviz.autocast", "elegantviz.pages"),
    ("elegantviz.io",),
    ("elegantviz.data", "elegantviz.losses"),
    ("elegantviz.models",),
    ("elegantviz.offload",),
    ("elegantviz.inference",),
    ("elegantviz.analysis", "elegantviz.viz"),
    ("elegantviz.engine", "elegantviz.weights"),
    ("napari_elegantviz",),
    ("elegantviz.demo", "elegantviz.cli", "elegantviz.many", "elegantviz.predict_json", "elegantviz.__main__"),  # the command line opens napari for `elegantviz view`
]
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((pkg, *parts))] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of our packages."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import module` imports the module
                sub = f"{mod}.{a.name}"
                found.append((sub, [], node.lineno) if sub in MODULES else (mod, [a.name], node.lineno))
    return [(m, n, line) for m, n, line in found if m.split(".")[0] in PACKAGES]


def _layer(module: str) -> int:
    best = None
    for k, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (k, len(p))
    assert best is not None, f"{module} is in no layer of ARCHITECTURE.md"
    return best[0]


def test_every_module_is_in_a_layer():
    for name in MODULES:
        _layer(name)


def test_layers_import_only_downwards():
    bad = []
    for name, path in MODULES.items():
        for mod, _, line in _imports(name, path):
            if _layer(mod) > _layer(name):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} (a higher layer)")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module():
    """No ``from m import _name``; a package's ``_module`` is imported only from inside that package."""
    bad = []
    for name, path in MODULES.items():
        for mod, names, line in _imports(name, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            hidden = [p for p in mod.split(".")[1:] if p.startswith("_")]
            if private or (hidden and not name.startswith(mod.split(".")[0] + ".") and name != mod.split(".")[0]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} {' '.join(private)}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph = {name: {m for m, _, _ in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not (MODULES[name].name == "__init__.py" and m.startswith(name + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


def test_no_module_is_longer_than_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
