"""The studio: a Textual app with four screens (Dataset, Scrape, Train, Sample), one per
Textual mode, so each keeps its state while another is showing.

The app itself only routes keys, owns the table of background processes it started, and
asks what to do with running jobs on quit. Screens render state from files (run
directories, events files) and do heavy work in workers; jobs run as separate processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Input, Select, TextArea

from ddpm_tui.jobs import TRAIN_LOG, JobError, JobTable, current_scrape, log_tail, stop_run, terminate
from ddpm_tui.modes import SCREENS
from ddpm_tui.screens.confirm import QuitScreen
from ddpm_tui.screens.help import HelpScreen
from ddpm_tui.widgets.halfblock import COLOR_ENV, COLOR_MODES, HalfBlockImage, resolve_color_mode
from ddpm_tui.workspace import DEFAULT_DATASET, Workspace


def in_form_field(widget: Widget | None) -> bool:
    """A text field or a drop-down (closed or open, where letters search): the keys the
    user types belong to it, not to screen switching."""
    while widget is not None:
        if isinstance(widget, (Input, TextArea, Select)):
            return True
        widget = widget.parent if isinstance(widget.parent, Widget) else None
    return False


class StudioApp(App[None]):
    """`ddpm-tui` with no arguments. `workspace` holds data/, runs/, quarantine/, cache/."""

    CSS_PATH = "studio.tcss"
    TITLE = "ddpm-tui"
    MODES = {mode.name: mode.screen_class() for mode in SCREENS}
    BINDINGS = [
        # priority: a focused list or table must not swallow them (check_action lets them
        # through to form fields). Not in the footer: the nav bar shows them.
        *(Binding(m.key, f"switch_mode({m.name!r})", m.title, priority=True, show=False) for m in SCREENS),
        *(Binding(m.letter, f"switch_mode({m.name!r})", m.title, show=False) for m in SCREENS),
        Binding("f1,question_mark", "help", "Help", key_display="F1", show=False),  # in the nav bar
        Binding("q", "quit_key", "Quit", show=False),  # not while a form field has focus
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, workspace: Workspace, *, color_mode: str | None = None, start_mode: str = "dataset",
                 poll_interval: float = 0.5, sysmon: bool = True) -> None:
        """`color_mode` None: the choice remembered in the workspace (else "auto")."""
        super().__init__()
        self.workspace = workspace
        if color_mode is None:
            color_mode = self.settings().get("color_mode", "auto")
            if color_mode not in COLOR_MODES:
                color_mode = "auto"  # a hand-edited settings file is not worth a crash
        if color_mode not in COLOR_MODES:
            raise ValueError(f"unknown colour mode {color_mode!r}; use one of {', '.join(COLOR_MODES)}")
        if start_mode not in self.MODES:
            raise ValueError(f"unknown screen {start_mode!r}; use one of {', '.join(self.MODES)}")
        self.color_mode = color_mode
        # what the terminal told Rich (COLORTERM, TERM): "256" in tmux or over SSH without COLORTERM
        self.detected_color_system = self.console.color_system
        self._apply_console_colors()
        self.start_mode = start_mode
        # File polling period (<= 4 Hz keeps SSH traffic and CPU low).
        self.poll_interval = max(0.25, float(poll_interval))
        self.sysmon_enabled = sysmon
        self.dataset_name = DEFAULT_DATASET
        self.jobs = JobTable()

    # -- paths the screens share -------------------------------------------------------------

    @property
    def dataset_dir(self) -> Path:
        return self.workspace.dataset_dir(self.dataset_name)

    def set_dataset(self, path: Path) -> None:
        """Switch the dataset folder. A folder directly inside data/ is known by its name
        (the scraper can add to it); any other folder is used by its absolute path."""
        path = Path(path).resolve()
        data = self.workspace.data_dir.resolve()
        self.dataset_name = path.name if path.parent == data else str(path)

    # -- lifecycle -----------------------------------------------------------------------------

    def on_mount(self) -> None:
        try:
            self.workspace.ensure()
        except OSError as exc:
            self.notify(f"cannot create workspace {self.workspace.root}: {exc}", severity="error", timeout=10)
        self.dataset_name = self._initial_dataset()
        self.set_interval(1.0, self._reap)  # reap finished children: no zombies
        self.switch_mode(self.start_mode)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("switch_mode", "quit_key"):
            if in_form_field(self.focused):
                return False  # the key goes to the field (Esc leaves it, then 1-4 switch)
            if isinstance(self.screen, ModalScreen):
                return False  # answer the dialog first
        return True

    def _initial_dataset(self) -> str:
        """data/dogs when it has breed folders; else the first dataset under data/ that has
        (e.g. data/demo made from the Dataset screen); else dogs, to be filled."""
        def has_breeds(d: Path) -> bool:
            try:
                return any(p.is_dir() and not p.name.startswith(".") for p in d.iterdir())
            except OSError:
                return False

        if has_breeds(self.workspace.dataset_dir(DEFAULT_DATASET)):
            return DEFAULT_DATASET
        try:
            others = sorted(p for p in self.workspace.data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            others = []
        for d in others:
            if has_breeds(d):
                return d.name
        return DEFAULT_DATASET

    def _reap(self) -> None:
        """Collect children that exited; a failed start says why (last line of its log)."""
        for key, code in self.jobs.poll().items():
            if code in (0, -15, 143):  # done, or stopped by SIGTERM
                continue
            kind, _, name = key.partition(":")
            if kind == "train":
                tail = log_tail(self.workspace.run_dir(name) / TRAIN_LOG)
                self.notify(f"training {name} exited ({code}): {tail or 'see its console.log'}",
                            severity="error", timeout=15)
            else:
                job = current_scrape(self.workspace)
                tail = log_tail(job.log) if job else ""
                self.notify(f"scrape exited ({code}): {tail or 'see its log'}", severity="error", timeout=15)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- quitting with jobs running --------------------------------------------------------

    def running_jobs(self) -> list[tuple[str, object]]:
        """(description, stop handle) for every live job in this workspace."""
        from core.training.runs import list_runs

        out: list[tuple[str, object]] = []
        for info in list_runs(self.workspace.runs_dir):
            if info.state == "running" and info.alive:
                step = f"step {info.step}" if info.step is not None else "starting"
                out.append((f"training run {info.name} ({step})", info))
        job = current_scrape(self.workspace)
        if job is not None and job.alive():
            out.append((f"scrape of {len(job.breeds)} breed(s)", job))
        return out

    async def action_quit_key(self) -> None:
        await self.action_quit()

    async def action_quit(self) -> None:
        self.jobs.poll()
        jobs = self.running_jobs()
        if not jobs:
            self.exit()
            return

        def decided(choice: str | None) -> None:
            if choice is None:
                return
            if choice == "stop":
                self.stop_jobs([handle for _, handle in jobs])
            self.exit()

        self.push_screen(QuitScreen([desc for desc, _ in jobs]), decided)

    def stop_jobs(self, handles: Iterable[object]) -> None:
        from core.training.runs import RunInfo

        for handle in handles:
            try:
                if isinstance(handle, RunInfo):
                    stop_run(handle.path, handle.status)
                else:
                    terminate(handle.pid)  # type: ignore[attr-defined]
            except JobError as exc:
                self.notify(str(exc), severity="error")

    # -- command palette ---------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode in SCREENS:
            yield SystemCommand(f"Go to {mode.title}", f"Open the {mode.title} screen",
                                lambda m=mode.name: self.switch_mode(m))
        yield SystemCommand("Help", "Show every key", self.action_help)
        for mode in COLOR_MODES:
            yield SystemCommand(f"Image colours: {mode}", "How half-block images are coloured "
                                "(auto = from the terminal)", lambda m=mode: self.set_color_mode(m))
        commands = getattr(screen, "palette_commands", None)
        if callable(commands):
            yield from commands()

    # -- colours and remembered settings -------------------------------------------------------

    @property
    def settings_path(self) -> Path:
        return self.workspace.root / "studio.json"

    def settings(self) -> dict:
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_setting(self, key: str, value: object) -> None:
        from core.io.atomic import atomic_write_text

        data = self.settings()
        data[key] = value
        try:
            self.workspace.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.settings_path, json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            self.notify(f"cannot remember the setting in {self.settings_path}: {exc.strerror or exc}",
                        severity="warning")

    def effective_color_mode(self) -> str:
        return resolve_color_mode(self.color_mode, self.detected_color_system)

    def color_note(self) -> str:
        """One line for where images are drawn: which colours, and how to change them."""
        mode = self.effective_color_mode()
        return ("truecolor" if mode == "truecolor" else "256 colours") + " · ^p Image colours"

    def _apply_console_colors(self) -> None:
        """Images are drawn in the chosen depth, and the terminal must get it too: Rich would
        quietly turn truecolor into 256 colours when COLORTERM is missing (tmux, SSH)."""
        from rich.console import ColorSystem

        if self.effective_color_mode() == "truecolor":
            self.console._color_system = ColorSystem.TRUECOLOR
        else:
            detected = self.detected_color_system
            self.console._color_system = {"truecolor": ColorSystem.TRUECOLOR, "256": ColorSystem.EIGHT_BIT,
                                          "standard": ColorSystem.STANDARD,
                                          "windows": ColorSystem.WINDOWS}.get(detected or "")

    def set_color_mode(self, mode: str, *, remember: bool = True) -> None:
        self.color_mode = mode
        self._apply_console_colors()
        if remember:
            self.save_setting("color_mode", mode)
        for screen in self.screen_stack:  # screens of other modes catch up when resumed
            for widget in screen.query(HalfBlockImage):
                widget.watch_color_mode()
            update = getattr(screen, "update_color_notes", None)
            if callable(update):
                update()
        self.screen.refresh(repaint=True)
        self.refresh(repaint=True)
        env = os.environ.get(COLOR_ENV)
        extra = f" ({COLOR_ENV}={env} decides 'auto')" if mode == "auto" and env else ""
        self.notify(f"image colours: {mode}{extra}; remembered for this workspace")


def main() -> None:  # for `python -m ddpm_tui.app` during development
    StudioApp(Workspace.resolve(os.environ.get("DDPM_TUI_HOME"))).run()


if __name__ == "__main__":
    main()
