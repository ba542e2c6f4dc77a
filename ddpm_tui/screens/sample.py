"""Sample: pick a run and checkpoint, EMA or raw weights, a sampler (DDIM, DPM-Solver++(2M),
Heun, DDPM), steps, eta, count, seed, breed and guidance (conditional runs); generate in a
thread worker through core.sampling.generate (the path `ddpm-tui sample` uses) with a
progress bar and a live half-block preview of the images forming from noise; save PNGs
with `w`. The status line names the weights actually used.

The worker draws the preview at most 4 times a second (and always the last step), so a
fast sampler does not flood the terminal over SSH.
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

from ddpm_tui.screens.base import StudioScreen

if TYPE_CHECKING:
    from core.sampling import SampleRequest as CoreSampleRequest
from ddpm_tui.widgets.halfblock import HalfBlockImage

PREVIEW_INTERVAL = 0.25  # seconds between preview redraws (<= 4 Hz)
UPSCALE = 4  # the enlarged copies Ctrl+U adds for viewing
NO_BREED = "__any__"


@dataclass
class SampleJob:
    """What the form asked for: a checkpoint and the fields of core.sampling's SampleRequest
    (built in the worker: importing torch must not stall the event loop)."""

    checkpoint: Path
    run_name: str
    options: dict
    request: "CoreSampleRequest | None" = None  # set by the worker


@dataclass
class SampleResult:
    job: SampleJob
    images: np.ndarray  # (B, H, W, 3) uint8
    seconds: float
    weights_note: str  # the weights actually used: "EMA", "raw", "raw (this checkpoint has no EMA weights)"


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
        Binding("escape", "blur", "Leave field", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._result: SampleResult | None = None
        self._worker: Worker | None = None
        self._saved: tuple[SampleResult, Path] | None = None  # the result last saved, and where
        self._model_cache: tuple | None = None  # (key, Sampleable)
        self._breed_names: list[str] = []
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
                    yield Label("Sampler")
                    yield Select([("DDIM", "ddim"), ("DPM-Solver++ 2M", "dpmpp2m"), ("Heun", "heun"), ("DDPM", "ddpm")],
                                 value="ddim", allow_blank=False, compact=True, id="sampler")
                    yield Label("Steps")
                    yield Input("50", compact=True, id="steps", type="integer")
                    yield Label("eta")
                    yield Input("0.0", compact=True, id="eta", type="number")
                    yield Label("Count")
                    yield Input("16", compact=True, id="count", type="integer")
                    yield Label("Seed")
                    yield Input("0", compact=True, id="seed", type="integer")
                    yield Label("Breed")
                    yield Select([("any (unconditional)", NO_BREED)], value=NO_BREED, allow_blank=False, compact=True, id="breed")
                    yield Label("Guidance")
                    yield Input("3.0", compact=True, id="guidance", type="number")
                with Horizontal(classes="button-row"):
                    yield Button("Generate", compact=True, id="generate", variant="success")
                    yield Button("Save", compact=True, id="save", variant="primary")
            with Vertical(id="sample-right"):
                yield Static("Pick a run with a checkpoint, then Ctrl+R.", id="sample-status")
                yield ProgressBar(id="sample-progress", show_eta=False)
                yield HalfBlockImage(id="sample-preview")
                yield Label(self.studio.color_note(), classes="color-note")
                yield Static("", id="sample-saved")

    def on_mount(self) -> None:
        self.query_one("#sample-progress").display = False  # an idle bar would animate
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        self.refresh_runs()  # runs may have gained checkpoints while another screen showed

    # -- choices -------------------------------------------------------------------------------

    def refresh_runs(self) -> None:
        from core.runs import latest_checkpoint, list_runs

        runs = [r for r in list_runs(self.studio.workspace.runs_dir) if latest_checkpoint(r.path)]
        select = self.query_one("#run", Select)
        current = select.value
        options = [(f"{r.name} ({r.state})", r.name) for r in runs]
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
        elif event.select.id == "sampler":
            self.query_one("#steps", Input).disabled = event.value == "ddpm"
            self.query_one("#eta", Input).disabled = event.value != "ddim"

    def _run_changed(self) -> None:
        from core.runs import checkpoints_dir, read_config

        name = self.query_one("#run", Select).value
        ckpt_select = self.query_one("#checkpoint", Select)
        breed = self.query_one("#breed", Select)
        if not isinstance(name, str):
            ckpt_select.set_options([])
            return
        run_dir = self.studio.workspace.run_dir(name)
        ckpts = sorted(checkpoints_dir(run_dir).glob("*.pt"), key=lambda p: (p.name != "last.pt", p.name))
        ckpt_select.set_options([(p.name, str(p)) for p in ckpts])
        if ckpts:
            ckpt_select.value = str(ckpts[0])
        config = read_config(run_dir) or {}
        classes = list(config.get("classes") or []) if config.get("conditional") else []
        self._breed_names = classes
        breed.set_options([("any (unconditional)", NO_BREED)] + [(c, str(i)) for i, c in enumerate(classes)])
        breed.value = NO_BREED
        breed.disabled = not classes
        self.query_one("#guidance", Input).disabled = not classes

    # -- generating ------------------------------------------------------------------------

    def _request(self) -> SampleJob:
        ckpt = self.query_one("#checkpoint", Select).value
        if not isinstance(ckpt, str):
            raise ValueError("no checkpoint: pick a run that has saved one (Train screen)")

        def number(fid: str, kind: type, lo: float, label: str):
            raw = self.query_one(f"#{fid}", Input).value.strip()
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{label}: {raw!r} is not a number") from None
            if value < lo:
                raise ValueError(f"{label} must be at least {lo}, got {raw}")
            return value

        breed = self.query_one("#breed", Select).value
        run = self.query_one("#run", Select).value
        any_breed = breed in (NO_BREED, Select.BLANK)
        options = dict(
            n=min(number("count", int, 1, "Count"), 64),
            sampler=str(self.query_one("#sampler", Select).value),
            steps=number("steps", int, 1, "Steps"),
            eta=number("eta", float, 0.0, "eta"),
            guidance=number("guidance", float, 0.0, "Guidance"),
            label=None if any_breed else int(breed),
            unconditional=any_breed,
            seed=number("seed", int, 0, "Seed"),
            weights=str(self.query_one("#weights", Select).value),
        )
        return SampleJob(Path(ckpt), str(run) if isinstance(run, str) else Path(ckpt).parent.parent.name, options)

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
        self.query_one("#sample-saved", Static).update("")
        self.query_one("#sample-status", Static).update(f"loading {req.checkpoint.name}…")
        bar = self.query_one("#sample-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self._worker = self.run_worker(lambda: self._generate(req), thread=True, group="sample", name="sampling",
                                       exclusive=True, exit_on_error=False)

    def action_cancel(self) -> None:
        if self._worker is not None and self._worker.is_running:
            self._worker.cancel()
            self.query_one("#sample-status", Static).update("cancelling…")

    def _load(self, job: SampleJob):
        from core.sampling import load_for_sampling

        stat = job.checkpoint.stat()
        key = (str(job.checkpoint), stat.st_mtime, stat.st_size, job.options["weights"])
        if self._model_cache is not None and self._model_cache[0] == key:
            return self._model_cache[1]
        loaded = load_for_sampling(job.checkpoint, job.options["weights"])
        self._model_cache = (key, loaded)
        return loaded

    def _generate(self, job: SampleJob) -> None:
        from core.checkpoint import CheckpointError
        from core.grid import to_uint8_images
        from core.sampling import SampleRequest, SamplingError, generate

        worker = get_current_worker()
        call = self.app.call_from_thread
        try:
            job.request = SampleRequest(**job.options)
        except ValueError as exc:
            call(self._failed, str(exc))
            return
        try:
            loaded = self._load(job)
        except (CheckpointError, OSError) as exc:
            call(self._failed, f"cannot load {job.checkpoint}: {exc}")
            return
        start = time.monotonic()
        last_draw = 0.0
        parts = []
        try:
            for step in generate(loaded, job.request):
                if worker.is_cancelled:
                    call(self._failed, "cancelled")
                    return
                if step.images is not None:
                    parts.append(step.images.numpy())
                now = time.monotonic()
                done = step.batch * step.total + step.index + 1
                total = step.total * step.batches
                if now - last_draw >= PREVIEW_INTERVAL or done == total:
                    last_draw = now
                    shown = step.x0_pred if self.preview_x0 else step.x_t
                    call(self._progress, done, total, to_uint8_images(shown).numpy())
        except (SamplingError, ValueError, RuntimeError) as exc:
            call(self._failed, f"sampling failed: {exc}")
            return
        if not parts:
            call(self._failed, "the sampler produced no steps")
            return
        call(self._done, SampleResult(job, np.concatenate(parts), time.monotonic() - start, loaded.weights_note))

    def _grid(self, images: np.ndarray) -> np.ndarray:
        from ddpm_tui.widgets.halfblock import tile_images

        return tile_images(list(images), gap=max(1, images.shape[1] // 16))

    def _progress(self, done: int, total: int, preview: np.ndarray) -> None:
        self.query_one("#sample-progress", ProgressBar).update(total=total, progress=done)
        what = "x0 guess" if self.preview_x0 else "x_t"
        self.query_one("#sample-status", Static).update(f"step {done}/{total} · preview {what} (Ctrl+T)")
        self.query_one("#sample-preview", HalfBlockImage).set_image(self._grid(preview))

    def _failed(self, message: str) -> None:
        self.query_one("#sample-status", Static).update(f"[red]{message}[/]")
        if message != "cancelled":
            self.notify(message, severity="error")

    def _done(self, result: SampleResult) -> None:
        self._result = result
        self.query_one("#sample-preview", HalfBlockImage).set_image(self._grid(result.images))
        r = result.job.request
        what = f"{r.sampler.upper()} · {result.weights_note} weights · seed {r.seed}"
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
        self.notify("preview: " + ("the model's guess of the final image (x0)" if self.preview_x0
                                   else "the noisy image as it is denoised (x_t)"))

    def action_blur(self) -> None:
        self.set_focus(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "generate":
            self.action_generate()
        elif event.button.id == "save":
            self.action_save()


def save_upscaled(paths: list[Path], out_dir: Path, factor: int = 4) -> list[Path]:
    """Lanczos-enlarged copies of PNGs (same names) in out_dir, written like every other image."""
    import torch
    from PIL import Image

    from core.grid import save_uint8_grid

    copies = []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            big = np.asarray(im.resize((im.width * factor, im.height * factor), Image.Resampling.LANCZOS))
        copies.append(save_uint8_grid(torch.from_numpy(big.copy())[None], out_dir / path.name, padding=0))
    return copies


def save_pngs(images: np.ndarray, out_dir: Path) -> list[Path]:
    """Write each image and a grid of them as PNG with core.grid's writer (atomic, marked as
    ddpm-tui's, byte-identical to `ddpm-tui sample --individual` for the same images)."""
    import torch

    from core.grid import save_uint8_grid

    batch = torch.from_numpy(np.ascontiguousarray(images))
    paths = [save_uint8_grid(batch[i : i + 1], out_dir / f"{i:03d}.png", padding=0) for i in range(len(batch))]
    paths.append(save_uint8_grid(batch, out_dir / "grid.png"))
    return paths
