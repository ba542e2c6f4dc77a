"""Fixtures for the studio tests (helpers live in studio_helpers.py, a unique module name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_tui.workspace import Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()
