"""The package's shape: the folder list reads like the pipeline, imports only point down it.

The import graph is read from the source (every ``import``, including the lazy ones inside
functions, outside ``if TYPE_CHECKING:`` blocks), so a new cycle or a stage reaching
upwards fails here before it confuses a reader.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway" / "opik_cipx"
LONGEST = 520  # lines: "about 500", so a module fits in one reading; split by concern past it

# Each part of the package and the parts it may import (besides itself). Read top to bottom
# it is the pipeline: the relay, then capture, attribution, storage, shipping, the views.
ALLOWED: dict[str, set[str]] = {
    "(root)": set(),  # opik_cipx/__init__.py: the version
    "model": set(),
    # What the capture chain reads of Settings, pydantic-free (the capture worker never imports pydantic).
    "settings_view": set(),
    "config": {"settings_view"},
    "config_load": {"config"},  # Settings from what the user wrote, bad values set aside
    "price_list": set(),
    "segment": set(),  # the status-line segment from a session summary: pure, stdlib only  # the built-in price table, data only
    "pricing": {"model", "price_list"},
    "wire": {"model"},
    "proxy": {"model", "wire"},
    "attribute": {"model", "pricing", "wire"},
    "store": {"model", "pricing", "attribute"},
    "ship": {"(root)", "model", "config", "settings_view", "pricing", "wire", "attribute", "store"},
    "capture": {"model", "segment", "config", "settings_view", "pricing", "wire", "proxy", "attribute", "store", "ship"},
    "report": {"model", "segment", "pricing", "attribute", "store", "wire"},  # wire: the credential-kind header's name
    "ops": {"(root)", "model", "config", "pricing", "wire", "proxy", "capture", "store"},
    "viewer": {"pricing", "attribute", "store", "report", "ops"},
    "claude": {"config", "pricing", "store", "report", "ops"},
    # The MCP server: report's views as tools; ops only to ask the gateway whether capture caught up.
    "mcp_server": {"(root)", "config", "pricing", "wire", "store", "report", "ops"},
    # Codex's wiring (config.toml): settings only; the daemon is brought up by its caller.
    "codex": {"config"},
    "server": {"config", "pricing", "proxy", "capture", "store", "ship", "ops", "viewer"},
    "cli": {"(root)", "config", "config_load", "pricing", "proxy", "capture", "ship", "report", "ops", "viewer",
            "claude", "codex", "server", "mcp_server"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.ImportFrom | ast.Import]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue  # annotations only: not an import at run time
        if isinstance(node, (ast.ImportFrom, ast.Import)):
            yield node
        yield from _imports(node)


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                # ``from pkg import sub`` imports the submodule when there is one.
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_the_package_has_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_only_point_down_the_pipeline() -> None:
    graph = _graph()
    assert {_part(m) for m in graph} <= set(ALLOWED), "a new part of the package needs its row in ALLOWED"
    wrong = sorted(
        f"{a} imports {b}"
        for a, targets in graph.items()
        for b in targets
        if _part(a) != _part(b) and _part(b) not in ALLOWED[_part(a)]
    )
    assert wrong == []


def test_importing_the_relay_loads_no_capture_attribution_storage_or_shipping() -> None:
    code = (
        "import json, sys; import opik_cipx.proxy.relay; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opik_cipx'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PACKAGE.parent)})
    loaded = json.loads(out.stdout)
    assert "opik_cipx.proxy.relay" in loaded
    assert [m for m in loaded if _part(m) in {"attribute", "capture", "store", "ship", "report", "ops"}] == []


def test_the_top_level_stays_small_and_modules_stay_readable() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > LONGEST}
    assert long == {}


@pytest.mark.parametrize("part", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()))
def test_every_sub_package_says_what_it_is(part: str) -> None:
    tree = ast.parse((PACKAGE / part / "__init__.py").read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{part}/__init__.py needs a docstring saying what the part does"
