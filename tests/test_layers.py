"""Layers import downward only, and no muxio module imports itself back.

docs/architecture.md draws the layers; this keeps the drawing true.  Every
import of a muxio module counts, at module level or inside a function: a
lazy import hides a cycle from the interpreter, not from a reader.  Only the
body of `if TYPE_CHECKING:` is left out, because nothing in it runs.

To place a new module, add its name (relative to `muxio`, as `pollers.epoll`;
`pkg.*` is every module below `pkg`) to the group it belongs to in `LAYERS`.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "muxio"

LAYERS: list[list[str]] = [
    ["_build", "errors", "validate", "histogram"],
    ["pollers", "pollers.*"],
    ["listeners", "resolve"],
    ["protocol"],
    ["transports", "transports.*"],
    ["readiness", "sendfile", "sockops", "connect"],
    ["server"],
    # _sampler (compiled) takes the loop's C type at import: profiler imports it only late
    ["watchdog", "profiler", "_sampler", "otel"],
    ["loop"],
    ["offload", "policy", "loopenv", "monitor", "metrics"],
    ["services", "services.*"],
    ["runner"],
    ["serving"],
    ["proxy_protocol", "activation", "tls"],
    ["supervisor"],
    # what every command shares (parser, option types, one-line errors): below the tools
    ["cmdline"],
    # muxio under other programs: `muxio run`, gunicorn's workers, the pytest plugin
    ["launch", "_run_site.*", "gunicorn", "pytest_plugin", "_pytest_loops"],
    ["tools", "tools.*"],
    # one group: `cli` reads `muxio.__version__`; the cycle check still
    # catches the package importing `cli` back
    ["cli", "__init__", "__main__"],
]
"""Bottom first: a module may import its own group and the groups below it."""

Edge = tuple[str, str, int]
"""(importer, imported, line) with both names relative to `muxio`."""


def module_names() -> dict[str, Path]:
    """Every module under src/muxio by its name; the package itself is `__init__`."""
    names: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import in `node` and below it, except what `if TYPE_CHECKING:` guards."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    children: list[ast.AST] = list(ast.iter_child_nodes(node))
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children = list(node.orelse)
    for child in children:
        yield from _imports(child)


def _to_internal(dotted: str) -> str | None:
    """`muxio.a.b` as `a.b` (the package itself as `__init__`); None outside muxio."""
    if dotted == "muxio":
        return "__init__"
    if dotted.startswith("muxio."):
        return dotted[len("muxio."):]
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """The muxio modules `name` imports, resolved the way the interpreter would."""
    is_package = path.name == "__init__.py"
    full = "muxio" if name == "__init__" else f"muxio.{name}"
    package = full if is_package else full.rpartition(".")[0]
    edges: list[Edge] = []
    for node in _imports(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = _to_internal(f"{source}.{alias.name}")
                targets.append(f"{source}.{alias.name}" if submodule in known else source)
        for target in targets:
            internal = _to_internal(target)
            if internal is not None and internal != name:
                edges.append((name, internal, node.lineno))
    return edges


def layer_of(name: str) -> int | None:
    for index, group in enumerate(LAYERS):
        for entry in group:
            if entry == name or (entry.endswith(".*") and name.startswith(entry[:-1])):
                return index
    return None


def all_edges() -> list[Edge]:
    known = module_names()
    return [edge for name, path in known.items() for edge in imports_of(name, path, known)]


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for source, target, _line in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle_in(component, graph) for component in components]


def _a_cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _where(edges: list[Edge], source: str, target: str) -> str:
    lines = sorted({line for s, t, line in edges if (s, t) == (source, target)})
    return f"{source} -> {target} (line {', '.join(map(str, lines))})"


def test_every_module_has_a_layer() -> None:
    missing = sorted(name for name in module_names() if layer_of(name) is None)
    assert not missing, "; ".join(f"add {name} to LAYERS in this file" for name in missing)


def test_imports_go_to_the_same_layer_or_below() -> None:
    edges = all_edges()
    upward = sorted(
        {
            _where(edges, source, target)
            for source, target, _line in edges
            if (low := layer_of(source)) is not None
            and (high := layer_of(target)) is not None
            and high > low
        }
    )
    assert not upward, "imports up the layers:\n  " + "\n  ".join(upward)


def test_no_import_cycles() -> None:
    edges = all_edges()
    cycles = find_cycles(edges)
    shown = [
        " ; ".join(_where(edges, a, b) for a, b in itertools.pairwise(cycle)) for cycle in cycles
    ]
    assert not cycles, "import cycles:\n  " + "\n  ".join(shown)


# -- the checker itself ------------------------------------------------------


def test_lazy_imports_count_and_type_checking_imports_do_not(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import errors\n"
        "if TYPE_CHECKING:\n"
        "    from .loop import EventLoop\n"
        "else:\n"
        "    import muxio.server\n"
        "def f():\n"
        "    try:\n"
        "        from .services import Service\n"
        "    except ImportError:\n"
        "        from .pollers.epoll import EpollPoller\n"
    )
    known = dict.fromkeys(["m", "errors", "loop", "server", "services", "pollers.epoll"], SRC)
    got = {target for _s, target, _l in imports_of("m", source, known)}
    assert got == {"errors", "server", "services", "pollers.epoll"}


def test_relative_imports_resolve_from_the_package(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text("from . import water_marks\nfrom ..protocol import Protocol\n")
    leaf = tmp_path / "stream.py"
    leaf.write_text("from . import water_marks\nfrom .. import __version__\n")
    known = dict.fromkeys(["transports", "transports.stream", "protocol", "__init__"], SRC)
    assert {t for _s, t, _l in imports_of("transports", init, known)} == {"protocol"}
    assert {t for _s, t, _l in imports_of("transports.stream", leaf, known)} == {
        "transports",
        "__init__",
    }


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ([("a", "b", 1), ("b", "c", 1)], []),
        ([("a", "b", 1), ("b", "a", 2)], [["a", "b", "a"]]),
        ([("a", "b", 1), ("b", "c", 1), ("c", "a", 1), ("c", "d", 1)], [["a", "b", "c", "a"]]),
    ],
)
def test_find_cycles(edges: list[Edge], expected: list[list[str]]) -> None:
    assert find_cycles(edges) == expected
