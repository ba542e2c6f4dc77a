"""The one-line bar at the top of every screen: which screen is showing, the keys that
switch screens (also clickable), and a short status on the right."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label

SCREENS: tuple[tuple[str, str, str], ...] = (
    # (mode name, key, title)
    ("dataset", "1", "Dataset"),
    ("scrape", "2", "Scrape"),
    ("train", "3", "Train"),
    ("sample", "4", "Sample"),
)


class NavTab(Label):
    """A clickable screen name."""

    def __init__(self, mode: str, key: str, title: str, active: bool) -> None:
        super().__init__(f" {key} {title} ", classes="navtab -active" if active else "navtab")
        self.mode = mode
        self.tooltip = f"Press {key} (or {title[0].lower() if mode != 'sample' else 'g'}) to open {title}"

    def on_click(self) -> None:
        self.app.switch_mode(self.mode)


class NavBar(Horizontal):
    """Top bar: app name, the four screens (current highlighted), a right-aligned note."""

    def __init__(self, current: str) -> None:
        super().__init__(id="navbar")
        self.current = current

    def compose(self) -> ComposeResult:
        yield Label("ddpm-tui", id="nav-title")
        for mode, key, title in SCREENS:
            yield NavTab(mode, key, title, mode == self.current)
        yield Label("", id="nav-note")
        yield Label("F1 help · ^p commands", id="nav-help")
