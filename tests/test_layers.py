"""The architecture's rules, held by the import graph (docs/architecture.md).

The core's folders are layers, read top to bottom: ``api`` (what plug-ins implement and use), ``toolkit``,
``plan``, ``engine``, ``studies``, ``report``, ``cli``.  A module imports only its own layer and the ones
above it in that list — never one further down; plug-ins (``methods/``, ``tasks/``, ``metrics/``,
``published/``) import ``api`` and ``toolkit`` only; the core never imports a plug-in (the registry finds
them by entry point); no module reaches a private name (``_x``) in another folder; and the graph of
runtime imports — at the top of a module or inside a function alike — has no circle.  Imports under
``if TYPE_CHECKING:`` are annotations only and are not counted."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("api", "toolkit", "plan", "engine", "studies", "report", "cli")
PLUGINS = {"methods": "tdabench.methods", "tasks": "tdabench.tasks", "metrics": "tdabench.metrics",
           "published": "tdabench.published"}
MAX_LINES = 300


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: name → (file, whether it is a package's __init__)."""
    out = {}
    for folder, package in {"tdabench": "tdabench", **PLUGINS}.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [package, *path.relative_to(REPO / folder).with_suffix("").parts]
            init = parts[-1] == "__init__"
            out[".".join(parts[:-1] if init else parts)] = (path, init)
    return out


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) of every runtime import in module ``name``."""
    path, init = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "tdabench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if init else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tdabench":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return out


def place(name: str) -> str:
    """A module's folder in the rules: a layer, a plug-in kind, or 'root' (the package's own __init__)."""
    for folder, package in PLUGINS.items():
        if name == package or name.startswith(package + "."):
            return folder
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "root"


def folder(name: str) -> str:
    path, init = MODULES[name]
    return str(path.parent.relative_to(REPO))


def test_every_core_module_is_in_a_layer():
    loose = [n for n in MODULES if place(n) == "root" and n != "tdabench"]
    assert not loose, f"modules outside the layer folders: {loose}"


def test_no_import_runs_down_the_layers_and_plugins_use_api_and_toolkit_only():
    bad = []
    for name in MODULES:
        here = place(name)
        for target, _, line in imports(name):
            there = place(target)
            if here == "root":
                continue                                   # the package's facade re-exports the API
            if there == "root":
                bad.append(f"{name}:{line} imports the package root ({target}); import the module that defines it")
            elif here in PLUGINS:
                if there not in ("api", "toolkit") and there != here:
                    bad.append(f"{name}:{line} (a plug-in) imports {target} ({there}); plug-ins use api and toolkit")
            elif there in PLUGINS:
                bad.append(f"{name}:{line} (core) imports the plug-in {target}; ask the task or method through its hooks")
            elif LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{name}:{line} ({here}) imports {target} ({there}), a layer below it")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_folder():
    bad = [f"{name}:{line} takes {attr} from {target}" for name in MODULES for target, attr, line in imports(name)
           if attr.startswith("_") and target in MODULES and folder(target) != folder(name)]
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_circle():
    graph = {name: {t for t, _, _ in imports(name) if t in MODULES and t != name} for name in MODULES}
    # a package's __init__ runs before its modules: importing tdabench.x.y imports tdabench and tdabench.x first;
    # those edges are not dependencies of the module, so only explicit imports count here
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("a circle of imports: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_files_stay_short_or_say_why():
    """Every file ≤ 300 lines, or its docstring says why it is longer ("longer than 300 lines: ...")."""
    long = []
    for path, _ in MODULES.values():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and "longer than 300 lines:" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not long, "files over 300 lines that do not say why:\n" + "\n".join(long)


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
    """The checks above fail on a module that breaks them (so a passing run means something)."""
    fake = tmp_path / "tdabench" / "api"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from tdabench.engine.pipeline import evaluate\nfrom tdabench.tasks.digits import Digits\n")
    monkeypatch.setitem(MODULES, "tdabench.api.bad", (fake / "bad.py", False))
    found = [(t, place(t)) for t, _, _ in imports("tdabench.api.bad")]
    assert found == [("tdabench.engine.pipeline", "engine"), ("tdabench.tasks.digits", "tasks")]
    with pytest.raises(AssertionError, match="a layer below it"):
        test_no_import_runs_down_the_layers_and_plugins_use_api_and_toolkit_only()


def test_the_old_flat_names_import_the_moved_modules_themselves():
    """A plug-in written against ``tdabench.task`` / ``tdabench.method`` and a cache pickled before the move (a
    reference run's checkpoints) keep working: the old name is the same module object, not a copy."""
    import importlib
    import pickle

    import tdabench

    for old, new in tdabench.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from tdabench.api.task import Checkpoint
    assert pickle.loads(b"ctdabench.task\nCheckpoint\np0\n.") is Checkpoint      # a class pickled by its old path
    from tdabench.anchors import PublishedTable, register_published  # noqa: F401  (the published tables' old home)
