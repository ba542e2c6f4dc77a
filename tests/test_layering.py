"""The import rules of the map (../shared/DESIGN.md), read from the source with ast so lazy
imports inside functions count too:

* ``ddpm_tui -> core, scraper``; ``core`` and ``scraper`` never import each other or ``ddpm_tui``.
* core's subjects form layers, ``io < diffusion < data < quality < training``: a module may
  import its own subject and the ones below it, never one above.
* no cycle between files anywhere in the three packages.
* some parts stay torch-free (the CLI's --help, the run lists) and Textual-free (all of core).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "scraper", "ddpm_tui")
CORE_LAYERS = ("io", "diffusion", "data", "quality", "training")
TORCH_FREE = ("core.io.atomic", "core.data.image_features", "core.io.jsonio", "core.io.safe_text", "core.diffusion.registry",
              "core.training.options", "core.training.runs", "core.quality.eval_log", "core.data.files",
              "core.data.curation", "core.data.quarantine", "core.data.stats", "scraper.job")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # a package's __init__ is only a docstring here, so importing a subject's package is no edge
    return {name: {m for m in _imports(path, known) if m != name and m in known and m.count(".") >= 1}
            for name, path in modules.items()}


def test_packages_point_one_way():
    bad = [(a, b) for a, deps in _graph().items() for b in deps
           if a.split(".")[0] in ("core", "scraper") and b.split(".")[0] != a.split(".")[0]]
    assert bad == []


def test_core_subjects_import_only_downwards():
    bad = []
    for a, deps in _graph().items():
        if not a.startswith("core.") or a.count(".") < 2:
            continue
        level = CORE_LAYERS.index(a.split(".")[1])
        bad += [(a, b) for b in deps if b.startswith("core.") and CORE_LAYERS.index(b.split(".")[1]) > level]
    assert bad == []


def test_every_core_module_sits_in_a_subject():
    loose = sorted(p.name for p in (REPO / "core").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    subjects = sorted(p.name for p in (REPO / "core").iterdir() if (p / "__init__.py").is_file())
    assert subjects == sorted(CORE_LAYERS)
    for subject in subjects:  # each says what it holds, in one line, and imports nothing
        tree = ast.parse((REPO / "core" / subject / "__init__.py").read_text())
        doc = ast.get_docstring(tree) or ""
        assert doc and "\n" not in doc.strip(), subject
        assert all(isinstance(n, ast.Expr) for n in tree.body), subject


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_files():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules(module):
    code = f"import sys, {module}; sys.exit(('torch' in sys.modules) + 2 * ('textual' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
