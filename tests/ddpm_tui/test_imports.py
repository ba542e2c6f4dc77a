"""Dependencies point one way: ddpm_tui -> core, scraper. Importing every module of core
and scraper must not pull in textual (or the studio), and scraper must not pull in torch.
Each check runs in a fresh interpreter so nothing imported by pytest leaks in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [pkg.__name__]
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(info.name)
    names.append(info.name)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"modules": names, "top": loaded}))
"""


def _probe(package: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, package], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_without_textual_or_the_studio():
    info = _probe("core")
    assert len(info["modules"]) > 5  # really walked the package
    for banned in ("textual", "ddpm_tui", "scraper", "selenium", "tensorboard"):  # tensorboard: train --tensorboard only
        assert banned not in info["top"], f"importing core pulled in {banned}"


def test_scraper_imports_without_textual_or_torch():
    info = _probe("scraper")
    assert len(info["modules"]) > 3
    for banned in ("textual", "ddpm_tui", "core", "torch"):
        assert banned not in info["top"], f"importing scraper pulled in {banned}"


def test_cli_help_does_not_import_textual_or_torch():
    code = ("import sys; from ddpm_tui.cli import build_parser; build_parser(); "
            "print('textual' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_the_peer_library_is_imported_by_bench_only():
    """denoising-diffusion-pytorch (the `bench` extra) is a yardstick, never part of the
    product: no module of core, scraper or ddpm_tui names it, even in a lazy import."""
    users = [str(path.relative_to(REPO)) for package in ("core", "scraper", "ddpm_tui")
             for path in (REPO / package).rglob("*.py") if "denoising_diffusion_pytorch" in path.read_text()]
    assert users == []
    assert any("denoising_diffusion_pytorch" in p.read_text() for p in (REPO / "bench").glob("*.py"))
