"""The package's shape: its import graph has no circles and runs downwards between layers,
and the built-in plugins are the ones listed in ``rfscope.plugins.BUILTIN``.

Imports are read with :mod:`ast` (module level and inside functions), so a circle hidden in a
function body counts too.  See ``docs/design.md`` for the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import tomllib

import rfscope.plugins

PKG = Path(rfscope.plugins.__file__).parent.parent

#: the layers, lowest first; a module may import its own layer and the ones below
LAYERS = [
    ("rfscope.core", "rfscope.models", "rfscope.weights", "rfscope.loader", "rfscope._lazy",
     "rfscope._version"),
    ("rfscope.plugins", "rfscope.plugin"),
    ("rfscope.trace",),
    ("rfscope.passes",),
    ("rfscope.export",),  # diagrams and files: it reads an analysis through a Protocol, not the Report class
    ("rfscope.report",),
    ("rfscope.pipeline",),
    ("rfscope.cli_support",),  # what the commands share (one-line errors, Ctrl-C, --input-shape)
    ("rfscope.design", "rfscope.probe"),
    ("rfscope.cli",),
    ("rfscope",),
]
#: the one import allowed to run upwards: the registry loads the built-in plugins it lists
UPWARD_ALLOWED = {("rfscope.core.registry", "rfscope.plugins")}


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(mod: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{mod} is in no layer: add it to LAYERS"
    return rank


def import_graph() -> nx.DiGraph:
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:  # "rfscope.core.rf.conv" -> the module rfscope.core.rf
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("rfscope"):
                    g.add_edge(mod, t)
    return g


def test_the_import_graph_has_no_circles() -> None:
    g = import_graph()
    # a package's __init__ re-exporting its own submodules is not a circle of design
    h = nx.DiGraph((a, b) for a, b in g.edges if not (b.startswith(a + ".") or a.startswith(b + ".")))
    cycles = list(nx.simple_cycles(h))
    assert not cycles, f"import circles: {cycles[:5]}"


def test_imports_run_down_the_layers() -> None:
    g = import_graph()
    upward = sorted((a, b) for a, b in g.edges if _layer(b) > _layer(a))
    assert upward == sorted(UPWARD_ALLOWED), upward


def test_builtin_plugins_are_the_files_listed_once() -> None:
    files = {p.stem for p in (PKG / "plugins").glob("*.py") if p.stem != "__init__"}
    assert sorted(rfscope.plugins.BUILTIN) == sorted(files)
    assert len(set(rfscope.plugins.BUILTIN)) == len(rfscope.plugins.BUILTIN)
    # built-ins load from that list, not from installed metadata: pyproject must not list them
    meta = tomllib.loads((PKG.parent / "pyproject.toml").read_text())
    eps = meta["project"].get("entry-points", {}).get("rfscope.plugins", {})
    assert not [v for v in eps.values() if v.startswith("rfscope.plugins.")], eps


def test_every_public_error_is_an_rfscope_error() -> None:
    """The CLI turns RfscopeError into one-line errors: every public error must derive from it."""
    import rfscope
    import rfscope.probe

    errors = [getattr(rfscope, n) for n in rfscope.__all__ if n.endswith("Error")]
    errors += [getattr(rfscope.probe, n) for n in rfscope.probe.__all__ if n.endswith("Error")]
    assert len(errors) >= 8
    assert [e.__name__ for e in errors if not issubclass(e, rfscope.RfscopeError)] == []
