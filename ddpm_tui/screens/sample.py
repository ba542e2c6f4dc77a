"""Sample: pick a run and checkpoint, EMA or raw weights (and, for a run with a power EMA, its
length sigma_rel), a sampler (from
core.diffusion.registry's table; it says which take steps and eta), steps, eta, count, seed, breed and guidance (conditional runs) and a device;
generate through core.diffusion.sampling.generate (the path `ddpm-tui sample` uses) with a progress
bar and a live half-block preview of the images forming from noise; save PNGs with `w`.
The status line names the weights and the device actually used.

Drawing runs in a child process (ddpm_tui/draw_worker.py) that keeps the loaded model while
this screen is shown and ends when the user leaves it (or, if it is drawing then, when it
finishes), which gives back the model's memory and the CUDA context. A thread worker relays
its messages; the child sends a preview at most 4 times a second (and always the last step),
so a fast sampler does not flood the terminal over SSH. When a training run of this
workspace trains on the chosen GPU, a line says so (sampling there takes its memory and
slows it).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static
from textual.worker import Worker, WorkerState, get_current_worker

from core.diffusion.registry import DEFAULT_SAMPLER, EMA_PROFILES, SAMPLER_SPECS, default_steps
from core.io.safe_text import shown, shown_markup
from ddpm_tui.devices import find_choices_for, gpu_of, known_choices, provisional_choices, runs_training_on
from ddpm_tui.draw_worker import DrawProcess
from ddpm_tui.screens.base import StudioScreen

if TYPE_CHECKING:
    from core.diffusion.sampling import SampleRequest as CoreSampleRequest
from ddpm_tui.widgets.halfblock import HalfBlockImage

UPSCALE = 4  # the enlarged copies Ctrl+U adds for viewing
# The form's terms, shown as each field's tooltip
FIELD_HELP = {
    "weights": "EMA: the moving average of the weights over training (smoother, usually better); raw: the "
               "weights of the last step",
    "ema-length": f"power EMA only: sigma_rel, the averaging length as a fraction of the run (blank: the "
                  f"run's own; {' and '.join(f'{p:.2f}' for p in EMA_PROFILES)} are tracked, others are rebuilt "
                  "from the run's EMA snapshots)",
    "steps": "denoising steps: more is slower and usually finer (DDPM always takes the run's T)",
    "eta": "eta: how much fresh noise DDIM adds at each step (0 = the same images for a seed, 1 = like DDPM); "
           "not the ETA (time left) of training",
    "breed": "any: one breed after another, as `ddpm-tui sample` without --breed; or one breed for every image",
    "guidance": "classifier-free guidance: how strongly images follow their breed (1 = plain conditional; "
                "higher = more typical, less varied)",
    "seed": "the same seed and settings draw the same images (here and in `ddpm-tui sample`)",
}
NO_BREED = "__any__"
ANY_BREED = "all in turn"  # as the CLI without --breed: image i gets breed i mod the breeds


@dataclass
class SampleJob:
    """What the form asked for: a checkpoint and the fields of core.diffusion.sampling's SampleRequest
    (built in the worker: importing torch must not stall the event loop)."""

    checkpoint: Path
    run_name: str
    options: dict
    request: "CoreSampleRequest | None" = None  # set by the worker
    device: str = "auto"  # a device spec (core.diffusion.device.resolve_device)


@dataclass
class SampleResult:
    job: SampleJob
    images: np.ndarray  # (B, H, W, 3) uint8
    seconds: float
    weights_note: str  # the weights actually used: "EMA", "raw", "raw (this checkpoint has no EMA weights)"
    device: str = ""  # the device actually used: "cpu", "cuda:1"


def field_number(field: Input, kind: type, label: str, lo: float | None = None, optional: bool = False):
    """A form field's number, or a ValueError naming the field; ``optional``: blank or closed is None.
    Only the floor is checked here; SampleRequest checks the rest (EMA length: as `sample --ema-length`)."""
    raw = field.value.strip()
    if optional and (field.disabled or not raw):
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{label}: {raw!r} is not a number") from None
    if lo is not None and value < lo:
        raise ValueError(f"{label} must be at least {lo}, got {raw}")
    return value


def tile_grid(images: np.ndarray) -> np.ndarray:
    from ddpm_tui.widgets.halfblock import tile_images

    return tile_images(list(images), gap=max(1, images.shape[1] // 16))


def sample_output_dir(root: Path, run_name: str) -> Path:
    return root / "samples" / re.sub(r"[^A-Za-z0-9._-]", "_", run_name or "checkpoint")


class SampleScreen(StudioScreen):
    MODE = "sample"
    # no MAIN and no auto focus: a form has no main table, and a focused drop-down would
    # hold the 1-4 keys; Tab enters the form
    AUTO_FOCUS = ""  # "" not None: None means "the app's default", which focuses the first field
    BINDINGS = [
        # Ctrl keys work wherever the focus is (a number field takes w and p as typing)
        Binding("ctrl+r", "generate", "Generate", priority=True),
        Binding("ctrl+s", "save", "Save PNGs", priority=True),
        Binding("ctrl+x", "cancel", "Cancel", priority=True),
        Binding("ctrl+t", "toggle_preview", "Preview x0/x_t", priority=True),
        Binding("ctrl+u", "save_upscaled", "Save x4", priority=True),
        Binding("w", "save", "Save PNGs", show=False),
        Binding("p", "toggle_preview", "Preview x0/x_t", show=False),
        Binding("z", "zoom", "Zoom", show=False),  # as on the Train and Dataset screens
        Binding("n", "nearest", "Nearest training image", show=False),
        Binding("escape", "blur", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._result: SampleResult | None = None
        self._worker: Worker | None = None
        self._saved: tuple[SampleResult, Path] | None = None  # the result last saved, and where
        self._drawer: DrawProcess | None = None  # the child that draws; None when released
        self._release_when_done = False  # the user left while it was drawing
        self._breed_names: list[str] = []
        self._power_ema = False  # the chosen run averages with a power EMA (its length can be picked)
        self.preview_x0 = False  # preview the model's x0 prediction instead of the noisy x_t

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="sample-body"):
            # not focusable itself: Tab lands on a field, whose focus is visible
            with VerticalScroll(id="sample-form", can_focus=False):
                with Grid(classes="form-grid"):
                    yield Label("Run")
                    yield Select([], compact=True, id="run", prompt="(no runs)")
                    yield Label("Checkpoint")
                    yield Select([], compact=True, id="checkpoint", prompt="(none)")
                    yield Label("Weights")
                    yield Select([("EMA", "ema"), ("raw", "raw")], value="ema", allow_blank=False, compact=True, id="weights")
                    yield Label("EMA length")
                    yield Input("", placeholder="the run's", compact=True, id="ema-length", type="number",
                                disabled=True)
                    yield Label("Sampler")
                    yield Select([(spec.label, spec.name) for spec in SAMPLER_SPECS.values()],
                                 value=DEFAULT_SAMPLER, allow_blank=False, compact=True, id="sampler")
                    yield Label("Steps")
                    yield Input(str(default_steps(DEFAULT_SAMPLER)), compact=True, id="steps", type="integer")
                    yield Label("eta")
                    yield Input("0.0", compact=True, id="eta", type="number")
                    yield Label("Count")
                    yield Input("16", compact=True, id="count", type="integer")
                    yield Label("Seed")
                    yield Input("0", compact=True, id="seed", type="integer")
                    yield Label("Breed")
                    yield Select([(ANY_BREED, NO_BREED)], value=NO_BREED, allow_blank=False, compact=True, id="breed")
                    yield Label("Guidance")
                    yield Input("3.0", compact=True, id="guidance", type="number")
                    yield Label("Device")
                    choices = known_choices() or provisional_choices()
                    yield Select([(c, c) for c in choices], value="auto", allow_blank=False, compact=True, id="device")
                with Horizontal(classes="button-row"):
                    yield Button("Generate", compact=True, id="generate", variant="success")
                    yield Button("Save", compact=True, id="save", variant="primary")
            with Vertical(id="sample-right"):
                yield Static("Pick a run with a checkpoint, then Ctrl+R.", id="sample-status")
                yield Static("", id="sample-gpu-note")
                yield ProgressBar(id="sample-progress", show_eta=False)
                yield HalfBlockImage(id="sample-preview")
                yield Label(self.studio.color_note(), classes="color-note")
                yield Static("", id="sample-saved")

    def on_mount(self) -> None:
        for fid, text in FIELD_HELP.items():
            self.query_one(f"#{fid}").tooltip = text
        self.query_one("#sample-progress").display = False  # an idle bar would animate
        self.query_one("#sample-gpu-note").display = False
        self.refresh_runs()
        if known_choices() is None:  # counting GPUs imports torch: not on the event loop
            self.run_worker(self._find_devices, thread=True, group="devices", name="device list",
                            exit_on_error=False)

    def on_screen_resume(self) -> None:
        self.refresh_runs()  # runs may have gained checkpoints while another screen showed

    def on_screen_suspend(self) -> None:
        # after a mode switch the app already names the new mode; a dialog over this
        # screen (help, palette) keeps the mode, and the sampler
        if self.app.current_mode != self.MODE:
            self.release()

    def on_unmount(self) -> None:
        if self._drawer is not None:
            self._drawer.close()
            self._drawer = None

    def release(self) -> None:
        """End the sampling process (and with it the model and its GPU memory); if it is
        drawing, when it finishes."""
        if self._worker is not None and self._worker.state in (WorkerState.PENDING, WorkerState.RUNNING):
            self._release_when_done = True
            return
        self._release_when_done = False
        if self._drawer is not None:
            self._drawer.close()
            self._drawer = None

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self._worker and event.state in (WorkerState.SUCCESS, WorkerState.ERROR,
                                                              WorkerState.CANCELLED):
            if self._release_when_done or self.app.current_mode != self.MODE:
                self.release()

    # -- devices ---------------------------------------------------------------------------

    def _find_devices(self) -> None:
        find_choices_for(self, self._set_devices)

    def _set_devices(self, choices: list[str]) -> None:
        select = self.query_one("#device", Select)
        current = select.value
        select.set_options([(c, c) for c in choices])
        select.value = current if current in choices else "auto"
        self._update_gpu_note()

    def _update_gpu_note(self) -> None:
        """One line when a training run of this workspace uses the chosen GPU."""
        note = self.query_one("#sample-gpu-note", Static)
        choices = known_choices() or []
        gpu = gpu_of(str(self.query_one("#device", Select).value), choices)
        names = []
        if gpu is not None:
            try:
                names = runs_training_on(self.studio.workspace.runs_dir, gpu,
                                         sum(c.startswith("cuda:") for c in choices))
            except OSError:
                names = []
        if names:
            runs = ", ".join(names)
            note.update(f"[yellow]training run {shown_markup(runs)} is running on cuda:{gpu}: sampling there "
                        "shares its memory and slows it[/]")
        note.display = bool(names)

    # -- choices -------------------------------------------------------------------------------

    def refresh_runs(self) -> None:
        from core.training.runs import latest_checkpoint, list_runs

        runs = [r for r in list_runs(self.studio.workspace.runs_dir) if latest_checkpoint(r.path)]
        select = self.query_one("#run", Select)
        current = select.value
        self._update_gpu_note()  # a run may have started or stopped on the chosen GPU
        options = [(Text(f"{shown(r.name)} ({r.state})"), r.name) for r in runs]  # folder names: plain, escaped
        if [o[1] for o in options] != [o[1] for o in getattr(self, "_run_options", [])]:
            self._run_options = options
            select.set_options(options)
            names = [o[1] for o in options]
            if current in names:
                select.value = current
            elif names:
                select.value = names[0]

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "run":
            self._run_changed()
        elif event.select.id == "device":
            self._update_gpu_note()
        elif event.select.id == "weights":
            self._update_ema_length()
        elif event.select.id == "sampler":
            spec = SAMPLER_SPECS.get(str(event.value))
            steps = self.query_one("#steps", Input)
            steps.disabled = spec is None or not spec.uses_steps
            # A step count nobody typed follows the sampler (DPM-Solver++ 20, DDIM 50); a typed one stays.
            if spec is not None and spec.uses_steps and steps.value in {str(default_steps(n)) for n in SAMPLER_SPECS}:
                steps.value = str(default_steps(spec.name))
            self.query_one("#eta", Input).disabled = spec is None or not spec.uses_eta

    def _run_changed(self) -> None:
        from core.training.runs import checkpoints_dir, read_config

        name = self.query_one("#run", Select).value
        ckpt_select = self.query_one("#checkpoint", Select)
        breed = self.query_one("#breed", Select)
        if not isinstance(name, str):
            ckpt_select.set_options([])
            return
        run_dir = self.studio.workspace.run_dir(name)
        ckpts = sorted(checkpoints_dir(run_dir).glob("*.pt"), key=lambda p: (p.name != "last.pt", p.name))
        ckpt_select.set_options([(Text(shown(p.name)), str(p)) for p in ckpts])
        if ckpts:
            ckpt_select.value = str(ckpts[0])
        config = read_config(run_dir) or {}
        classes = list(config.get("classes") or []) if config.get("conditional") else []
        self._breed_names = classes
        breed.set_options([(ANY_BREED, NO_BREED)] + [(Text(shown(c)), str(i)) for i, c in enumerate(classes)])
        breed.value = NO_BREED
        breed.disabled = not classes
        self.query_one("#guidance", Input).disabled = not classes
        self._power_ema = config.get("ema_kind") == "power"
        self._update_ema_length()

    def _update_ema_length(self) -> None:  # open for the EMA weights of a run with a power EMA only
        opened = self._power_ema and self.query_one("#weights", Select).value == "ema"
        self.query_one("#ema-length", Input).disabled = not opened

    # -- generating ------------------------------------------------------------------------

    def _request(self) -> SampleJob:
        ckpt = self.query_one("#checkpoint", Select).value
        if not isinstance(ckpt, str):
            raise ValueError("no checkpoint: pick a run that has saved one (Train screen)")

        def number(fid: str, kind: type, lo: float, label: str):
            return field_number(self.query_one(f"#{fid}", Input), kind, label, lo)

        breed = self.query_one("#breed", Select).value
        run = self.query_one("#run", Select).value
        # "any" is what `ddpm-tui sample` does without --breed: one breed after another
        # (core.diffusion.sampling.resolve_labels), so one seed gives one grid in both
        any_breed = breed in (NO_BREED, Select.BLANK)
        options = dict(
            n=min(number("count", int, 1, "Count"), 64),
            sampler=str(self.query_one("#sampler", Select).value),
            steps=number("steps", int, 1, "Steps"),
            eta=number("eta", float, 0.0, "eta"),
            guidance=number("guidance", float, 0.0, "Guidance"),
            label=None if any_breed else int(breed),
            seed=number("seed", int, 0, "Seed"),
            weights=str(self.query_one("#weights", Select).value),
            ema_length=field_number(self.query_one("#ema-length", Input), float, "EMA length", optional=True),
        )
        device = self.query_one("#device", Select).value
        return SampleJob(Path(ckpt), str(run) if isinstance(run, str) else Path(ckpt).parent.parent.name, options,
                         device=str(device) if isinstance(device, str) else "auto")

    def action_generate(self) -> None:
        if self._worker is not None and self._worker.state in (WorkerState.PENDING, WorkerState.RUNNING):
            self.notify("already generating; Ctrl+X cancels", severity="warning")
            return
        try:
            req = self._request()
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        self._result = None
        self._release_when_done = False
        self._update_gpu_note()
        self.query_one("#sample-saved", Static).update("")
        starting = self._drawer is None or not self._drawer.running
        self.query_one("#sample-status", Static).update(
            ("starting the sampling process, " if starting else "") + f"loading {req.checkpoint.name}…")
        bar = self.query_one("#sample-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self._worker = self.run_worker(lambda: self._generate(req), thread=True, group="sample", name="sampling",
                                       exclusive=True, exit_on_error=False)

    def action_cancel(self) -> None:
        if self._worker is not None and self._worker.is_running:
            self._worker.cancel()
            self.query_one("#sample-status", Static).update("cancelling…")

    def _generate(self, job: SampleJob) -> None:
        """Thread worker: hand the job to the sampling process and relay what it says."""
        from core.diffusion.sampling import SampleRequest

        worker = get_current_worker()
        call = self.app.call_from_thread
        try:
            job.request = SampleRequest(**job.options)  # checked here too: the result names it
        except ValueError as exc:
            call(self._failed, str(exc))
            return
        if self._drawer is None:
            self._drawer = DrawProcess(self.studio.workspace.cache_dir / "sampler.log")
        payload = {"checkpoint": str(job.checkpoint), "options": job.options, "device": job.device,
                   "preview_x0": self.preview_x0}
        for message in self._drawer.run(payload, lambda: worker.is_cancelled):
            kind = message[0]
            if kind == "progress":
                _, done, total, preview = message
                call(self._progress, done, total, preview)
            elif kind == "done":
                _, images, seconds, weights_note, device = message
                call(self._done, SampleResult(job, images, seconds, weights_note, device))
            elif kind == "failed":
                call(self._failed, message[1])
            elif kind == "cancelling":
                call(self._cancelling, message[1], message[2])

    def _progress(self, done: int, total: int, preview: np.ndarray) -> None:
        self.query_one("#sample-progress", ProgressBar).update(total=total, progress=done)
        what = "x0, the model's guess of the final image" if self.preview_x0 else "x_t, the noisy image"
        self.query_one("#sample-status", Static).update(f"step {done}/{total} · preview {what} (Ctrl+T)")
        self.query_one("#sample-preview", HalfBlockImage).set_image(tile_grid(preview))

    def _cancelling(self, next_step: str, seconds: int) -> None:
        """A cancelled draw whose process has not answered: say what comes, and when."""
        what = "terminating" if next_step == "terminate" else "killing"
        self.query_one("#sample-status", Static).update(
            f"cancelling… the sampling process has not answered: {what} it in {seconds} s")

    def _failed(self, message: str) -> None:
        self.query_one("#sample-status", Static).update(f"[red]{shown_markup(message)}[/]")
        if message != "cancelled":
            self.notify(shown_markup(message), severity="error")

    def _done(self, result: SampleResult) -> None:
        self._result = result
        self.query_one("#sample-preview", HalfBlockImage).set_image(tile_grid(result.images))
        r = result.job.request
        spec = SAMPLER_SPECS.get(r.sampler)
        what = f"{spec.label if spec else r.sampler} · {result.weights_note} weights · seed {r.seed} · {result.device}"
        if r.label is not None and r.label < len(self._breed_names):
            what += f" · {self._breed_names[r.label]} x{r.guidance:g}"
        self.query_one("#sample-status", Static).update(
            f"{len(result.images)} images in {result.seconds:.1f}s · {what} · Ctrl+S saves")

    # -- saving ----------------------------------------------------------------------------

    def action_save(self) -> Path | None:
        """Write the PNGs (once per result); the folder, or None when nothing was saved."""
        if self._result is None:
            self.notify("nothing to save yet: generate first (Ctrl+R)", severity="warning")
            return None
        if self._saved is not None and self._saved[0] is self._result:
            self.notify(f"already saved in {self._saved[1]}")
            return self._saved[1]
        job = self._result.job
        out = sample_output_dir(self.studio.workspace.root, job.run_name) / time.strftime(
            f"%Y%m%d-%H%M%S-seed{job.request.seed}")
        try:
            paths = save_pngs(self._result.images, out)
        except OSError as exc:
            self.notify(f"could not save to {out}: {exc}", severity="error")
            return None
        self._saved = (self._result, out)
        self.query_one("#sample-saved", Static).update(
            Text(f"saved {len(paths) - 1} PNGs + grid.png in {out} · Ctrl+U adds x{UPSCALE} copies for viewing"))
        self.notify(f"saved to {out}")
        return out

    def action_save_upscaled(self) -> None:
        """Save (if not yet) and add x4 Lanczos copies in x4/: 64-px samples are small to look at."""
        out = self.action_save()
        if out is None:
            return
        try:
            paths = save_upscaled(sorted(out.glob("*.png")), out / f"x{UPSCALE}", UPSCALE)
        except (OSError, ValueError) as exc:
            self.notify(f"could not write the x{UPSCALE} copies in {out}: {exc}", severity="error")
            return
        self.query_one("#sample-saved", Static).update(
            Text(f"saved {len(paths) - 1} PNGs + grid.png in {out}, x{UPSCALE} copies in {out / f'x{UPSCALE}'}"))
        self.notify(f"x{UPSCALE} copies in {out / f'x{UPSCALE}'}")

    def action_toggle_preview(self) -> None:
        self.preview_x0 = not self.preview_x0
        if self._drawer is not None:
            self._drawer.set_preview(self.preview_x0)
        self.notify("preview: " + ("the model's guess of the final image (x0)" if self.preview_x0
                                   else "the noisy image as it is denoised (x_t)"))

    def action_blur(self) -> None:
        self.set_focus(None)

    def action_zoom(self) -> None:
        """The images shown (the preview or the finished grid) on the whole terminal."""
        from ddpm_tui.screens.zoom import ZoomScreen

        image = self.query_one("#sample-preview", HalfBlockImage).image
        if image is None:
            self.notify("nothing to zoom yet: generate first (Ctrl+R)", severity="warning")
            return
        run = self.query_one("#run", Select).value
        title = f"{run} · samples" if isinstance(run, str) else "samples"
        if self._result is not None:
            title = f"{self._result.job.run_name} · seed {self._result.job.request.seed}"
        self.app.push_screen(ZoomScreen(image, title))

    def action_nearest(self) -> None:
        """Each drawn image beside its nearest training image (ddpm_tui/screens/nearest.py)."""
        from ddpm_tui.screens.nearest import NearestScreen

        if self._result is None:
            self.notify("nothing to compare yet: generate first (Ctrl+R)", severity="warning")
            return
        job, ws = self._result.job, self.studio.workspace
        self.app.push_screen(NearestScreen(self._result.images, ws.run_dir(job.run_name),
                                           fallback_data=self.studio.dataset_dir, cache_dir=ws.cache_dir,
                                           title=f"{job.run_name} · seed {job.request.seed}"))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "generate":
            self.action_generate()
        elif event.button.id == "save":
            self.action_save()


def save_upscaled(paths: list[Path], out_dir: Path, factor: int = 4) -> list[Path]:
    """Lanczos-enlarged copies of PNGs (same names) in out_dir, written like every other image."""
    import torch
    from PIL import Image

    from core.io.grid import save_uint8_grid

    copies = []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            big = np.asarray(im.resize((im.width * factor, im.height * factor), Image.Resampling.LANCZOS))
        copies.append(save_uint8_grid(torch.from_numpy(big.copy())[None], out_dir / path.name, padding=0))
    return copies


def save_pngs(images: np.ndarray, out_dir: Path) -> list[Path]:
    """Write each image and a grid of them as PNG with core.io.grid's writer (atomic, marked as
    ddpm-tui's, byte-identical to `ddpm-tui sample --individual` for the same images)."""
    import torch

    from core.io.grid import save_uint8_grid

    batch = torch.from_numpy(np.ascontiguousarray(images))
    paths = [save_uint8_grid(batch[i : i + 1], out_dir / f"{i:03d}.png", padding=0) for i in range(len(batch))]
    paths.append(save_uint8_grid(batch, out_dir / "grid.png"))
    return paths
