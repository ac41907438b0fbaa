"""The shape of the code: dependencies point one way, no import cycles, short modules.

Pure unit tests (no broker, no database): the source of ``platform/`` (migrations
excepted) and ``routing/`` is read with ``ast``, never imported.

- **No import cycles.** Every import counts, function-local ones included: a cycle
  dodged by importing inside a function is still a cycle (CONVENTIONS.md,
  "Dependencies point one way"). ``from x import y`` is an edge to module ``x.y`` if
  there is one, else to ``x``; relative imports are resolved against the importer's
  package. Each cycle is reported as its strongly connected component, with one
  path through it and the line of each import.
- **Dependencies point one way**: ``routing/ <- switchyard <- apps``. Nothing in
  ``routing/`` imports ``platform/`` or Django. No module of the ``switchyard``
  package imports an app (``jobs``, ``tenants``, ``media``, ``monitoring``,
  ``demo``), except the few in ``ALLOWED_APP_IMPORTS``, each with its reason.
- **Short modules.** A module over ``MAX_LINES`` lines fails unless its module
  docstring has a line starting with ``Size:`` that says why it is one module,
  e.g. ``Size: the one table of every setting; splitting it would scatter them.``

Each checker is first shown to catch what it is for on a synthetic tree written to
``tmp_path``, so the checks on the real tree cannot pass vacuously.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
APPS = frozenset({"jobs", "tenants", "media", "monitoring", "demo", "schedules"})
#: Top-level packages of Django and its ecosystem: routing/ must import none of them.
DJANGO_PACKAGES = frozenset({"django", "rest_framework", "drf_spectacular", "dj_database_url",
                             "storages", "whitenoise"})
#: Modules of the switchyard package allowed to import apps, each with its reason. None
#: today: settings name apps by string (INSTALLED_APPS), the root URLconf mounts each app's
#: URLconf by name (``include("jobs.urls")``), the Celery app names its task base class by
#: string (``task_cls="jobs.task:SwitchyardTask"``).
ALLOWED_APP_IMPORTS: dict[str, str] = {}
SIZE_HELP = ("Split it, or say why it is one module in a line of its module docstring "
             "starting with 'Size:'")


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's dependency of ``source`` on ``target``."""

    source: str
    target: str
    line: int
    local: bool  # inside a function

    def __str__(self) -> str:
        where = ", in a function" if self.local else ""
        return f"{self.source} -> {self.target} (line {self.line}{where})"


@dataclasses.dataclass
class Tree:
    root: Path
    modules: dict[str, Path]  # dotted name -> file
    internal: dict[str, dict[str, Import]]  # module -> {imported module of the tree: first import}
    external: dict[str, dict[str, Import]]  # module -> {top-level name outside the tree: import}

    def platform_module(self, name: str) -> bool:
        return self.modules[name].is_relative_to(self.root / "platform")

    def relative(self, name: str) -> str:
        return str(self.modules[name].relative_to(self.root))


def find_modules(root: Path) -> dict[str, Path]:
    """Modules of ``root/platform`` (named from inside it: it is a folder, not a package)
    and of ``root/routing`` (the ``routing`` package); migrations and caches left out."""
    found = {}
    for base, named_from in ((root / "platform", root / "platform"), (root / "routing", root)):
        for path in sorted(base.rglob("*.py")):
            if {"migrations", "__pycache__"} & set(path.relative_to(base).parts):
                continue
            name = ".".join(path.relative_to(named_from).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self._functions = 0

    def _function(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._functions > 0))

    visit_ImportFrom = visit_Import


def _longest_module(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module of the tree (``a.b.Class`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def scan(root: Path) -> Tree:
    """Read every module's imports and resolve them against the tree's modules."""
    modules = find_modules(root)
    tree = Tree(root, modules, {m: {} for m in modules}, {m: {} for m in modules})
    for name, path in modules.items():
        visitor = _ImportVisitor()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, local in visitor.found:
            if isinstance(node, ast.Import):
                wanted = [(alias.name, alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    if node.level - 1 > len(parts):
                        continue  # beyond the top package: Python refuses it too
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join([*parts, *([base] if base else [])])
                    if not base:
                        continue
                # from x import y: the module x.y if there is one, else x.
                wanted = [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base,
                           base) for a in node.names]
            for target, spelled in wanted:
                found = _longest_module(target, modules)
                record = Import(name, found or spelled.split(".")[0], node.lineno, local)
                if found is None:
                    if not getattr(node, "level", 0):
                        tree.external[name].setdefault(record.target, record)
                elif found != name:
                    tree.internal[name].setdefault(found, record)
    return tree


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted
    (iterative: no recursion limit on a long chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
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
    return sorted(found)


def _path_back(tree: Tree, component: list[str]) -> list[Import]:
    """One shortest cycle through the component's first module, as its imports."""
    start, members = component[0], set(component)
    came_from: dict[str, Import] = {}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        for target, record in sorted(tree.internal[node].items()):
            if target not in members:
                continue
            if target == start:
                path = [record]
                while path[0].source != start:
                    path.insert(0, came_from[path[0].source])
                return path
            if target not in came_from:
                came_from[target] = record
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def import_cycles(tree: Tree) -> list[str]:
    """One message per import cycle: its modules, then one path around it."""
    edges = {m: set(targets) for m, targets in tree.internal.items()}
    messages = []
    for component in strongly_connected(edges):
        path = "\n    ".join(str(step) for step in _path_back(tree, component))
        messages.append(f"cycle among {', '.join(component)}:\n    {path}")
    return messages


def size_reason(path: Path) -> str | None:
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return next((line.strip() for line in docstring.splitlines()
                 if line.strip().startswith("Size:")), None)


def oversized_modules(tree: Tree, limit: int = MAX_LINES) -> list[str]:
    messages = []
    for name, path in sorted(tree.modules.items()):
        lines = len(path.read_text().splitlines())
        if lines > limit and size_reason(path) is None:
            messages.append(f"{tree.relative(name)}: {lines} lines (limit {limit})")
    return messages


def backward_dependencies(tree: Tree) -> list[str]:
    """Imports against the direction routing/ <- switchyard <- apps."""
    messages = []
    for name in sorted(tree.modules):
        top = name.split(".")[0]
        if top == "routing":
            messages += [f"{record}: routing/ imports platform/"
                         for target, record in sorted(tree.internal[name].items())
                         if tree.platform_module(target)]
            messages += [f"{record}: routing/ imports Django"
                         for target, record in sorted(tree.external[name].items())
                         if target in DJANGO_PACKAGES]
        elif top == "switchyard" and name not in ALLOWED_APP_IMPORTS:
            messages += [f"{record}: the switchyard package imports the {target.split('.')[0]} app"
                         for target, record in sorted(tree.internal[name].items())
                         if target.split(".")[0] in APPS]
    return messages


def _report(problems: list[str], what: str, advice: str = "") -> str:
    listed = "\n  ".join(problems)
    return f"{what} ({len(problems)}):\n  {listed}" + (f"\n{advice}" if advice else "")


# -- the real tree --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_tree() -> Tree:
    tree = scan(REPO)
    # The scan sees the tree (or every check below would pass on nothing).
    assert {"switchyard.celery", "switchyard.urls", "jobs.models", "routing.topology"} <= set(
        tree.modules)
    assert not any("migrations" in p.parts for p in tree.modules.values())
    assert "routing.topology" in tree.internal["switchyard.settings.base"]
    return tree


def test_no_import_cycles(repo_tree):
    cycles = import_cycles(repo_tree)
    assert cycles == [], _report(cycles, "import cycles (function-local imports count)",
                                 "Move the code to the module its dependencies point to.")


def test_no_module_over_the_line_limit_without_a_size_reason(repo_tree):
    oversized = oversized_modules(repo_tree)
    assert oversized == [], _report(oversized, f"modules over {MAX_LINES} lines", SIZE_HELP)


def test_dependencies_point_from_the_apps_to_switchyard_to_routing(repo_tree):
    backward = backward_dependencies(repo_tree)
    assert backward == [], _report(
        backward, "imports against routing/ <- switchyard <- apps",
        f"Allowed exceptions (tests/test_architecture.py): {sorted(ALLOWED_APP_IMPORTS)}")


# -- the checkers catch what they are for (a synthetic tree) -------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_cycle_dodged_by_a_function_local_import_is_reported(tmp_path):
    tree = scan(write(tmp_path, {
        "platform/jobs/__init__.py": "",
        "platform/jobs/admission.py": "from jobs.recording import record\n",
        "platform/jobs/recording.py": "from jobs import services\n",
        "platform/jobs/services.py": "import switchyard.celery as c\n",
        "platform/switchyard/__init__.py": "",
        "platform/switchyard/celery.py": ("def task():\n"
                                          "    from jobs.admission import admit\n"),
        "platform/tenants/__init__.py": "",
        "platform/tenants/models.py": "from jobs import admission\nimport os\n",
    }))
    [message] = import_cycles(tree)
    assert message.startswith("cycle among jobs.admission, jobs.recording, jobs.services, "
                              "switchyard.celery:")
    assert "switchyard.celery -> jobs.admission (line 2, in a function)" in message
    assert "tenants" not in message  # it imports the cycle but is not in it


def test_relative_imports_resolve_to_their_package(tmp_path):
    tree = scan(write(tmp_path, {
        "platform/media/__init__.py": "from .services import copy\n",
        "platform/media/services.py": "from . import storage\nfrom .models import File\n",
        "platform/media/storage.py": "from ..tenants.models import Tenant\n",
        "platform/media/models.py": "from . import services\n",
        "platform/tenants/__init__.py": "",
        "platform/tenants/models.py": "",
        "routing/__init__.py": "",
        "routing/topology.py": "from .names import queue\n",
        "routing/names.py": "",
    }))
    assert set(tree.internal["media.services"]) == {"media.storage", "media.models"}
    assert set(tree.internal["media"]) == {"media.services"}
    assert set(tree.internal["media.storage"]) == {"tenants.models"}
    assert set(tree.internal["routing.topology"]) == {"routing.names"}
    assert import_cycles(tree) == [
        "cycle among media.models, media.services:\n"
        "    media.models -> media.services (line 1)\n"
        "    media.services -> media.models (line 2)"]


def test_no_cycle_no_report(tmp_path):
    tree = scan(write(tmp_path, {
        "platform/jobs/__init__.py": "",
        "platform/jobs/a.py": "from jobs import b\nfrom jobs.b import thing\nimport json\n",
        "platform/jobs/b.py": "import routing.topology\nfrom jobs import c\n",
        "platform/jobs/c.py": "",
        "routing/__init__.py": "",
        "routing/topology.py": "import kombu\n",
    }))
    assert import_cycles(tree) == []
    assert set(tree.internal["jobs.b"]) == {"routing.topology", "jobs.c"}
    assert set(tree.external["routing.topology"]) == {"kombu"}


def test_oversized_modules_need_a_size_line(tmp_path):
    body = "x = 1\n" * MAX_LINES
    tree = scan(write(tmp_path, {
        "platform/jobs/__init__.py": "",
        "platform/jobs/big.py": f'"""Big."""\n{body}',
        "platform/jobs/exactly.py": body,
        "platform/jobs/reasoned.py": f'"""Big.\n\nSize: one table of every state.\n"""\n{body}',
        "platform/jobs/mentions.py": f'"""Big, no Size: line of its own."""\n{body}',
        "platform/jobs/migrations/0001_initial.py": body * 2,
        "routing/__init__.py": "",
        "routing/wire.py": body + "y = 2\n",
    }))
    assert oversized_modules(tree) == [
        f"platform/jobs/big.py: {MAX_LINES + 1} lines (limit {MAX_LINES})",
        f"platform/jobs/mentions.py: {MAX_LINES + 1} lines (limit {MAX_LINES})",
        f"routing/wire.py: {MAX_LINES + 1} lines (limit {MAX_LINES})",
    ]


def test_backward_dependencies_are_reported(tmp_path):
    tree = scan(write(tmp_path, {
        "platform/switchyard/__init__.py": "",
        "platform/switchyard/celery.py": ("import routing.topology\n"
                                          "def f():\n    from jobs.recording import job_begin\n"),
        "platform/switchyard/settings/__init__.py": "",
        "platform/switchyard/settings/base.py": "from routing import topology\nimport os\n",
        "platform/switchyard/urls.py": "from monitoring.views import metrics\n",
        "platform/switchyard/worker.py": "from . import celery\n",
        "platform/jobs/__init__.py": "",
        "platform/jobs/recording.py": "from switchyard.celery import app\n",
        "platform/monitoring/__init__.py": "",
        "platform/monitoring/views.py": "",
        "routing/__init__.py": "",
        "routing/topology.py": "from kombu import Queue\n",
        "routing/access.py": "from django.conf import settings\nfrom switchyard import celery\n",
        "routing/wire.py": "import jobs.recording\n",
    }))
    assert backward_dependencies(tree) == [
        "routing.access -> switchyard.celery (line 2): routing/ imports platform/",
        "routing.access -> django (line 1): routing/ imports Django",
        "routing.wire -> jobs.recording (line 1): routing/ imports platform/",
        "switchyard.celery -> jobs.recording (line 3, in a function): "
        "the switchyard package imports the jobs app",
        "switchyard.urls -> monitoring.views (line 1): "
        "the switchyard package imports the monitoring app",
    ]
