"""The architecture guard: one-way stages, no import cycles, small modules, thin CLI commands.

The checkers read source with `ast` (nothing is imported) and take the package directory, so
each rule is shown to fail on a small bad package written to `tmp_path` as well as checked on
`src/draftvocab`. Every import counts: module level, inside functions, and under
`if TYPE_CHECKING:` (a typing-only dependency still points one way or the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "draftvocab"
# Each stage imports only from the stages before it.
STAGES = ("core", "chat", "vocab", "analysis", "engine", "interop", "api", "cli")
# The package root (the lazy public API) and `__main__` are entry points: they may import any
# stage, and no stage may import them.
ENTRY_POINTS = ("", "__main__")
MAX_MODULE_LINES = 450
MAX_COMMAND_BODY_LINES = 45


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source.

    `from pkg.sub import name` counts as an import of `pkg.sub.name` when that is a module
    (a submodule import), else of `pkg.sub`. Relative imports are resolved.
    """
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, base] if base else here)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                # `import pkg.a.b` names pkg.a.b; keep the longest prefix that is our module.
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """One cycle (as a closed path a -> b -> ... -> a) per strongly connected group of modules
    that import each other, directly or not (Tarjan's algorithm)."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest closed path through the group's first module (breadth-first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def stage_of(root: Path, module: str) -> str | None:
    """The stage a module belongs to; None for an entry point."""
    rest = module.split(".")[1:]
    return None if ".".join(rest) in ENTRY_POINTS else rest[0]


def stage_violations(root: Path) -> list[str]:
    """Every import that points to a later stage, to an entry point, or out of a module that
    belongs to no known stage."""
    problems = []
    graph = import_graph(root)
    for module, deps in sorted(graph.items()):
        stage = stage_of(root, module)
        if stage is None:
            continue
        if stage not in STAGES:
            if module == f"{root.name}.{stage}" or f"{root.name}.{stage}" not in graph:
                problems.append(f"{module}: package '{stage}' is not a stage of {STAGES}")
            continue
        for dep in sorted(deps):
            dep_stage = stage_of(root, dep)
            if dep_stage is None:
                problems.append(f"{module} imports the entry point {dep}")
            elif dep_stage in STAGES and STAGES.index(dep_stage) > STAGES.index(stage):
                problems.append(f"{module} ({stage}) imports {dep} from a later stage "
                                f"({dep_stage})")
    return problems


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> list[tuple[str, int]]:
    """(module, lines) for every module longer than `limit` lines."""
    out = []
    for module, path in module_files(root).items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            out.append((module, lines))
    return out


def long_commands(root: Path, limit: int = MAX_COMMAND_BODY_LINES) -> list[tuple[str, int]]:
    """(module.function, lines) for every CLI command (a function decorated with
    `<app>.command` or `<app>.command(...)`) whose body after its docstring exceeds `limit`."""
    out = []
    for module, path in module_files(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if not any(_is_command(d) for d in node.decorator_list):
                continue
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(
                    body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                body = body[1:]
            lines = node.end_lineno - body[0].lineno + 1
            if lines > limit:
                out.append((f"{module}.{node.name}", lines))
    return out


def _is_command(decorator: ast.expr) -> bool:
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(func, ast.Attribute) and func.attr == "command"


# -- the rules on this package ---------------------------------------------------------------


def test_no_import_cycles():
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_stages_import_only_earlier_stages():
    problems = stage_violations(PACKAGE)
    assert not problems, "imports against the stage order:\n" + "\n".join(problems)


def test_no_module_over_the_size_limit():
    long = long_modules(PACKAGE)
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_cli_commands_are_thin():
    long = long_commands(PACKAGE)
    assert not long, f"CLI command bodies over {MAX_COMMAND_BODY_LINES} lines: {long}"


def test_the_checkers_see_the_real_package():
    graph = import_graph(PACKAGE)
    assert "draftvocab.chat.spans" in graph["draftvocab.vocab.counts"]
    # `from draftvocab.core import interrupts` is an import of the submodule.
    assert "draftvocab.core.interrupts" in graph["draftvocab.core.atomic"]
    assert long_commands(PACKAGE, limit=0)  # the commands are found at all


def test_one_version_everywhere():
    # Stages record `core.version` in artefacts; the package root and pyproject must agree.
    import tomllib

    import draftvocab
    from draftvocab.core.version import __version__

    pyproject = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    assert draftvocab.__version__ == __version__ == pyproject["project"]["version"]


# -- each rule fails on a bad package ----------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


def test_a_cycle_is_found_and_reported(tmp_path):
    root = _package(tmp_path, {
        "core/a.py": "from pkg.core import b\n",
        "core/b.py": "def f():\n    from pkg.core.c import g\n",  # a lazy import counts too
        "core/c.py": "import pkg.core.a\n\ndef g():\n    pass\n",
        "core/d.py": "from pkg.core import a\n",  # imports the cycle, is not in it
    })
    assert import_cycles(root) == [["pkg.core.a", "pkg.core.b", "pkg.core.c", "pkg.core.a"]]


def test_a_relative_import_cycle_is_found(tmp_path):
    root = _package(tmp_path, {
        "chat/x.py": "from . import y\n",
        "chat/y.py": "from .x import thing\n",
    })
    assert import_cycles(root) == [["pkg.chat.x", "pkg.chat.y", "pkg.chat.x"]]


def test_no_cycle_in_a_one_way_package(tmp_path):
    root = _package(tmp_path, {
        "core/a.py": "", "chat/b.py": "from pkg.core import a\n",
        "vocab/c.py": "from pkg.chat.b import x\nfrom pkg.core.a import y\n",
    })
    assert import_cycles(root) == []
    assert stage_violations(root) == []


def test_imports_from_later_stages_and_entry_points_are_found(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "__version__ = '1'\n",
        "__main__.py": "from pkg.cli import main\n",  # entry points may import anything
        "core/a.py": "def f():\n    from pkg.engine.e import run\n",
        "chat/b.py": "from pkg import __version__\n",
        "engine/e.py": "from pkg.core import a\n",
        "cli/main.py": "from pkg.engine import e\n",
        "extras/z.py": "",
    })
    assert stage_violations(root) == [
        "pkg.chat.b imports the entry point pkg",
        "pkg.core.a (core) imports pkg.engine.e from a later stage (engine)",
        f"pkg.extras: package 'extras' is not a stage of {STAGES}",
    ]


def test_long_modules_are_found(tmp_path):
    root = _package(tmp_path, {"core/short.py": "x = 1\n" * 450, "core/long.py": "x = 1\n" * 451})
    assert long_modules(root) == [("pkg.core.long", 451)]


def test_long_command_bodies_are_found(tmp_path):
    body = "    x = 1\n" * 45
    root = _package(tmp_path, {"cli/cmds.py": (
        "import typer\napp = typer.Typer()\n\n"
        f'@app.command("ok")\ndef ok():\n    """Docstring lines do not count."""\n{body}\n'
        f"@app.command\ndef bare():\n{body}    x = 2\n\n"
        f"@vocab_app.command(epilog='e')\ndef long():\n    \"\"\"Doc.\"\"\"\n{body}    return x\n\n"
        f"def helper():\n{body}{body}"
    )})
    assert long_commands(root) == [("pkg.cli.cmds.bare", 46), ("pkg.cli.cmds.long", 46)]
