"""The new-run form (a modal over the Train screen). It only collects and checks values;
the Train screen launches `ddpm-tui train ...` with them."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select

PRESETS = ("tiny", "small", "seed")
SCHEDULES = ("linear", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class NewRun:
    name: str
    options: dict[str, object]  # trainer option name -> value (see jobs.train_command)


def default_run_name() -> str:
    return time.strftime("run-%m%d-%H%M%S")  # short: the runs table is narrow at 80 columns


# (field id, label, default, kind) ; kind: int | float | str
NUMBER_FIELDS: tuple[tuple[str, str, str, type], ...] = (
    ("image_size", "Image size px", "64", int),
    ("T", "Noise steps T", "1000", int),
    ("lr", "Learning rate", "3e-4", float),
    ("batch_size", "Batch size", "16", int),
    ("epochs", "Epochs", "500", int),
    ("save_frequency", "Save every N ep", "10", int),
    ("samples", "Samples/save", "16", int),
)


class NewRunScreen(ModalScreen[NewRun | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+r", "start", "Start", priority=True)]

    def __init__(self, data_dir: Path, runs_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.runs_dir = runs_dir

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="newrun-dialog"):
            yield Label("New training run", classes="dialog-title")
            with VerticalScroll(id="newrun-form"):
                with Grid(classes="form-grid", id="newrun-grid"):
                    yield Label("Run name")
                    yield Input(default_run_name(), compact=True, id="name")
                    yield Label("Dataset folder")
                    yield Input(str(self.data_dir), compact=True, id="data")
                    yield Label("Preset")
                    yield Select([(p, p) for p in PRESETS], value="small", allow_blank=False, compact=True, id="preset")
                    yield Label("Schedule")
                    yield Select([(s, s) for s in SCHEDULES], value="linear", allow_blank=False, compact=True, id="schedule")
                    for fid, label, default, _kind in NUMBER_FIELDS:
                        yield Label(label)
                        yield Input(default, compact=True, id=fid, type="number" if _kind is float else "integer")
                    yield Label("Device")
                    yield Select([(d, d) for d in DEVICES], value="auto", allow_blank=False, compact=True, id="device")
                    yield Label("Breed labels")
                    yield Checkbox("class-conditional", compact=True, id="conditional")
            yield Label("", id="newrun-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start (Ctrl+R)", compact=True, id="start", variant="success")
                yield Button("Cancel", compact=True, id="cancel")

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_start()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def collect(self) -> NewRun:
        """The form as a NewRun; ValueError with a one-line message naming the bad field."""
        name = self.query_one("#name", Input).value.strip()
        if not RUN_NAME_RE.match(name):
            raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if (self.runs_dir / name).exists():
            raise ValueError(f"run name {name!r} is taken; pick another or resume that run")
        data = self.query_one("#data", Input).value.strip()
        if not data or not Path(data).expanduser().is_dir():
            raise ValueError(f"dataset folder {data!r} does not exist")
        options: dict[str, object] = {
            "data": str(Path(data).expanduser()),
            "preset": self.query_one("#preset", Select).value,
            "schedule": self.query_one("#schedule", Select).value,
        }
        for fid, label, _default, kind in NUMBER_FIELDS:
            raw = self.query_one(f"#{fid}", Input).value.strip()
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{label}: {raw!r} is not a number") from None
            if value <= 0 and fid != "samples" or value < 0:
                raise ValueError(f"{label} must be positive, got {raw}")
            options[fid] = value
        options["device"] = self.query_one("#device", Select).value
        options["conditional"] = self.query_one("#conditional", Checkbox).value
        return NewRun(name, options)

    def action_start(self) -> None:
        try:
            run = self.collect()
        except ValueError as exc:
            self.query_one("#newrun-error", Label).update(f"[b red]{exc}[/]")
            return
        self.dismiss(run)
