"""Rules read from the source with ast (nothing is imported or run): where torch may be loaded, which
package may use which, and that a run's file names are spelled in one place."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "sklearn", "umap", "numba"}
APP_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]
TORCH_FREE = ["engine/data", "engine/runs", "engine/review", "engine/config.py", "engine/errors.py"]


def source_files(*folders: str) -> list[Path]:
    out: list[Path] = []
    for f in folders:
        path = ROOT / f
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at the top level, in if/try/with blocks and class
    bodies, but not in functions, nor under `if TYPE_CHECKING:`."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            todo += node.orelse if _is_type_checking(node.test) else [*node.body, *node.orelse]
        elif isinstance(node, (ast.Try, ast.TryStar)):
            todo += [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]
        elif isinstance(node, (ast.With, ast.ClassDef)):
            todo += node.body


def imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names an import statement loads: `from engine.runs import jobs` loads engine.runs and engine.runs.jobs."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level or not node.module:
        return []
    return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def heavy_imports_of_the_app() -> dict[str, list[str]]:
    """For every file the app loads (app.py, pages/, ui/, and every project module they import at module
    level, transitively): the heavy packages it imports at module level."""
    found: dict[str, list[str]] = {}
    todo = list(APP_FILES)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in module_level_imports(ast.parse(path.read_text(), filename=str(path))):
            for name in imported_names(node):
                if name.split(".")[0] in HEAVY:
                    found.setdefault(str(path.relative_to(ROOT)), []).append(name)
                for module in with_parents(name):
                    if module.split(".")[0] in ("engine", "ui"):
                        file = module_file(module)
                        if file is not None:
                            todo.append(file)
    return found | {"_seen": sorted(str(p.relative_to(ROOT)) for p in seen)}


def test_the_app_never_imports_torch_sklearn_or_umap_at_module_level() -> None:
    found = heavy_imports_of_the_app()
    seen = found.pop("_seen")
    # the walk really follows the app into the engine
    assert {"ui/progress.py", "engine/runs/jobs.py", "engine/runs/stages.py", "engine/review/metrics.py",
            "engine/data/cache.py", "engine/config.py"} <= set(seen)
    assert found == {}


def test_the_walk_would_see_a_heavy_import(tmp_path: Path) -> None:
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import torch\ntry:\n    import umap\nexcept ImportError:\n"
                     "    pass\ndef f():\n    import sklearn\nclass A:\n    from torchvision import ops\n")
    names = [n for node in module_level_imports(tree) for n in imported_names(node)]
    assert sorted(names) == ["os", "torchvision", "torchvision.ops", "umap"]


def test_the_torch_free_packages_never_import_the_training_code() -> None:
    offenders = []
    for path in source_files(*TORCH_FREE):
        for node in ast.walk(ast.parse(path.read_text())):  # anywhere, even inside a function
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in imported_names(node):
                    if name.startswith(("engine.method", "engine.train")) or name.split(".")[0] in HEAVY - {"sklearn"}:
                        offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_the_torch_free_packages_load_sklearn_only_inside_functions() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in source_files(*TORCH_FREE)
                 for node in module_level_imports(ast.parse(path.read_text()))
                 for name in imported_names(node) if name.split(".")[0] in HEAVY]
    assert offenders == []


# ----------------------------------------------------------------------------- file names


def run_file_names() -> set[str]:
    """Every name RunDir gives a run file or folder (a literal of one anywhere else is a second spelling)."""
    from engine.runs.rundir import RunDir

    run = RunDir(Path("RUN"))
    paths = [getattr(run, name) for name, value in vars(RunDir).items() if isinstance(value, property)]
    names = {p.relative_to(run.path).as_posix() for p in paths if isinstance(p, Path) and p != run.path}
    names |= {n.rsplit("/", 1)[-1] for n in names}
    # Folder names that are also everyday words (a "source" key, a "data" argument) cannot be told apart
    # from their use as names; RunDir's other folders and every file are checked.
    return names - {"source", "data"}


def cache_file_names() -> set[str]:
    from engine.data.cache import CACHE_FILES

    return set(CACHE_FILES)


def string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """String constants that could name a path: no docstrings, no prose (text with spaces)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if not re.search(r"\s", node.value):
                yield node.lineno, node.value


def spelled(names: set[str], literal: str, *, checkpoints: bool = False) -> bool:
    """The literal names one of `names` (or, with checkpoints=True, a checkpoint: RunDir.checkpoint's)."""
    parts = [p for p in re.split(r"[/\\]", literal) if p]
    return literal in names or any(p in names for p in parts) or (checkpoints and literal.endswith(".pt"))


def test_run_files_are_named_only_by_rundir() -> None:
    names = run_file_names()
    assert {"config.json", "status.json", ".worker.lock", "launch.json", "checkpoints/train_losses.npz",
            "predictions_phase_a.npz", "review_selection.json", "test_source", "checkpoints"} <= names
    offenders = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                 for path in source_files("engine", "ui", "pages", "app.py") if path.name != "rundir.py"
                 for line, value in string_literals(path) if spelled(names, value, checkpoints=True)]
    assert offenders == []


def test_the_cache_files_are_named_only_by_the_cache() -> None:
    names = cache_file_names()
    assert names == {"images.npy", "manifest.csv", "intake.json"}
    offenders = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                 for path in source_files("engine", "ui", "pages", "app.py") if path.name != "cache.py"
                 for line, value in string_literals(path) if spelled(names, value)]
    assert offenders == []


def test_the_name_check_sees_a_spelled_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""Reads status.json (prose is fine)."""\nP = RUN / "status.json"\nQ = f"{stage}.last.pt"\n'
                   'MSG = "see status.json for more"\n')
    literals = [value for _, value in string_literals(bad)]
    assert [v for v in literals if spelled(run_file_names(), v, checkpoints=True)] == ["status.json", ".last.pt"]
