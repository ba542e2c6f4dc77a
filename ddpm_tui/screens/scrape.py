"""Scrape: choose breeds (the 26 defaults, add or remove your own), the search engine and
how many images per breed; start `ddpm-tui scrape ... --events FILE` as a detached process
and follow its JSON-lines events: per-breed found / downloaded / failed and a capped log.

Because the job is a separate process that writes an events file, it survives switching
screens and quitting the studio; reopening re-attaches through cache/scrape/job.json.
"""

from __future__ import annotations

import re

from rich.text import Text

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, RichLog, Select, SelectionList, Static
from textual.widgets.selection_list import Selection
from textual.worker import get_current_worker

from core.io.safe_text import shown
from ddpm_tui.jobs import JobError, ScrapeJob, current_scrape, launch_scrape, read_jsonl, terminate
from ddpm_tui.screens.base import StudioScreen
from ddpm_tui.workspace import DEFAULT_DATASET

DATASET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LOG_LINES = 500  # the log keeps the newest lines only
COUNT_COLUMNS = ("found", "downloaded", "duplicate", "failed")
COLUMN_LABELS = {"found": "found", "downloaded": "saved", "duplicate": "dup", "failed": "failed"}


def default_breeds() -> list[str]:
    from scraper.breeds import DEFAULT_BREEDS

    return list(DEFAULT_BREEDS)


def engine_names() -> list[str]:
    from scraper.engines import ENGINES

    return list(ENGINES)


class ScrapeScreen(StudioScreen):
    MODE = "scrape"
    MAIN = "#breed-list"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", priority=True),
        Binding("ctrl+x", "stop", "Stop", priority=True),
        Binding("minus", "remove_breed", "Remove breed"),
        Binding("escape", "blur", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._job: ScrapeJob | None = None
        self._offset = 0
        self._polling = False
        self._counts: dict[str, dict] = {}
        self._searches_failed = 0
        self._stopped: str = ""  # why the job stopped searching (offline, full disk, no browser)

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="scrape-body"):
            with Vertical(id="scrape-left"):
                yield Label("Breeds (Space toggles, - removes)", classes="panel-title")
                yield SelectionList[str](*[Selection(b, b, True) for b in default_breeds()], compact=True, id="breed-list")
                yield Input(placeholder="add a breed + Enter", compact=True, id="add-breed")
                with Horizontal(classes="form-row"):
                    yield Label("Engine")
                    yield Select([(e, e) for e in engine_names()], value=engine_names()[0], allow_blank=False,
                                 compact=True, id="engine")
                with Horizontal(classes="form-row"):
                    yield Label("Dataset")
                    yield Input(DEFAULT_DATASET, compact=True, id="scrape-dataset")
                with Horizontal(classes="form-row"):
                    yield Label("Max/breed")
                    yield Input("100", compact=True, id="max-per-breed", type="integer")
                with Horizontal(classes="button-row"):
                    yield Button("Start", compact=True, id="start", variant="success")
                    yield Button("Stop", compact=True, id="stop", variant="error")
            with Vertical(id="scrape-right"):
                yield Static("No scrape running.", id="scrape-status")
                table = DataTable(id="scrape-progress", cursor_type="row", zebra_stripes=True)
                table.add_column("breed", key="breed")
                for col in COUNT_COLUMNS:
                    table.add_column(COLUMN_LABELS[col], key=col)
                yield table
                # wraps: an error's reason (the host, the net:: code) is at the end of a long line
                yield RichLog(max_lines=LOG_LINES, wrap=True, markup=False, highlight=False, id="scrape-log")

    def on_mount(self) -> None:
        job = current_scrape(self.studio.workspace)
        if job is not None:
            self._follow(job)
        self.set_interval(self.studio.poll_interval, self.poll)

    # -- breeds ----------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "add-breed":
            return
        from scraper.breeds import BreedError, breed_slug

        name = event.value.strip()
        if not name:
            return
        try:
            breed_slug(name)
        except BreedError as exc:
            self.notify(str(exc), severity="error")
            return
        sl = self.query_one("#breed-list", SelectionList)
        if any(sl.get_option_at_index(i).value == name for i in range(sl.option_count)):
            self.notify(f"{name!r} is already in the list", severity="warning")
        else:
            sl.add_option(Selection(name, name, True))
        event.input.value = ""

    def action_remove_breed(self) -> None:
        sl = self.query_one("#breed-list", SelectionList)
        if sl.highlighted is None:
            return
        option = sl.get_option_at_index(sl.highlighted)
        sl.remove_option(option.id) if option.id else sl.remove_option_at_index(sl.highlighted)

    def action_blur(self) -> None:
        self.set_focus(None)

    # -- start / stop ----------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        elif event.button.id == "stop":
            self.action_stop()

    def action_start(self) -> None:
        if self._job is not None and self._job.alive():
            self.notify("a scrape is already running; stop it first (Ctrl+X)", severity="warning")
            return
        breeds = list(self.query_one("#breed-list", SelectionList).selected)
        if not breeds:
            self.notify("select at least one breed", severity="error")
            return
        raw = self.query_one("#max-per-breed", Input).value.strip()
        try:
            per_breed = int(raw)
            if per_breed < 1:
                raise ValueError
        except ValueError:
            self.notify(f"max per breed: {raw!r} is not a positive whole number", severity="error")
            return
        engine = str(self.query_one("#engine", Select).value)
        dataset = self.query_one("#scrape-dataset", Input).value.strip()
        if not DATASET_RE.fullmatch(dataset) or ".." in dataset:
            self.notify(f"dataset {dataset!r}: a folder name under data/ (letters, digits, '.', '_', '-')",
                        severity="error")
            return
        try:
            job = launch_scrape(self.studio.workspace, breeds, engine, per_breed,
                                dataset=dataset, table=self.studio.jobs)
        except JobError as exc:
            self.notify(str(exc), severity="error")
            return
        self._counts.clear()
        self._searches_failed, self._stopped = 0, ""
        self.query_one("#scrape-progress", DataTable).clear()
        self.query_one("#scrape-log", RichLog).clear()
        self._follow(job)
        self.notify(f"scrape started (pid {job.pid}); it keeps running if you quit")

    def action_stop(self) -> None:
        if self._job is None or not self._job.alive():
            self.notify("no scrape is running", severity="warning")
            return
        try:
            terminate(self._job.pid)
        except JobError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify("asked the scrape to stop; it finishes the files in flight")

    # -- following the events file ----------------------------------------------------------

    def _follow(self, job: ScrapeJob) -> None:
        self._job = job
        self._offset = 0
        self._searches_failed, self._stopped = 0, ""
        self.poll()

    def poll(self) -> None:
        if self._job is None or self._polling:
            return
        self._polling = True
        job, offset = self._job, self._offset
        self.run_worker(lambda: self._read(job, offset), thread=True, group="scrape-poll", name="scrape events reader",
                        exit_on_error=False)

    def _read(self, job: ScrapeJob, offset: int) -> None:
        try:
            events, new_offset = read_jsonl(job.events, offset)
            alive = job.alive()
            tail = ""
            if not alive and not events:
                try:  # the process log explains an early exit (bad option, no browser)
                    tail = job.log.read_text(errors="replace").strip().splitlines()[-1:]
                    tail = tail[0] if tail else ""
                except OSError:
                    tail = ""
        finally:
            self._polling = False
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._apply, job, events, new_offset, alive, tail)

    def _apply(self, job: ScrapeJob, events: list[dict], offset: int, alive: bool, tail: str) -> None:
        if job is not self._job:
            return
        from scraper.job import SEARCH_FAILED_KINDS

        self._offset = offset
        log = self.query_one("#scrape-log", RichLog)
        table = self.query_one("#scrape-progress", DataTable)
        lines = []
        for ev in events:
            kind = ev.get("type", "?")
            breed = ev.get("breed")
            if kind == "error":
                if ev.get("kind") in SEARCH_FAILED_KINDS:
                    self._searches_failed += 1
                elif breed is None or ev.get("kind") == "disk_full":  # the whole job stopped searching
                    self._stopped = str(ev.get("message", ""))
            if kind != "download" or ev.get("state") == "failed":  # successful downloads only count
                msg = ev.get("message", "")
                lines.append(f"{kind:<11} {breed + ': ' if breed else ''}{msg}")
            counts = ev.get("counts")
            if breed and isinstance(counts, dict):
                self._counts[breed] = counts
                cells = [Text(shown(breed))] + [str(counts.get(c, 0)) for c in COUNT_COLUMNS]
                if breed in {k.value for k in table.rows}:
                    for col, value in zip(("breed",) + COUNT_COLUMNS, cells):
                        table.update_cell(breed, col, value)
                else:
                    table.add_row(*cells, key=breed)
        for line in lines[-LOG_LINES:]:
            log.write(Text(shown(line)))  # breeds, URLs and server text: never markup or escapes
        total = {c: sum(v.get(c, 0) for v in self._counts.values()) for c in COUNT_COLUMNS}
        figures = (f"{total['downloaded']} downloaded, {total['found']} found, {total['failed']} downloads failed, "
                   f"{self._searches_failed} searches failed")
        if alive:
            state = Text.from_markup(f"[green]running[/] (pid {job.pid}) · {len(job.breeds)} breeds · ")
        else:
            state = Text("finished or stopped · ")
        state.append(figures)
        if self._stopped:  # the one line that explains an offline machine, a full disk
            state.append("\n" + shown(self._stopped), style="bold red")
        elif tail and not alive:
            state.append("\n" + shown(tail), style="dim")
        self.query_one("#scrape-status", Static).update(state)
