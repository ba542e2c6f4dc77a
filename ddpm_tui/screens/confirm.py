"""Modal questions: a yes/no confirmation, and what to do with running jobs on quit."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes/No; No is focused, so Enter by accident does nothing harmful."""

    BINDINGS = [Binding("escape,n", "answer(False)", "No"), Binding("y", "answer(True)", "Yes")]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.detail, self.yes, self.no = question, detail, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, compact=True, id="yes", variant="warning")
                yield Button(self.no, compact=True, id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class QuitScreen(ModalScreen[str | None]):
    """Quit with jobs running: leave them running (default), stop them, or cancel.
    Returns "leave", "stop" or None."""

    BINDINGS = [Binding("escape", "choose(None)", "Cancel"), Binding("l", "choose('leave')", "Leave running"),
                Binding("s", "choose('stop')", "Stop jobs")]

    def __init__(self, jobs: list[str]) -> None:
        super().__init__()
        self.jobs = jobs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="quit-dialog"):
            yield Label("Jobs are still running", classes="dialog-title")
            yield Static("\n".join(f"• {j}" for j in self.jobs), classes="dialog-detail")
            yield Static("They run in their own processes and can keep going without the studio; "
                         "open the studio again to watch them.", classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Leave running & quit", compact=True, id="leave", variant="primary")
                yield Button("Stop them & quit", compact=True, id="stop", variant="error")
                yield Button("Cancel", compact=True, id="cancel")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, value: str | None) -> None:
        self.dismiss(value)
