"""The one-line bar at the top of every screen: which screen is showing, the keys that
switch screens (also clickable), and a short status on the right."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label

from ddpm_tui.modes import SCREENS, Mode

class NavTab(Label):
    """A clickable screen name."""

    def __init__(self, mode: Mode, active: bool) -> None:
        super().__init__(f" {mode.key} {mode.title} ", classes="navtab -active" if active else "navtab")
        self.mode = mode.name
        self.tooltip = f"Press {mode.key} (or {mode.letter}) to open {mode.title}"

    def on_click(self) -> None:
        self.app.switch_mode(self.mode)


class NavBar(Horizontal):
    """Top bar: app name, the screens (current highlighted), a right-aligned note."""

    def __init__(self, current: str) -> None:
        super().__init__(id="navbar")
        self.current = current

    def compose(self) -> ComposeResult:
        yield Label("ddpm-tui", id="nav-title")
        for mode in SCREENS:
            yield NavTab(mode, mode.name == self.current)
        yield Label("", id="nav-note")
        yield Label("F1 help · ^p commands", id="nav-help")
