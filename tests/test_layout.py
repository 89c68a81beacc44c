"""The layout stays the design: no import circles, modules of a readable size, no private imports
across modules, and no issue numbers or machine paths in code and docs."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastconv"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path):
    """(module imported, names imported) of every import statement outside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _modules():
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_the_import_graph_has_no_circles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in _top_level_imports(path):
            for candidate in [module] + [f"{module}.{item}" for item in names]:
                if candidate in modules and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    # a package's __init__ importing its own submodules is how packages expose names, not a circle
    edges = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for module, names in _top_level_imports(path):
            if not module.startswith("fastconv"):
                continue
            private_module = [part for part in module.split(".") if part.startswith("_")]
            # a package's private module serves that package only
            if private_module and not name.startswith(module.rsplit(".", 1)[0] + "."):
                offenders.append(f"{name} imports {module}")
            offenders += [f"{name} imports {module}.{item}" for item in names if item.startswith("_")]
    assert not offenders, offenders


def test_modules_outside_the_backends_stay_readable():
    long = {str(path.relative_to(ROOT)): count for path in PACKAGE.rglob("*.py")
            if "backends" not in path.parts and (count := len(path.read_text(encoding="utf-8").splitlines())) > 520}
    assert not long, long


def test_no_issue_numbers_or_machine_paths_in_code_and_docs():
    pattern = re.compile(r"\bissues? #?\d+\b|/(?:work|root)/", re.IGNORECASE)
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "docs").rglob("*.md"),
             ROOT / "README.md", *(ROOT / "examples").rglob("*.py")]
    hits = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in files
            for match in pattern.finditer(path.read_text(encoding="utf-8"))]
    assert not hits, hits
