"""The package's shape, checked from its source with ``ast`` (nothing is imported): no import cycles, no long
functions, and no docstring that points the reader at a document they do not have."""
import ast
import pathlib
import re
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "netmoments"


def _sources() -> dict[str, pathlib.Path]:
    """Dotted module name -> source file, for every module of the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement anywhere in ``tree`` (module level, in functions, in classes), except those under
    ``if TYPE_CHECKING:``, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(node, module: str, is_package: bool, known) -> set[str]:
    """The package modules that import statement ``node`` in ``module`` loads by name.

    ``from X import name`` loads ``X.name`` when that is a module, else ``X``. Parent packages that Python also
    initialises on the way are not edges: every submodule would otherwise form a cycle with its package.
    """
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = package[: len(package) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if candidate in known:
            found.add(candidate)
        elif base in known:
            found.add(base)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}`` over the package's own modules."""
    sources = _sources()
    graph = {}
    for module, path in sources.items():
        edges = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _import_nodes(tree):
            for target in _targets(node, module, path.name == "__init__.py", sources):
                if target != module:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """The graph's strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _a_cycle(graph, component: list[str]) -> list[str]:
    """One cycle through the component's first module (a shortest one, by breadth-first search)."""
    start, members = component[0], set(component)
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def _describe(graph, component) -> str:
    cycle = _a_cycle(graph, component)
    steps = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
    return f"{len(component)} modules {component}; e.g. {steps} -> {cycle[-1]}"


def _inside_attacks(component) -> bool:
    return all(m == "netmoments.attacks" or m.startswith("netmoments.attacks.") for m in component)


# Cycles that were there when this test was written (outside attacks/). Each must be broken, then deleted from
# here; a listed cycle that gains a module is a new cycle. This list must go to zero.
KNOWN_CYCLES: list[set[str]] = []


def _cycles(inside_attacks: bool) -> list[str]:
    graph = import_graph()
    components = [c for c in strongly_connected(graph) if _inside_attacks(c) == inside_attacks]
    stale = [known for known in KNOWN_CYCLES if known not in [set(c) for c in components] and not inside_attacks]
    if stale:
        warnings.warn(f"these import cycles are gone, delete them from KNOWN_CYCLES: {stale}", stacklevel=2)
    return [_describe(graph, c) for c in components if set(c) not in KNOWN_CYCLES]


def test_the_import_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "netmoments.special" in graph["netmoments"]  # module level, relative, package __init__
    assert "netmoments._validation" in graph["netmoments.relu"]  # module level, relative
    assert "netmoments.data" in graph["netmoments.models"]  # inside a function
    fake = ast.parse("import netmoments.relu\nfrom .. import gaussian\nfrom ..relu import relu_moments\n"
                     "def f():\n    from . import runner\n")
    known = {"netmoments.relu", "netmoments.gaussian", "netmoments.experiments.runner"}
    found = set().union(*(_targets(n, "netmoments.experiments.layerwise", False, known) for n in _import_nodes(fake)))
    assert found == known


def test_strongly_connected_finds_a_planted_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _describe(graph, ["a", "b", "c"]).endswith("a (line 1) -> b (line 2) -> c (line 3) -> a")


def test_no_import_cycle_outside_attacks():
    cycles = _cycles(inside_attacks=False)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_inside_attacks():
    cycles = _cycles(inside_attacks=True)
    assert not cycles, "import cycles inside netmoments/attacks/:\n" + "\n".join(cycles)


# ------------------------------------------------------------------------------------------------ function length
MAX_FUNCTION_LINES = 100

# Functions that were already longer than MAX_FUNCTION_LINES when this test was written, with their length then
# (end_lineno - lineno + 1). A listed function may shrink but never grow; once it is split, delete its line. This
# list must go to zero.
LONG_FUNCTIONS: dict[str, int] = {}


def function_lengths() -> dict[str, int]:
    """``{"path::Qualified.name": lines}`` for every function and method in the package (nested ones too)."""
    lengths = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lengths[f"{relative}::{name}"] = child.end_lineno - child.lineno + 1
                    visit(child, f"{name}.")
                else:
                    visit(child, prefix)

        visit(ast.parse(path.read_text(), filename=str(path)), "")
    return lengths


def test_no_function_is_longer_than_100_lines():
    too_long = {name: n for name, n in function_lengths().items() if n > LONG_FUNCTIONS.get(name, MAX_FUNCTION_LINES)}
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines (or longer than their LONG_FUNCTIONS entry): "
                          f"{too_long}; split them")


def test_the_long_function_list_only_names_long_functions():
    lengths = function_lengths()
    stale = {name: lengths.get(name) for name in LONG_FUNCTIONS if lengths.get(name, 0) <= MAX_FUNCTION_LINES}
    assert not stale, f"now short (or gone), delete from LONG_FUNCTIONS: {stale}"


def test_function_lengths_count_every_line_of_a_nested_definition():
    source = "class C:\n    def method(self):\n        def inner():\n            return 1\n\n        return inner\n"
    tree = ast.parse(source)
    method = tree.body[0].body[0]
    assert method.end_lineno - method.lineno + 1 == 5


# ------------------------------------------------------------------------------------------- unreachable citations
# The package's docstrings and comments state the maths they rely on (a formula, an edge case, a reference value
# or a paper citation such as "NM20" / "Bibi et al. 2018"), never a section of a document its readers do not have.
UNREACHABLE = re.compile(r"spec(?:ification)?\s+sections?\b|\bspec\s+\d|maths?\s+contract|project\s+spec", re.I)

# Files other work is rewriting now, with the phrase they still hold. This list must go to zero.
UNREACHABLE_ALLOWED: set[tuple[str, str]] = set()


def unreachable_citations() -> set[tuple[str, int, str]]:
    """``{(path, line, phrase)}`` for every citation of the unpublished spec in the package's text files."""
    found = set()
    for path in sorted(PACKAGE.rglob("*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # weights and other binary files
        for number, line in enumerate(text.splitlines(), 1):
            for match in UNREACHABLE.finditer(line):
                found.add((path.relative_to(ROOT).as_posix(), number, match.group(0)))
    return found


def test_no_file_in_the_package_cites_the_spec_by_section():
    hits = {hit for hit in unreachable_citations() if (hit[0], hit[2].lower()) not in UNREACHABLE_ALLOWED}
    assert not hits, "state the fact (formula, edge case, value, paper) instead of citing: " + str(sorted(hits))


@pytest.mark.parametrize("text, cites", [
    ("one unit (spec section 2)", True), ("the maths contract's values", True), ("(spec 7)", True),
    ("follows the project spec:", True), ("spec sections 1 and 5", True), ("importlib.util.find_spec(name)", False),
    ("if spec is None", False), ("kernelspec", False), ("NM20's series, Bibi et al. 2018", False),
])
def test_the_citation_pattern(text, cites):
    assert bool(UNREACHABLE.search(text)) == cites
