"""The layering of docs/architecture.md, read from the source: every import (at module
level or inside a function) runs downward, no two modules import each other through any
path, no module imports another module's private names, and pyganx-runtime imports
neither pyganx nor torch."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import name -> source folder
PACKAGES = {"pyganx": ROOT / "pyganx", "pyganx_plugins": ROOT / "plugins",
            "pyganx_runtime": ROOT / "runtime" / "pyganx_runtime"}

#: Top to bottom. A module may import modules of its own component, or of a component
#: further down this list; never one higher up, nor a sibling in its own row.
LAYERS = [
    ["pyganx.__main__"],
    ["pyganx.cli"],
    ["pyganx.bench"],
    ["pyganx"],                                    # the package's face: pyganx.train, load_generator, ...
    ["pyganx.api"],
    ["pyganx.metrics"],
    ["pyganx.export"],
    ["pyganx.engine"],
    ["pyganx.registry"],
    ["pyganx_plugins"],                            # the built-in variants (loaded by entry point)
    ["pyganx.plugin"],
    ["pyganx.losses", "pyganx.data", "pyganx.augment"],
    ["pyganx.nn"],
    ["pyganx.tuning"],                             # which implementation runs (measured): the package face
    ["pyganx.tuning.choice"],                      # choose(): pins, the cache or a measurement
    ["pyganx.tuning.cache", "pyganx.tuning.measurement"],
    ["pyganx.tuning.keys", "pyganx.tuning.state"],
    ["pyganx.ops"],
    ["pyganx._extension"],
    ["pyganx._build_meta"],                        # written by setup.py
    ["pyganx.flags"],                              # dataclass -> CLI flags (its check raises UsageError)
    ["pyganx.errors", "pyganx._version", "pyganx._paths", "pyganx.weights_file"],
    ["pyganx_runtime.__main__"],
    ["pyganx_runtime.cli"],
    ["pyganx_runtime.serve"],
    ["pyganx_runtime"],
    ["pyganx_runtime.translator", "pyganx_runtime.triton"],
    ["pyganx_runtime.tiling"],
    ["pyganx_runtime.images", "pyganx_runtime.metadata", "pyganx_runtime.tensors"],
    ["pyganx_runtime.errors", "pyganx_runtime.files", "pyganx_runtime._version"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def component(module: str) -> str:
    """The LAYERS entry a module belongs to (the longest one it lies in)."""
    best = max((c for c in RANK if module == c or module.startswith(c + ".")), key=len, default=None)
    if best is None or (best in ("pyganx", "pyganx_runtime") and module != best):
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py (nor docs/architecture.md)")
    return best


def _imports(module: str, path: Path):
    """(imported module, imported name or None, line) for every import of a project module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{source}.{a.name}"
                if sub in MODULES:
                    yield sub, None, node.lineno
                else:
                    yield source, a.name, node.lineno


EDGES = {m: sorted(set(_imports(m, p)), key=lambda e: (e[0], e[1] or "", e[2])) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for m in MODULES:
        component(m)


def test_imports_run_downward():
    upward = []
    for m, edges in EDGES.items():
        for target, _, line in edges:
            if target not in MODULES:
                upward.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}, which does not exist")
                continue
            a, b = component(m), component(target)
            if a != b and RANK[b] <= RANK[a]:
                upward.append(f"{MODULES[m].relative_to(ROOT)}:{line} ({a}) imports {target} ({b}), "
                              f"which is not below it")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in edges if t in MODULES and t != m} for m, edges in EDGES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                cycle = visit(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_private_names_of_another_package():
    """``_name`` belongs to the package that defines it: code outside that package may
    not import it (dunders such as __version__ are public)."""
    found = []
    for m, edges in EDGES.items():
        for target, name, line in edges:
            private = name if name is not None else target.rpartition(".")[2]
            if not private.startswith("_") or private.startswith("__"):
                continue
            owner = target if name is not None else target.rpartition(".")[0]
            if not (m == owner or m.startswith(owner + ".")):
                found.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {private} from {owner}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("forbidden", ["torch", "pyganx", "pyganx_plugins"])
def test_the_runtime_imports_neither_torch_nor_pyganx(forbidden):
    found = []
    for m, path in MODULES.items():
        if not m.startswith("pyganx_runtime"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n == forbidden or n.startswith(forbidden + ".")]
    assert not found, "\n".join(found)


def test_the_checks_see_a_planted_upward_import_and_cycle(tmp_path, monkeypatch):
    """The rules above are not vacuous: an ops module importing the engine is reported."""
    fake = {**EDGES, "pyganx.ops.layout": [*EDGES["pyganx.ops.layout"], ("pyganx.engine.trainer", None, 1)]}
    monkeypatch.setattr(sys.modules[__name__], "EDGES", fake)
    with pytest.raises(AssertionError, match="imports pyganx.engine.trainer"):
        test_imports_run_downward()
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()


#: Where a module or function of the repository's Python grows past one job (style.md):
#: more lines than these say it should be split along the seam of its second job.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 100
SOURCE_FOLDERS = ["pyganx", "plugins", "runtime", "tests", "benchmarks", "examples", "docs"]


def _python_files():
    for folder in SOURCE_FOLDERS:
        yield from sorted(p for p in (ROOT / folder).rglob("*.py") if "build" not in p.parts)


def _too_long(paths) -> list[str]:
    found = []
    for path in paths:
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        if lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {size} lines")
    return found


def test_no_module_or_function_has_grown_past_one_job():
    assert not _too_long(_python_files()), "split these along their second job:\n" + "\n".join(
        _too_long(_python_files()))


def test_the_size_check_sees_a_long_function_and_module(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n" + "\n" * (MAX_MODULE_LINES - MAX_FUNCTION_LINES))
    (tmp_path / "fine.py").write_text("def g():\n    return 1\n")
    found = _too_long([tmp_path / "long.py", tmp_path / "fine.py"])
    assert found == [f"long.py: {MAX_MODULE_LINES + 1} lines", f"long.py:1 f(): {MAX_FUNCTION_LINES + 1} lines"]
