"""The shape of `vault/`: imports point one way, down the layers, and the docs name every module.

README's "Layout" is the map a reader starts from; these checks keep the code and the map
together. Imports inside functions count: hiding an import in a function does not make a cycle
or an upward dependency go away.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vault"

# Lower number = lower layer. A module may import from its own layer or any lower one.
LAYER_NAMES = ["errors", "git, files and format", "project and keys", "operations", "cli"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every vault module `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "vault":
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layout() -> dict[str, int]:
    """Module -> layer, read from README's Layout list (`- **Layer**: `mod`, `mod` …`)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Layout", 1)[1].split("\n### ", 1)[0]
    layers: dict[str, int] = {}
    for item in re.split(r"\n- ", section)[1:]:
        title = re.match(r"\*\*([^*]+)\*\*", item)
        assert title, item
        level = LAYER_NAMES.index(title.group(1).lower())
        for mod in re.findall(r"`([a-z_/]+)(?:\.py)?`", item):
            layers[mod.replace("/", ".")] = level
    return layers


def _layer_of(name: str, layers: dict[str, int]) -> int | None:
    short = name.removeprefix("vault.")
    if short == "cli" or short.startswith("cli."):
        return LAYER_NAMES.index("cli")
    return layers.get(short)


def test_no_import_cycle_among_vault_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_readme_layout_names_every_module_once_in_a_layer():
    layers = _layout()
    modules = {
        name.removeprefix("vault.")
        for name in _modules()
        if name not in ("vault", "vault.__main__") and not name.startswith("vault.cli")
    }
    assert sorted(modules - set(layers)) == [], "modules missing from README's Layout"
    assert sorted(set(layers) - modules - {"cli.main", "cli.options", "cli.commands"}) == [], (
        "README's Layout names modules that do not exist"
    )


def test_imports_point_down_the_layers():
    layers = _layout()
    upward = []
    for name, targets in _graph().items():
        mine = _layer_of(name, layers)
        if mine is None:
            continue
        for target in targets:
            theirs = _layer_of(target, layers)
            if theirs is not None and theirs > mine:
                upward.append(
                    f"{name} ({LAYER_NAMES[mine]}) imports {target} ({LAYER_NAMES[theirs]})"
                )
    assert upward == []


def test_package_docstring_names_every_module():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""
    named = set(re.findall(r"`([a-z_.]+)`", doc))
    missing = [
        name.removeprefix("vault.")
        for name in _modules()
        if name not in ("vault", "vault.__main__")
        and not name.startswith("vault.cli")
        and name.removeprefix("vault.") not in named
    ]
    assert missing == [], "vault/__init__.py's map does not name these modules"


def test_only_gitstore_starts_git_and_nothing_imports_gitpython():
    """One git layer: every git process starts in `gitstore` (one env policy, one error map)."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "git" for a in node.names):
                offenders.append(f"{name} imports GitPython")
            if isinstance(node, ast.ImportFrom) and node.module == "git":
                offenders.append(f"{name} imports GitPython")
            if isinstance(node, ast.Call):
                first = node.args[0] if node.args else None
                if (
                    name != "vault.gitstore"
                    and isinstance(first, ast.List | ast.Tuple)
                    and first.elts
                ):
                    head = first.elts[0]
                    if isinstance(head, ast.Constant) and head.value == "git":
                        offenders.append(f"{name} starts git at line {node.lineno}")
    assert offenders == []
