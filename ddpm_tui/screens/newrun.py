"""The new-run form (a modal over the Train screen). Its fields are generated from the
option declaration (core/training/options.py); it only collects and checks values, and the Train
screen launches `ddpm-tui train ...` with them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from core.data.files import is_hidden
from core.training import options
from ddpm_tui.devices import find_choices_for, known_choices, provisional_choices
from ddpm_tui.widgets.tickbox import TickBox

@dataclass
class NewRun:
    name: str
    options: dict[str, object]  # trainer option name -> value (see jobs.train_command)


def default_run_name() -> str:
    return time.strftime("run-%m%d-%H%M%S")  # short: the runs table is narrow at 80 columns


def has_cuda_gpu() -> bool:
    """Whether training will find a CUDA GPU, without importing torch (slow) in the studio."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, no driver: no GPU
        return False


def class_folders(data_dir: Path) -> int:
    """The breed folders directly under ``data_dir`` (core.data.files' rule, without walking
    the images: the form opens on the event loop)."""
    try:
        return sum(1 for p in Path(data_dir).iterdir() if not is_hidden(p.name) and p.is_dir())
    except OSError:
        return 0


NAME_HELP = "the run's folder name under runs/: " + options.RUN_NAME_RULE


def form_defaults(gpu: bool) -> dict[str, Any]:
    """The form's starting values: the new-run recipe with the original's network on a GPU, a
    CPU-sized network and a time budget otherwise (the CLI's too: options.new_run_defaults)."""
    return options.new_run_defaults(gpu)


class NewRunScreen(ModalScreen[NewRun | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+r", "start", "Start", priority=True)]

    def __init__(self, data_dir: Path, runs_dir: Path, gpu: bool | None = None) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.runs_dir = runs_dir
        self.gpu = has_cuda_gpu() if gpu is None else gpu
        # a set of several breeds (the demo set, the scraped dogs) proposes breed labels
        conditional = class_folders(data_dir) >= 2
        self.defaults = {**form_defaults(self.gpu), "data": str(data_dir), "conditional": conditional}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="newrun-dialog"):
            yield Label("New training run", classes="dialog-title")
            with VerticalScroll(id="newrun-form"):
                with Grid(classes="form-grid", id="newrun-grid"):
                    yield Label("Run name")
                    yield Input(default_run_name(), compact=True, id="name", tooltip=NAME_HELP)
                    for option in options.form_options():
                        yield Label(option.label)
                        widget = self._widget(option, self.defaults[option.name])
                        widget.tooltip = options.help_text(option)
                        yield widget
            # the focused field's help (the same text as its tooltip and its --help line)
            yield Static(NAME_HELP, id="newrun-help")
            yield Label("", id="newrun-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start (Ctrl+R)", compact=True, id="start", variant="success")
                yield Button("Cancel", compact=True, id="cancel")

    @staticmethod
    def _widget(option: options.Option, value: Any):
        if option.type is bool:
            return TickBox(value, compact=True, id=option.name)
        if option.choices:
            return Select([(c, c) for c in option.choices], value=value, allow_blank=False, compact=True,
                          id=option.name)
        if option.name == "device":  # auto, cpu, cuda:N per visible GPU, mps: filled in by on_mount
            choices = known_choices() or provisional_choices(value)
            return Select([(c, c) for c in choices], value=value, allow_blank=False, compact=True, id=option.name)
        kind = {int: "integer", float: "number"}.get(option.type, "text")
        return Input(option.show(value), compact=True, id=option.name, type=kind)

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()
        if known_choices() is None:  # counting GPUs imports torch: not on the event loop
            self.run_worker(self._find_devices, thread=True, group="devices", name="device list",
                            exit_on_error=False)

    def on_descendant_focus(self, event) -> None:
        """The help line follows the focus."""
        widget = event.widget
        while widget is not None and widget is not self and not widget.tooltip:
            widget = widget.parent  # a drop-down's inner part: its Select has the help
        if widget is not None and widget is not self:
            self.query_one("#newrun-help", Static).update(Text(str(widget.tooltip)))

    def _find_devices(self) -> None:
        find_choices_for(self, self._set_devices)

    def _set_devices(self, choices: list[str]) -> None:
        if not self.is_mounted:
            return
        select = self.query_one("#device", Select)
        current = select.value
        select.set_options([(c, c) for c in choices])
        select.value = current if current in choices else options.BY_NAME["device"].default

    def on_select_changed(self, event: Select.Changed) -> None:
        """A preset proposes its natural image size; a recipe fills in its values."""
        if event.select.id == "preset" and event.value in options.PRESET_IMAGE_SIZE:
            self.query_one("#image_size", Input).value = str(options.PRESET_IMAGE_SIZE[event.value])
        elif event.select.id == "recipe" and event.value in options.RECIPES:
            values = options.recipe_defaults(event.value)
            for name in {k for recipe in options.RECIPES.values() for k in recipe}:
                self._set(name, values[name])

    def _set(self, name: str, value: Any) -> None:
        widget = self.query_one(f"#{name}")
        if isinstance(widget, Input):
            widget.value = options.BY_NAME[name].show(value)
        else:
            widget.value = value

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
        if not options.RUN_NAME_RE.match(name):
            raise ValueError(f"run name {name[:80]!r}: {options.RUN_NAME_RULE}")
        if (self.runs_dir / name).exists():
            raise ValueError(f"run name {name!r} is taken; pick another or resume that run")
        values: dict[str, object] = {}
        for option in options.form_options():
            widget = self.query_one(f"#{option.name}")
            try:
                values[option.name] = option.parse(str(widget.value)) if isinstance(widget, Input) else (
                    option.check(widget.value))
            except ValueError as exc:
                raise ValueError(f"{option.label}: {str(exc).removeprefix(option.name + ': ')}") from None
        data = str(values["data"]).strip()
        if not data or not Path(data).expanduser().is_dir():
            raise ValueError(f"dataset folder {data!r} does not exist")
        values["data"] = str(Path(data).expanduser())
        return NewRun(name, values)

    def action_start(self) -> None:
        try:
            run = self.collect()
        except ValueError as exc:
            self.query_one("#newrun-error", Label).update(f"[b red]{exc}[/]")
            return
        self.dismiss(run)
