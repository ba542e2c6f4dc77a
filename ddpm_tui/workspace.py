"""Where the studio keeps its files: the workspace folder and its fixed layout.

Default is the platform's user data directory for "ddpm-tui"; ``--workspace`` or the
``DDPM_TUI_HOME`` environment variable override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_VAR = "DDPM_TUI_HOME"
DEFAULT_DATASET = "dogs"


def default_root() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("ddpm-tui", appauthor=False))


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, override: str | os.PathLike | None = None) -> "Workspace":
        root = Path(override).expanduser() if override else default_root()
        return cls(root.resolve())

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dataset_dir(self, name: str = DEFAULT_DATASET) -> Path:
        return self.data_dir / name

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / name

    @property
    def scrape_db(self) -> Path:
        return self.root / "scrape.sqlite"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> "Workspace":
        for d in (self.data_dir, self.runs_dir, self.quarantine_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self
