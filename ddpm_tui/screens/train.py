"""Train: the list of runs (re-attached from their run directories), a new-run form that
launches `ddpm-tui train ... --quiet` as a detached process, and for the selected run the
live loss plot, throughput, ETA, machine figures and the latest sample grid.

Everything shown is read from files by a thread worker every `poll_interval` (<= 4 Hz):
status.json per run, metrics.jsonl from the last offset for the selected run, the newest
sample PNG when its mtime changes. The loop only applies results.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Label, Static
from textual.worker import get_current_worker

from core.quality.eval_log import format_best_fid
from core.quality.overfitting import FLAG
from core.io.safe_text import shown, shown_markup
from core.training.events import FAILED, FINISHED, RUNNING, SETTLING_WINDOWS, STOPPED, RunStatus, eta_seconds
from ddpm_tui.jobs import TRAIN_LOG, JobError, launch_train, log_tail, stop_run
from ddpm_tui.screens.base import StudioScreen
from ddpm_tui.screens.newrun import NewRun, NewRunScreen
from ddpm_tui.widgets.halfblock import HalfBlockImage, to_rgb_array
from ddpm_tui.widgets.fidplot import FidPlot
from ddpm_tui.widgets.lossplot import LossPlot
from ddpm_tui.widgets.sysmon import SysMonPanel

STATE_STYLE = {RUNNING: "bold green", STOPPED: "yellow", FINISHED: "cyan", FAILED: "bold red",
               "died": "bold red", "unknown": "dim"}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def first_samples_note(config: dict, total_steps: int | None) -> str:
    """The empty samples panel's title: when the trainer writes its first grid (at the end of
    epoch save_frequency, or of the last epoch if sooner; a stop also writes one)."""
    if config.get("samples") == 0:
        return "no samples (samples/save 0)"
    every, epochs = config.get("save_frequency"), config.get("epochs")
    if not isinstance(every, int) or every < 1:
        return "latest samples"
    first = min(every, epochs) if isinstance(epochs, int) and epochs > 0 else every
    if isinstance(total_steps, int) and total_steps > 0 and isinstance(epochs, int) and epochs > 0:
        return f"first samples at step {first * total_steps // epochs}"  # short: the panel is narrow
    return f"first samples after epoch {first}"


def fmt_loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


SPEED_WINDOWS = 20  # the figures are the median of this many logged windows


class Throughput:
    """images/s and steps/s of a run as the median of its last logged windows. A window
    that held a checkpoint or a sample grid, or a machine busy for a moment, is one slow
    outlier; a median ignores it where the last value or a mean would swing with it."""

    def __init__(self) -> None:
        self._ips: deque[float] = deque(maxlen=SPEED_WINDOWS)
        self._rates: deque[float] = deque(maxlen=SPEED_WINDOWS)
        self._prev: tuple[float, float] | None = None

    def add(self, records: list[dict]) -> None:
        for r in records:
            if r.get("session_window") == 1:  # a start or resume: earlier windows say nothing of now
                self._ips.clear()
                self._rates.clear()
                self._prev = None
            ips, step, t = r.get("images_per_s"), r.get("step"), r.get("elapsed_s")
            if isinstance(ips, (int, float)) and math.isfinite(ips) and ips > 0:
                self._ips.append(float(ips))
            if not (isinstance(step, (int, float)) and isinstance(t, (int, float))):
                continue
            if self._prev is not None and step > self._prev[0] and t > self._prev[1]:
                # elapsed_s counts training time only: a stop/resume gap is not in it
                self._rates.append((step - self._prev[0]) / (t - self._prev[1]))
            self._prev = (step, t)

    @property
    def windows(self) -> int:
        return len(self._ips)

    @property
    def settling(self) -> bool:
        return self.windows < SETTLING_WINDOWS  # fewer: still settling (and says so)

    @property
    def images_per_s(self) -> float | None:
        return statistics.median(self._ips) if self._ips else None

    def eta(self, step, total, budget_ends_at=None) -> float | None:
        """The earlier of the step limit at this speed and the time budget (status.json's
        time_budget_ends_at), as the trainer computes it (events.eta_seconds)."""
        numbers = isinstance(step, (int, float)) and isinstance(total, (int, float))
        rate = statistics.median(self._rates) if self._rates else None
        time_left = budget_ends_at - time.time() if isinstance(budget_ends_at, (int, float)) else None
        return eta_seconds(total - step if numbers else None, rate, time_left)


@dataclass
class RunView:
    """What the poller found for the selected run this tick."""

    name: str
    status: dict
    new_metrics: list[dict]
    offset: int
    reset: bool  # metrics file restarted (or another run selected): replace, not append
    sample_path: Path | None = None
    sample: np.ndarray | None = None
    evals: list[dict] = field(default_factory=list)  # eval.jsonl records since eval_offset
    eval_offset: int = 0


@dataclass
class _Cursor:
    name: str | None = None
    offset: int = 0
    sample_key: tuple | None = None
    last: dict = field(default_factory=dict)  # the last metrics record seen
    speed: Throughput = field(default_factory=Throughput)
    eval_offset: int = 0


class TrainScreen(StudioScreen):
    MODE = "train"
    MAIN = "#runs"
    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("x", "stop_run", "Stop"),
        Binding("e", "resume_run", "Resume"),
        Binding("l", "toggle_log", "Log scale"),
        Binding("z", "zoom", "Zoom samples"),
        Binding("escape", "blur", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cursor = _Cursor()
        self._polling = False
        self._runs: dict[str, object] = {}  # name -> RunInfo
        self._want_select: str | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="train-body"):
            with Vertical(id="train-left"):
                yield Label("Runs", classes="panel-title")
                table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                table.add_column("run", key="run")
                table.add_column("state", key="state")
                table.add_column("step", key="step")  # the loss is in the summary: the list stays narrow
                table.add_column("FID", key="fid")  # the best FID @ its step (eval.jsonl)
                yield table
                yield Static("", id="runs-empty")
                with Horizontal(classes="button-row"):
                    yield Button("New", compact=True, id="new", variant="success")
                    yield Button("Stop", compact=True, id="stop", variant="error")
                    yield Button("Resume", compact=True, id="resume", variant="primary")
            with Vertical(id="train-right"):
                yield Static("Select a run, or press n for a new one.", id="run-summary")
                yield Static("", id="overfit-warning")  # above the plots, never over them
                with Horizontal(id="train-plots"):
                    yield LossPlot(id="loss")
                    yield FidPlot(id="fid")
                    with Vertical(id="train-samples-box"):
                        yield Label("latest samples", id="samples-label", classes="panel-title")
                        yield HalfBlockImage(id="train-samples")
                        yield Label(self.studio.color_note(), classes="color-note")
                yield SysMonPanel(id="sysmon")

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(self.studio.poll_interval, self.poll)

    # -- polling (thread) --------------------------------------------------------------------

    def poll(self) -> None:
        if self._polling:
            return  # the previous read is still going; skip a tick rather than pile up
        self._polling = True
        selected = self.selected_name() or self._want_select
        self.run_worker(lambda: self._read(selected), thread=True, group="train-poll", name="run reader",
                        exit_on_error=False)

    def _read(self, selected: str | None) -> None:
        from core.data.images import ImageLoadError, load_rgb
        from core.quality.eval_log import best_fid, read_eval
        from core.training.runs import latest_samples, list_runs, read_metrics, read_status

        try:
            runs = list_runs(self.studio.workspace.runs_dir)
            best = {r.name: best_fid(r.path) for r in runs}
            view = None
            if selected is None and runs:
                running = [r for r in runs if r.state == "running"]
                selected = (running or runs)[0].name
            if selected is not None:
                run_dir = self.studio.workspace.run_dir(selected)
                cur = self._cursor
                reset = cur.name != selected
                offset = 0 if reset else cur.offset
                records, new_offset = read_metrics(run_dir, offset)
                if new_offset < offset:
                    reset = True
                status = read_status(run_dir) or {}
                if not status:  # not started yet, or the launch failed: its console says why
                    status = {"message": log_tail(run_dir / TRAIN_LOG) or "starting…"}
                view = RunView(selected, status, records, new_offset, reset)
                view.evals, view.eval_offset = read_eval(run_dir, 0 if reset else cur.eval_offset)
                samples = latest_samples(run_dir)
                # the EMA grid is what sampling uses by default; prefer it when it is as new
                pick = next((p for p in samples[:2] if p.name.startswith("ema_")), samples[0] if samples else None)
                if pick is not None:
                    try:
                        key = (str(pick), pick.stat().st_mtime)
                    except OSError:
                        key = None
                    if key is not None and (reset or key != cur.sample_key):
                        try:
                            view.sample = to_rgb_array(load_rgb(pick))
                            view.sample_path = pick
                        except (ImageLoadError, OSError) as exc:
                            self.app.call_from_thread(self.notify, f"{pick}: {exc}", severity="warning")
                        cur.sample_key = key
        finally:
            self._polling = False
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._apply, runs, view, best)

    # -- applying results (event loop) ------------------------------------------------------

    def _apply(self, runs: list, view: RunView | None, best: dict | None = None) -> None:
        table = self.query_one("#runs", DataTable)
        names = [r.name for r in runs]
        self._runs = {r.name: r for r in runs}
        for key in list(table.rows):
            if key.value not in self._runs:
                table.remove_row(key)
        existing = {k.value for k in table.rows}
        if runs and not existing:
            self.call_after_refresh(self.focus_main)  # the first runs arrived
        for r in runs:
            state = f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]"
            cells = (shown_markup(r.name), state, "–" if r.step is None else str(r.step), format_best_fid((best or {}).get(r.name)))
            if r.name in existing:
                for col, value in zip(("run", "state", "step", "fid"), cells):
                    table.update_cell(r.name, col, value)
            else:
                table.add_row(*cells, key=r.name)
        self.query_one("#runs-empty", Static).update(
            "" if names else "No runs yet.\nPress n to start one.")
        if self._want_select and self._want_select in self._runs:
            table.move_cursor(row=table.get_row_index(self._want_select))
            self._want_select = None
        if view is None:
            return
        if self.selected_name() not in (None, view.name):
            return  # selection changed while reading; the next tick reads the new one
        cur = self._cursor
        plot = self.query_one("#loss", LossPlot)
        steps = [m["step"] for m in view.new_metrics if "step" in m and "loss" in m]
        losses = [m["loss"] for m in view.new_metrics if "step" in m and "loss" in m]
        if view.reset:
            plot.title = f"loss · {shown(view.name)}"  # a folder name: no escape codes
            plot.set_points(steps, losses)
            cur.last = {}
            cur.speed = Throughput()
            self.query_one("#train-samples", HalfBlockImage).set_image(None)
            self.query_one("#samples-label", Label).update("latest samples")
        elif steps:
            plot.add_points(steps, losses)
        cur.speed.add(view.new_metrics)
        fid_plot = self.query_one("#fid", FidPlot)
        fid_plot.add_records(view.evals, reset=view.reset)
        self._show_warning(fid_plot.warning)
        cur.eval_offset = view.eval_offset
        if view.new_metrics:
            cur.last = view.new_metrics[-1]
        cur.name, cur.offset = view.name, view.offset
        if view.sample is not None:
            self.query_one("#train-samples", HalfBlockImage).set_image(view.sample)
            self.query_one("#samples-label", Label).update(shown_markup(view.sample_path.name) if view.sample_path else "")
        elif self.query_one("#train-samples", HalfBlockImage).image is None:
            info = self._runs.get(view.name)
            self.query_one("#samples-label", Label).update(first_samples_note(
                getattr(info, "config", None) or {}, view.status.get("total_steps")))
        self.query_one("#run-summary", Static).update(self._summary(view.name, view.status, cur.last, cur.speed))
        self.query_one("#sysmon", SysMonPanel).run_device = self._run_device(view.name, view.status)

    def _show_warning(self, warning) -> None:
        """The overfitting warning (core.quality.overfitting) of the selected run, or nothing."""
        line = self.query_one("#overfit-warning", Static)
        line.display = warning is not None
        line.update("" if warning is None else f"[bold yellow]⚠ {FLAG}[/] [yellow]{shown_markup(warning.message)}[/]")

    def _run_device(self, name: str, status: RunStatus) -> tuple[str | None, int | None] | None:
        """The device and world size of a run training on this machine (its GPUs are marked)."""
        info = self._runs.get(name)
        if info is None or info.state != "running" or not info.alive:  # alive None: another host
            return None
        device = status.get("device") or (info.config or {}).get("device")
        return (str(device) if device else None), status.get("world_size")

    def _summary(self, name: str, status: RunStatus, last: dict, speed: Throughput | None = None) -> str:
        info = self._runs.get(name)
        state = getattr(info, "state", status.get("state", "unknown"))
        style = STATE_STYLE.get(state, "")
        step = status.get("step", last.get("step"))
        total = status.get("total_steps")
        epoch = last.get("epoch", status.get("epoch"))
        epochs = (getattr(info, "config", {}) or {}).get("epochs")
        speed = speed or Throughput()
        ips = speed.images_per_s or status.get("images_per_s", last.get("images_per_s"))
        eta = None
        if state == RUNNING:
            eta = speed.eta(step, total, status.get("time_budget_ends_at")) or status.get("eta_s")
        settling = " [dim](settling)[/]" if state == RUNNING and speed.settling else ""
        parts = [f"[b]{shown_markup(name)}[/]  [{style}]{shown_markup(state)}[/]"]  # from disk: escaped
        msg = status.get("message")
        if state == "died":
            msg = "its process is gone without saying why (killed?); e resumes from the last checkpoint"
        elif state == STOPPED and msg:  # the trainer's hint is for the command line
            msg = msg.split(";")[0] + "; e resumes it from the last checkpoint"
        if msg:
            parts[0] += f"  {shown_markup(msg)}"
        line2 = [f"step {step if step is not None else '–'}" + (f"/{total}" if total else "")]
        if epoch is not None:
            line2.append(f"epoch {epoch:.2f}" if isinstance(epoch, float) else f"epoch {epoch}")
            if epochs:
                line2[-1] += f"/{epochs}"
        if ips is not None:
            line2.append(f"{ips:.1f} img/s" + settling)
        line2.append(f"loss {fmt_loss(last.get('loss', status.get('last_loss')))}")
        if state == RUNNING:
            line2.append(f"ETA {fmt_duration(eta)}" + settling)
        return parts[0] + "\n" + "  ".join(line2)

    # -- selection and actions --------------------------------------------------------------

    def selected_name(self) -> str | None:
        table = self.query_one("#runs", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # cursor outside the table while rows change
            return None
        return key.value

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value != self._cursor.name:
            self.poll()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"new": self.action_new_run, "stop": self.action_stop_run,
         "resume": self.action_resume_run}[event.button.id]()

    def action_blur(self) -> None:
        self.set_focus(None)

    def action_toggle_log(self) -> None:
        plot = self.query_one("#loss", LossPlot)
        plot.log_scale = not plot.log_scale

    def action_zoom(self) -> None:
        """The latest sample grid on the whole terminal."""
        from ddpm_tui.screens.zoom import ZoomScreen

        image = self.query_one("#train-samples", HalfBlockImage).image
        if image is None:
            self.notify("no sample grid yet: the trainer writes one at each milestone epoch", severity="warning")
            return
        name = str(self.query_one("#samples-label", Label).render())
        self.app.push_screen(ZoomScreen(image, f"{self._cursor.name or 'run'}: {name}"))

    def action_new_run(self) -> None:
        ws = self.studio.workspace
        self.app.push_screen(NewRunScreen(self.studio.dataset_dir, ws.runs_dir), self._launch)

    def _launch(self, run: NewRun | None) -> None:
        if run is None:
            return
        try:
            proc = launch_train(self.studio.workspace, run.name, run.options, table=self.studio.jobs)
        except JobError as exc:
            self.notify(str(exc), severity="error")
            return
        self._want_select = run.name
        self.notify(f"started run {run.name} (pid {proc.pid}); it keeps running if you quit")
        self.poll()

    def _selected_info(self):
        """The RunInfo of the highlighted run, or None (with a hint to the user)."""
        name = self.selected_name()
        info = self._runs.get(name) if name else None
        if info is None:
            self.notify("select a run first", severity="warning")
        return info

    def action_stop_run(self) -> None:
        info = self._selected_info()
        if info is None:
            return
        name = info.name
        if info.state != "running":
            self.notify(f"run {name} is {info.state}, not running", severity="warning")
            return
        try:
            sent = stop_run(info.path, info.status)
        except JobError as exc:
            self.notify(str(exc), severity="error")
            return
        if sent:
            self.notify(f"asked run {name} to stop; it saves a checkpoint first")
        else:
            self.notify(f"run {name}: its process is already gone", severity="warning")

    def action_resume_run(self) -> None:
        info = self._selected_info()
        if info is None:
            return
        name = info.name
        if info.state == "running":
            self.notify(f"run {name} is already running", severity="warning")
            return
        if info.state == "finished":
            self.notify(f"run {name} is finished; start a new run to train more", severity="warning")
            return
        try:
            proc = launch_train(self.studio.workspace, name, {}, resume=True, table=self.studio.jobs)
        except JobError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"resuming run {name} (pid {proc.pid})")
        self._cursor.name = None  # re-read the metrics from the start
        self.poll()
