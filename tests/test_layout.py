"""The floor plan (issue 17), checked on the source text.

Each rule is a small pure function over parsed modules, so it can be shown to fail on a tiny
package written to ``tmp_path`` as well as run on the real tree. Nothing is imported: the
checks read ``ast`` only, which also sees imports under ``if TYPE_CHECKING:`` and inside
functions, both of which a runtime import graph would miss.

The rules:

* a package is used from another package only through its ``__init__``; a package's own
  modules may import each other and a subpackage may use its parent package's modules;
* nobody imports another package's private module (``_x``) or private name (``_x``);
  ``logplexd._native`` is reached only through ``logplexd/native.py``;
* no import circles, type-only ones included;
* every name in an ``__all__`` exists there at run time, and every subpackage has one;
* a test module does not import another test module: shared code lives in
  ``tests/helpers`` or a ``tests/_*.py`` helper module.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A private module that only the listed modules may import, whatever their package.
# The compiled module has one face (logplexd/native.py) so it can say what is missing.
PRIVATE_GATES = {"logplexd._native": frozenset({"logplexd.native"})}


@dataclass(frozen=True)
class Module:
    name: str  # dotted: "logplexd.drains.http"; a package is named by its __init__'s package
    path: str  # relative to the root, for messages
    is_package: bool
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package this module's relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    """One edge: ``source`` imports module ``target`` (a package stands for its __init__)."""

    source: Module
    target: str
    name: str | None  # the name taken from ``target``; None when the module itself is imported
    node: ast.Import | ast.ImportFrom

    def where(self) -> str:
        return f"{self.source.path}:{self.node.lineno}: {ast.unparse(self.node)}"


def parse_tree(root: Path, top: str, skip: Iterable[str] = ()) -> dict[str, Module]:
    """Every module of package ``top`` under ``root``, but for directories named in ``skip``."""
    skipped = set(skip)
    modules = {}
    for dirpath, dirnames, filenames in os.walk(root / top):
        dirnames[:] = sorted(d for d in dirnames if d not in skipped and d != "__pycache__")
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = Path(dirpath, filename)
            rel = path.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
            modules[name] = Module(name, rel.as_posix(), is_package, tree)
    return modules


def imports_of(module: Module, known: Mapping[str, Module]) -> Iterator[Import]:
    """Every import anywhere in ``module`` (type-only and function-local ones too), resolved.

    ``from pkg import name`` is an import of module ``pkg.name`` when that is a module of
    ``known``, else of ``name`` from ``pkg``'s __init__.
    """
    nodes = [n for n in ast.walk(module.tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    yield Import(module, f"{target}.{alias.name}", None, node)
                else:
                    yield Import(module, target, alias.name, node)


def is_private(name: str) -> bool:
    # Dunders (__version__, __future__, __main__) are nobody's private parts.
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def package_of(target: str, known: Mapping[str, Module]) -> str:
    """The package owning ``target``: itself for a package, else its parent."""
    if target in known and known[target].is_package:
        return target
    return target.rpartition(".")[0]


def is_within(package: str, owner: str) -> bool:
    """Whether ``package`` is ``owner`` or one of its subpackages."""
    return package == owner or package.startswith(owner + ".")


def import_problem(
    imp: Import, modules: Mapping[str, Module], gates: Mapping[str, frozenset[str]]
) -> str | None:
    """What is wrong with one import under rule (a), if anything."""
    importer = imp.source
    # A gated module is reached only by the gate's named modules, however it is spelled.
    full = imp.target if imp.name is None else f"{imp.target}.{imp.name}"
    for gated, allowed in gates.items():
        if is_within(full, gated):
            return None if importer.name in allowed else f"private module {gated}"
    # A private module is private to the package holding it: only that package's own modules
    # may import it.
    parts = imp.target.split(".")
    for i, part in enumerate(parts):
        if is_private(part):
            private, owner = ".".join(parts[: i + 1]), ".".join(parts[:i])
            if importer.package != owner:
                return f"private module {private}"
            break
    private_name = imp.name is not None and is_private(imp.name)
    if private_name and importer.package != package_of(imp.target, modules):
        return f"private name {imp.name} of {imp.target}"
    if imp.target in modules and not modules[imp.target].is_package:
        owner = package_of(imp.target, modules)
        # Its own package's modules, or a parent package's modules: fine.
        if not is_within(importer.package, owner):
            return f"reaches into {imp.target}; import from {owner} instead"
    return None


def private_and_reach_in_imports(
    modules: Mapping[str, Module], gates: Mapping[str, frozenset[str]] = PRIVATE_GATES
) -> list[str]:
    """Rule (a): private modules and names stay in their package; others go through __init__."""
    problems = []
    for module in modules.values():
        for imp in imports_of(module, modules):
            problem = import_problem(imp, modules, gates)
            if problem is not None:
                problems.append(f"{imp.where()}  -- {problem}")
    return list(dict.fromkeys(problems))  # one line per import statement and problem


def literal_all(module: Module) -> list[str] | None:
    """The names of the module's ``__all__`` (``=`` and ``+=`` of literals), None if none."""
    names: list[str] | None = None
    for node in module.tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = literal_names(node.value)
        elif (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "__all__"
        ):
            names = [*(names or []), *literal_names(node.value)]
    return names


def literal_names(node: ast.expr) -> list[str]:
    """A literal list or tuple of strings; ValueError for anything else."""
    value = ast.literal_eval(node)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(ast.unparse(node))
    return list(value)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_names(body: list[ast.stmt]) -> set[str]:
    """Names a module body binds when it runs (``if TYPE_CHECKING:`` bodies do not run)."""
    names: set[str] = set()

    def bind(target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                bind(elt)
        elif isinstance(target, ast.Starred):
            bind(target.value)

    for node in body:
        match node:
            case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
                names.add(node.name)
            case ast.Assign():
                for target in node.targets:
                    bind(target)
            case ast.AnnAssign(value=value) if value is not None:
                bind(node.target)
            case ast.AugAssign():
                bind(node.target)
            case ast.Import():
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            case ast.ImportFrom():
                names.update(a.asname or a.name for a in node.names)
            case ast.If():
                if not is_type_checking(node.test):
                    names |= runtime_names(node.body)
                names |= runtime_names(node.orelse)
            case ast.Try():
                names |= runtime_names(node.body) | runtime_names(node.orelse)
                names |= runtime_names(node.finalbody)
                for handler in node.handlers:
                    names |= runtime_names(handler.body)
            case ast.With() | ast.For() | ast.While():
                names |= runtime_names(node.body)
    return names


def all_problems(modules: Mapping[str, Module], top: str) -> list[str]:
    """Rule (c): ``__all__`` lists names that exist, once; every subpackage states one."""
    problems = []
    for module in modules.values():
        try:
            exported = literal_all(module)
        except ValueError:
            problems.append(f"{module.path}: __all__ is not a literal list of names")
            continue
        if exported is None:
            if module.is_package and module.name != top:
                problems.append(f"{module.path}: a package without __all__")
            continue
        if any(isinstance(n, ast.ImportFrom) and n.names[0].name == "*" for n in module.tree.body):
            problems.append(f"{module.path}: a star import hides what __all__ refers to")
            continue
        defined = runtime_names(module.tree.body)
        seen = set()
        for name in exported:
            if name in seen:
                problems.append(f"{module.path}: {name!r} is in __all__ twice")
            seen.add(name)
            if name not in defined:
                problems.append(f"{module.path}: {name!r} is in __all__ but not defined there")
    return problems


def import_graph(modules: Mapping[str, Module]) -> dict[str, dict[str, list[Import]]]:
    """Module -> module it imports -> the imports making that edge (project modules only)."""
    graph: dict[str, dict[str, list[Import]]] = {name: {} for name in modules}
    for module in modules.values():
        for imp in imports_of(module, modules):
            if imp.target in modules and imp.target != module.name:
                graph[module.name].setdefault(imp.target, []).append(imp)
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_circle(graph: Mapping[str, Iterable[str]], members: list[str]) -> list[str]:
    """One shortest circle through the first member, staying inside the component."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for succ in sorted(graph[node]):
            if succ == start:
                return [*paths[node], start]
            if succ in inside and succ not in paths:
                paths[succ] = [*paths[node], succ]
                queue.append(succ)
    raise AssertionError("a strongly connected component always has a circle")


def import_circles(modules: Mapping[str, Module]) -> list[str]:
    """Rule (b): no import circles, counting ``if TYPE_CHECKING:`` and function-local imports."""
    graph = import_graph(modules)
    problems = []
    for members in strongly_connected(graph):
        circle = shortest_circle(graph, members)
        lines = [f"circle {' -> '.join(circle)} (component: {', '.join(members)}); its imports:"]
        inside = [imp for a in members for b in members for imp in graph[a].get(b, ())]
        inside.sort(key=lambda imp: (imp.source.path, imp.node.lineno))
        lines.extend(dict.fromkeys(f"    {imp.where()}" for imp in inside))
        problems.append("\n".join(lines))
    return problems


def is_test_helper(target: str) -> bool:
    """Shared test code: ``tests/helpers`` or a ``tests/_*.py`` helper module."""
    parts = target.split(".")
    return parts[1:2] == ["helpers"] or (len(parts) > 1 and is_private(parts[1]))


def cross_test_imports(tests: Mapping[str, Module], top: str = "tests") -> list[str]:
    """Rule (d): a test module imports helpers, never another test module."""
    problems = []
    for module in tests.values():
        if not module.name.rpartition(".")[2].startswith("test_"):
            continue
        for imp in imports_of(module, tests):
            target = imp.target
            # "from test_x import" / "import conftest" work when the directory is on sys.path.
            if target.partition(".")[0] != top and f"{top}.{target}" in tests:
                target = f"{top}.{target}"
            if target.partition(".")[0] != top or is_test_helper(target):
                continue
            if target == module.name:
                continue
            problems.append(f"{imp.where()}  -- imports test module {target}")
    return list(dict.fromkeys(problems))  # one line per import statement and module


# --- the real tree ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logplexd_modules() -> dict[str, Module]:
    # logplexd/_native is a symlink to the Cython sources; only native.py faces it.
    return parse_tree(ROOT, "logplexd", skip={"_native"})


def fail_with(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_packages_are_used_through_their_init(logplexd_modules: dict[str, Module]) -> None:
    fail_with(private_and_reach_in_imports(logplexd_modules))


def test_no_import_circles(logplexd_modules: dict[str, Module]) -> None:
    fail_with(import_circles(logplexd_modules))


def test_all_names_exist(logplexd_modules: dict[str, Module]) -> None:
    fail_with(all_problems(logplexd_modules, "logplexd"))


def test_tests_import_helpers_not_tests() -> None:
    fail_with(cross_test_imports(parse_tree(ROOT, "tests")))


# --- the checks on synthetic packages: each fails when it should -----------------------------


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def problems_of(
    check: Callable[..., list[str]], root: Path, files: Mapping[str, str], *args: object
) -> list[str]:
    return check(parse_tree(write_tree(root, files), "pkg"), *args)


def test_relative_imports_resolve(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a/__init__.py": "from .m import x\nfrom . import m\nfrom .. import b\n",
            "pkg/a/m.py": "from ..b.n import y\nimport pkg.b\n",
            "pkg/b/__init__.py": "",
            "pkg/b/n.py": "",
        },
    )
    modules = parse_tree(tmp_path, "pkg")
    got = sorted(
        (imp.source.name, imp.target, imp.name or "")
        for module in modules.values()
        for imp in imports_of(module, modules)
    )
    assert got == [
        ("pkg.a", "pkg.a.m", ""),
        ("pkg.a", "pkg.a.m", "x"),
        ("pkg.a", "pkg.b", ""),  # a package: its __init__
        ("pkg.a.m", "pkg.b", ""),
        ("pkg.a.m", "pkg.b.n", "y"),
    ]


def test_reach_in_is_caught(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/top.py": "",
        "pkg/a/__init__.py": "from .m import x\n",
        "pkg/a/m.py": "from . import other\nfrom ..top import t\nx = 1\n",
        "pkg/a/other.py": "",
        "pkg/a/sub/__init__.py": "from ..m import x\n",  # a subpackage uses its parent's module
        "pkg/b/__init__.py": "from ..a import x\n",  # through the face: fine
        "pkg/b/n.py": "def f():\n    from pkg.a.m import x\n",
        "pkg/b/o.py": "from pkg.a import m\n",
        "pkg/b/p.py": "from ..a.sub import x\n",  # a nested package's face: fine
    }
    problems = problems_of(private_and_reach_in_imports, tmp_path, files)
    assert len(problems) == 2, problems
    assert problems[0].startswith("pkg/b/n.py:2: from pkg.a.m import x  -- reaches into pkg.a.m")
    assert problems[1].startswith("pkg/b/o.py:1: from pkg.a import m  -- reaches into pkg.a.m")


def test_a_package_reaching_into_its_subpackage_is_caught(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "from .sub.m import x\n",
        "pkg/a/sub/__init__.py": "",
        "pkg/a/sub/m.py": "x = 1\n",
    }
    (problem,) = problems_of(private_and_reach_in_imports, tmp_path, files)
    assert problem.startswith("pkg/a/__init__.py:1: from .sub.m import x  -- reaches into")


def test_private_modules_and_names_are_caught(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/face.py": "from ._hidden.core import c\nfrom . import __version__\n",
        "pkg/config.py": "from ._hidden import core\nfrom . import _hidden\n",
        "pkg/_hidden/__init__.py": "",  # left out of the parse, as logplexd/_native is
        "pkg/_hidden/core.py": "c = 1\n",
        "pkg/a/__init__.py": "from ._impl import x, _y\n",  # its own private module: fine
        "pkg/a/_impl.py": "x = _y = 1\n",
        "pkg/a/m.py": "from ._impl import _y\n",  # a private name inside its package: fine
        "pkg/b/__init__.py": "if True:\n    from ..a import _y\n",
        "pkg/b/n.py": "import pkg.a._impl\n",
        "pkg/b/o.py": "from coredis._utils import hash_slot\nfrom trio import _core\n",
    }
    gates = {"pkg._hidden": frozenset({"pkg.face"})}
    modules = parse_tree(write_tree(tmp_path, files), "pkg", skip={"_hidden"})
    problems = private_and_reach_in_imports(modules, gates)
    assert problems == [
        # config.py is in the package holding _hidden, but it is not the gate
        "pkg/config.py:1: from ._hidden import core  -- private module pkg._hidden",
        "pkg/config.py:2: from . import _hidden  -- private module pkg._hidden",
        "pkg/b/__init__.py:2: from ..a import _y  -- private name _y of pkg.a",
        "pkg/b/n.py:1: import pkg.a._impl  -- private module pkg.a._impl",
        "pkg/b/o.py:1: from coredis._utils import hash_slot  -- private module coredis._utils",
        "pkg/b/o.py:2: from trio import _core  -- private name _core of trio",
    ]


def test_circles_are_caught_type_only_and_local_ones_too(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "from .m import x\n",
        "pkg/a/m.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..b import y\nx = 1\n"
        ),
        "pkg/b/__init__.py": "def f():\n    from pkg.c import z\ny = 1\n",
        "pkg/c.py": "from pkg import a\nz = 1\n",  # a package: an edge to its __init__
        "pkg/d.py": "from pkg import c\n",  # into the circle, not part of it
    }
    (problem,) = problems_of(import_circles, tmp_path, files)
    assert problem.splitlines() == [
        "circle pkg.a -> pkg.a.m -> pkg.b -> pkg.c -> pkg.a"
        " (component: pkg.a, pkg.a.m, pkg.b, pkg.c); its imports:",
        "    pkg/a/__init__.py:1: from .m import x",
        "    pkg/a/m.py:3: from ..b import y",
        "    pkg/b/__init__.py:2: from pkg.c import z",
        "    pkg/c.py:1: from pkg import a",
    ]


def test_a_tree_without_circles_passes(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "from .m import x\nfrom .n import n\n",
        "pkg/a/m.py": "from .n import n\nx = n\n",
        "pkg/a/n.py": "import pkg.b\nn = 1\n",
        "pkg/b/__init__.py": "",
    }
    assert problems_of(import_circles, tmp_path, files) == []


def test_all_names_that_do_not_exist_are_caught(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": (
            "from typing import TYPE_CHECKING\n"
            "from .m import x as y\n"
            "try:\n    import json\nexcept ImportError:\n    pass\n"
            "if TYPE_CHECKING:\n    from .m import T\nelse:\n    U = 1\n"
            "def f(): pass\n"
            "class C: pass\n"
            "v: int\n"
            "__all__ = ['y', 'json', 'U', 'f', 'C']\n"
            "__all__ += ['x', 'T', 'v', 'C']\n"
        ),
        "pkg/a/m.py": "x = T = 1\n",
        "pkg/b/__init__.py": "from ..a import y\n",
        "pkg/c/__init__.py": "__all__ = sorted(['n'])\n",
        "pkg/d/__init__.py": "from .e import *\n__all__ = ['q']\n",
        "pkg/d/e.py": "q = 1\n",
    }
    assert problems_of(all_problems, tmp_path, files, "pkg") == [
        "pkg/a/__init__.py: 'x' is in __all__ but not defined there",
        "pkg/a/__init__.py: 'T' is in __all__ but not defined there",
        "pkg/a/__init__.py: 'v' is in __all__ but not defined there",
        "pkg/a/__init__.py: 'C' is in __all__ twice",
        "pkg/b/__init__.py: a package without __all__",
        "pkg/c/__init__.py: __all__ is not a literal list of names",
        "pkg/d/__init__.py: a star import hides what __all__ refers to",
    ]


def test_test_modules_importing_test_modules_are_caught(tmp_path: Path) -> None:
    files = {
        "tests/__init__.py": "",
        "tests/conftest.py": "",
        "tests/_servers.py": "from .test_a import a\n",  # a helper: not checked
        "tests/helpers/__init__.py": "",
        "tests/helpers/sinks.py": "",
        "tests/test_a.py": (
            "from tests.helpers.sinks import s\n"
            "from .helpers import sinks\n"
            "from ._servers import x\n"
            "from tests import _servers\n"
            "import pytest\n"
            "a = 1\n"
        ),
        "tests/test_b.py": (
            "from .test_a import a\n"
            "def f():\n    from tests import test_a\n"
            "import tests.conftest\n"
            "from test_a import a\n"
        ),
    }
    write_tree(tmp_path, files)
    problems = cross_test_imports(parse_tree(tmp_path, "tests"))
    assert problems == [
        "tests/test_b.py:1: from .test_a import a  -- imports test module tests.test_a",
        "tests/test_b.py:3: from tests import test_a  -- imports test module tests.test_a",
        "tests/test_b.py:4: import tests.conftest  -- imports test module tests.conftest",
        "tests/test_b.py:5: from test_a import a  -- imports test module tests.test_a",
    ]
