"""What every studio screen shares: the nav bar on top, the footer of key bindings below,
and small helpers for messages that replace older ones instead of piling up."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol, cast

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from ddpm_tui.jobs import JobTable
from ddpm_tui.widgets.navbar import NavBar
from ddpm_tui.workspace import Workspace


class Studio(Protocol):
    """What a screen may use of the app (ddpm_tui.app.StudioApp), named here so that
    screens do not import the app that imports them."""

    workspace: Workspace
    jobs: JobTable
    poll_interval: float

    @property
    def dataset_dir(self) -> Path: ...

    def set_dataset(self, path: Path) -> None: ...

    def color_note(self) -> str: ...


class StudioScreen(Screen):
    """Subclasses set MODE and implement compose_body()."""

    MODE = ""
    MAIN = ""  # the widget (a selector) that gets focus when the screen opens or its data arrives

    @property
    def studio(self) -> Studio:
        return cast(Studio, self.app)

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield from self.compose_body()
        # the palette key is in the nav bar: docked in the footer it covered the last keys
        yield Footer(compact=True, show_command_palette=False)

    def focus_main(self) -> None:
        """Focus the main table or list, unless the user is already in a visible widget:
        arrow keys then work at once, and the focus highlight shows where they go."""
        focused = self.focused
        if focused is not None and focused.display and focused.visible:
            return
        widget = self.query(self.MAIN).first() if self.MAIN else None
        if widget is not None and widget.display and widget.focusable:
            widget.focus()

    def on_screen_resume(self) -> None:
        self.call_after_refresh(self.focus_main)
        self.update_color_notes()  # the colour choice may have changed on another screen

    def update_color_notes(self) -> None:
        for note in self.query(".color-note"):
            note.update(self.studio.color_note())

    def palette_commands(self) -> Iterable[SystemCommand]:
        """This screen's shown key bindings, also as command-palette entries."""
        title = self.MODE.capitalize()
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and binding.show and binding.description:
                key = binding.key_display or binding.key.split(",")[0]
                yield SystemCommand(f"{title}: {binding.description}", f"key {key}",
                                    lambda action=binding.action: self.run_action(action))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that crashed says so in one line instead of failing silently."""
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            first = str(error).splitlines()[0] if str(error) else ""
            message = f"{event.worker.name or 'background job'} failed: {type(error).__name__}: {first}"
            if message != getattr(self, "_last_worker_error", None):  # a poller failing each tick says it once
                self._last_worker_error = message
                self.notify(message, severity="error", timeout=10)

    def on_resize(self) -> None:
        # 80x24 over SSH: side panels get narrower (see Screen.-narrow in studio.tcss)
        self.set_class(self.size.width < 100, "-narrow")

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError(f"{type(self).__name__} must implement compose_body")
