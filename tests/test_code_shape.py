"""The shape the house keeps (issue #18): no module of the product over 600 lines, no class
over 400, no function over 60; and the wheel holds exactly the three packages, every folder
of them included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "scraper", "ddpm_tui")
MAX_FILE, MAX_CLASS, MAX_FUNCTION = 600, 400, 60


def oversized(path: Path, name: str) -> list[str]:
    text = path.read_text()
    out = [f"{name}: {text.count(chr(10))} lines"] if text.count("\n") > MAX_FILE else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                out.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return out


def test_no_module_class_or_function_is_oversized():
    found = [line for pkg in PACKAGES for path in sorted((REPO / pkg).rglob("*.py"))
             for line in oversized(path, str(path.relative_to(REPO)))]
    assert found == []


def test_the_size_check_sees_a_long_function_and_a_long_file(tmp_path):
    body = "    x = 1\n"
    path = tmp_path / "m.py"
    path.write_text("def ok():\n" + body * (MAX_FUNCTION - 1))
    assert oversized(path, "m.py") == []
    path.write_text("def long():\n" + body * MAX_FUNCTION)
    assert oversized(path, "m.py") == [f"m.py:1 long: {MAX_FUNCTION + 1} lines"]
    path.write_text("x = 1\n" * (MAX_FILE + 1))
    assert oversized(path, "m.py") == [f"m.py: {MAX_FILE + 1} lines"]


def test_the_wheel_holds_exactly_the_three_packages_and_all_their_folders():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(find_packages(str(REPO), include=config["include"], exclude=config.get("exclude", ())))
    assert {name.split(".")[0] for name in found} == set(PACKAGES)
    # a folder of .py files without __init__.py would be left out of the wheel
    folders = {".".join(p.parent.relative_to(REPO).parts) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    assert folders <= found
