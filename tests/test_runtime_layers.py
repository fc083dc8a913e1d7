"""The import rules, read from the source with ``ast`` (imports inside functions count): argparse only
in the CLI package (in stepgraph/ and training/ alike), training reaches the CLI only from its ``python -m``
entry points, no private LangGraph module, nothing in the runtime but the CLI imports training, and no
import cycle among stepgraph's modules nor among training's."""

import ast
from pathlib import Path

import stepgraph.training

import stepgraph

ROOT = Path(stepgraph.__file__).parent
TRAINING_ROOT = Path(stepgraph.training.__file__).parent  # the top-level training/ folder, installed as stepgraph.training


def _module_name(path: Path, root: Path = ROOT, package: str = "stepgraph") -> str:
    parts = [*package.split("."), *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, tree: ast.Module | None = None) -> set[str]:
    """Every module ``path`` (module ``name``; parsed as ``tree`` if given) imports, at any depth of the file
    (``from a import b`` counts a and a.b)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree or ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the modules of ``imports`` (each found once, as a path that returns to its start)."""
    graph = {name: {m for m in found if m in imports and m != name} for name, found in imports.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state[dep] == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif state[dep] == 0:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [node])
    return cycles


# The runtime: stepgraph/ itself. stepgraph.training is the offline side (a folder of its own) and not part of it.
MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
IMPORTS = {name: _imports(path, name) for name, path in MODULES.items()}
TRAINING = {_module_name(p, TRAINING_ROOT, "stepgraph.training"): p for p in sorted(TRAINING_ROOT.rglob("*.py"))}
TRAINING_IMPORTS = {name: _imports(path, name) for name, path in TRAINING.items()}


def test_argparse_is_imported_only_in_the_cli_package():
    everywhere = {**IMPORTS, **TRAINING_IMPORTS}  # the runtime and training: training's commands are parsed by stepgraph.cli too
    assert len(everywhere) == len(IMPORTS) + len(TRAINING_IMPORTS) > 100
    outside = sorted(name for name, found in everywhere.items() if "argparse" in found and not name.startswith("stepgraph.cli"))
    assert outside == []


def test_training_imports_the_cli_only_in_its_python_m_entry_points():
    """The CLI sits above training: only ``__main__.py`` and ``if __name__ == "__main__":`` blocks (old ``python -m``
    paths that run a ``stepgraph`` command) may reach up to it."""
    def outside_main_guard(name: str, path: Path) -> set[str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tree.body = [node for node in tree.body if not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))]
        return _imports(path, name, tree)

    upward = sorted(name for name, path in TRAINING.items() if path.name != "__main__.py"
                    and any(m.startswith("stepgraph.cli") for m in outside_main_guard(name, path)))
    assert upward == []


def test_no_private_langgraph_module_is_imported():
    private = sorted((name, m) for name, found in IMPORTS.items() for m in found if m.startswith("langgraph._internal"))
    assert private == []


def test_only_the_cli_imports_training():
    upward = sorted((name, m) for name, found in IMPORTS.items() if not name.startswith("stepgraph.cli")
                    for m in found if m == "stepgraph.training" or m.startswith("stepgraph.training."))
    assert upward == []


def test_no_import_cycle_among_the_runtime_modules():
    assert _cycles(IMPORTS) == []


def test_no_import_cycle_among_the_training_modules():
    assert len(TRAINING) > 20  # the walk found training's folder
    assert _cycles(TRAINING_IMPORTS) == []


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\n")
    imports = {_module_name(p, tmp_path, "pkg"): _imports(p, _module_name(p, tmp_path, "pkg")) for p in tmp_path.glob("*.py")}
    assert _cycles(imports) == [["pkg.a", "pkg.b", "pkg.a"]]


# The README's "Layout" rows, bottom layer first: a module imports only from its own layer and those before it.
LAYERS = [
    {"errors", "answers", "_moved"},
    {"models"},
    {"features", "context", "domain"},
    {"artifacts"},
    {"routing", "tier_policy"},
    {"graph"},
    {"runspec"},
    {"testbed", "defaults"},
    {"integrations"},
    {"benchmarks"},
    {"cli", "options", "__main__"},
]


def _layer(module: str) -> int:
    head = module.removeprefix("stepgraph.").split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if head in names)


def test_every_runtime_module_has_a_layer_and_imports_none_above_it():
    upward = sorted((name, m) for name, found in IMPORTS.items() if name != "stepgraph"  # the public API re-exports all
                    for m in found if m in MODULES and m != "stepgraph" and _layer(m) > _layer(name)
                   )
    assert upward == []


def test_the_runtime_modules_of_earlier_releases_still_import_as_the_moved_module():
    import importlib
    import sys
    import warnings

    from stepgraph import _MOVED

    for old, new in [*_MOVED.items(), ("stepgraph.gates.simple", "stepgraph.routing.gates.simple")]:
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old
    from stepgraph.gates import PolicyGate  # the names below an old package path, too

    assert PolicyGate is importlib.import_module("stepgraph.routing.gates").PolicyGate
