"""What a training session records: status.json (core.training.events.RunStatus), metrics.jsonl
lines and the progress events, written by rank 0; the routine writes go through a thread so
the GPU never waits on the disk. Also the throughput window the metrics lines sum up, and
the opening lines of train.log."""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from core.diffusion.unet import count_parameters
from core.training import runs
from core.training.events import ProgressEvent, RunStatus

ProgressFn = Callable[[ProgressEvent], None]

STATUS_EVERY_S = 2.0  # the least time between two routine status.json writes


class Reporter:
    """Rank 0's status.json writes (at most every STATUS_EVERY_S unless forced; through the
    writer thread while the loop runs), metrics lines and progress events. On other ranks
    every call is a no-op that returns the fields it was given."""

    def __init__(self, run_dir: Path, is_main: bool, progress: ProgressFn | None, log: logging.Logger) -> None:
        self.run_dir, self.is_main, self.progress, self.log = run_dir, is_main, progress, log
        self.metrics: runs.MetricsWriter | None = None
        self.writer: StatusWriter | None = None  # while the loop runs
        self.last_status_write = 0.0
        self.tensorboard = None  # core.training.tensorboard.TensorBoardLog under --tensorboard (rank 0)

    def open_tensorboard(self) -> None:
        """Rank 0, --tensorboard: RUN/tb/ (the package is imported here, only when asked for)."""
        if self.is_main and self.tensorboard is None:
            from core.training.tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.run_dir, self.log)

    def status(self, *, force: bool = False, **fields: Any) -> RunStatus:
        """Write status.json, at most every 2 s unless forced."""
        now = time.monotonic()
        if not self.is_main or (not force and now - self.last_status_write < STATUS_EVERY_S):
            return fields
        self.last_status_write = now
        if self.writer is None:
            return runs.write_status(self.run_dir, **fields)
        if not force:
            self.writer.post(fields)
            return fields
        return self.writer.write(fields)

    def final_status(self, **fields: Any) -> RunStatus:
        """The last status write; on a full disk it is retried without the extras, and a
        status that cannot be written at all is said in the log (never left "running"
        silently: readers see the pid gone and call the run died)."""
        try:
            return self.status(force=True, **fields)
        except OSError as exc:
            self.log.warning("could not write status.json: %s", exc.strerror or exc)
            return dict(fields)

    def emit(self, event: ProgressEvent) -> None:
        if self.progress is not None and self.is_main:
            self.progress(event)

    def open_metrics(self) -> None:
        self.metrics = runs.MetricsWriter(self.run_dir)

    def start_writer(self) -> None:
        if self.is_main:
            self.writer = StatusWriter(self.run_dir, self.metrics, self.log)

    def metrics_line(self, record: dict[str, Any]) -> None:
        if self.is_main and self.writer is not None:
            self.writer.metrics_line(record)
        elif self.is_main and self.metrics is not None:
            self.metrics.append(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.metrics is not None:
            self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


class StatusWriter:
    """The loop's routine status.json writes and metrics lines, done by a thread. A status
    write is a read, a temp file, two fsyncs and a rename: on a busy or network disk that
    holds the host long enough to leave the GPU idle right after a metrics line's sync.
    Status fields posted while a write is under way merge (latest value wins). ``write``
    (forced writes: the start, saves, the end) runs in the caller's thread after the write
    in progress, taking what is still pending with it, so nothing written later is ever
    overwritten by something older."""

    def __init__(self, run_dir: Path, metrics: runs.MetricsWriter | None, log: logging.Logger) -> None:
        self.run_dir, self.metrics, self.log = run_dir, metrics, log
        self.cond = threading.Condition()  # guards pending/lines/closed; never held during I/O
        self.io = threading.Lock()  # one writer of the files at a time
        self.pending: dict[str, Any] | None = None
        self.lines: list[dict[str, Any]] = []
        self.closed = False
        self.errors: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="ddpm-status-writer", daemon=True)
        self.thread.start()

    def post(self, fields: dict[str, Any]) -> None:
        with self.cond:
            self.pending = {**(self.pending or {}), **fields}
            self.cond.notify()

    def metrics_line(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.lines.append(record)
            self.cond.notify()

    def write(self, fields: dict[str, Any]) -> dict[str, Any]:
        """status.json now, with whatever is pending; OSError as runs.write_status raises it."""
        with self.io:
            lines, pending = self._take()
            self._write_lines(lines)
            return runs.write_status(self.run_dir, **{**(pending or {}), **fields})

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()
        with self.io:
            lines, pending = self._take()
            self._write_lines(lines)
            if pending:
                self._write_status(pending)

    def _take(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        with self.cond:
            lines, pending = self.lines, self.pending
            self.lines, self.pending = [], None
        return lines, pending

    def _run(self) -> None:
        while True:
            with self.cond:
                while not (self.closed or self.lines or self.pending):
                    self.cond.wait()
                if self.closed:
                    return
            with self.io:  # taken under the I/O lock: a forced write cannot slip in between
                lines, pending = self._take()
                self._write_lines(lines)
                if pending:
                    self._write_status(pending)

    def _write_lines(self, lines: list[dict[str, Any]]) -> None:
        for record in lines:
            if self.metrics is not None:
                try:
                    self.metrics.append(record)
                except (OSError, ValueError) as exc:
                    self._error(f"could not append to metrics.jsonl: {exc}")

    def _write_status(self, fields: dict[str, Any]) -> None:
        try:
            runs.write_status(self.run_dir, **fields)
        except OSError as exc:  # a full disk: the final status (written directly) says what is on disk
            self._error(f"could not write status.json: {exc.strerror or exc}")

    def _error(self, text: str) -> None:
        if text not in self.errors:  # once each, not once per metrics line
            self.errors.add(text)
            self.log.warning("%s", text)


class Window:
    """What the steps since the last metrics line add up to, kept on the device so the
    step never waits for it (float64 where the device has it: sums stay exact)."""

    def __init__(self, start: float, device: torch.device) -> None:
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.reset(start)

    def reset(self, start: float) -> None:
        self.start = start
        zero = partial(torch.zeros, (), dtype=self.dtype, device=self.device)
        self.loss, self.ok, self.trailing_bad, self.grad_norm = zero(), zero(), zero(), zero()
        self.steps_total = 0  # steps taken (trained or skipped)
        self.images = 0
        # A step that compiled the network: counted, but its time and images are left out
        # of images/s (and so of the ETA).
        self.untimed_s = 0.0
        self.untimed_images = 0
        self.untimed_steps = 0

    def rates(self, now: float) -> tuple[float, float]:
        """(steps/s, images/s) over the window, compile steps left out when others remain."""
        elapsed, steps, images = now - self.start, self.steps_total, self.images
        if self.untimed_steps and self.untimed_steps < steps:
            elapsed, steps, images = elapsed - self.untimed_s, steps - self.untimed_steps, images - self.untimed_images
        if elapsed <= 0:
            return 0.0, 0.0
        return steps / elapsed, images / elapsed

    def add(self, loss: torch.Tensor, ok: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        ok = ok.to(self.dtype)
        # where(), not loss * ok: NaN * 0 is NaN
        self.loss += torch.where(ok > 0, loss.to(self.dtype), torch.zeros_like(self.loss))
        if grad_norm is not None:  # measured when clipping or for TensorBoard
            self.grad_norm += torch.where(ok > 0, grad_norm.to(self.dtype), torch.zeros_like(self.grad_norm))
        self.ok += ok
        self.trailing_bad.mul_(1 - ok).add_(1 - ok)  # +1 on a bad step, 0 after a good one
        self.steps_total += 1


# ---------------------------------------------------------------------------- torch.compile


def memory_mb(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last call (CUDA), allocated (MPS) or RSS (CPU)."""
    try:
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            return peak / 2**20
        if device.type == "mps":
            return torch.mps.current_allocated_memory() / 2**20
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # memory figures are nice to have, never a reason to stop training
        return None


def write_opening(config: Any, parts: Any, run_dir: Path, world_size: int, device: torch.device, *,
                  resumed: bool, at: tuple[int, int], notes: list[str], log: logging.Logger) -> None:
    """Rank 0: train.log's opening lines. ``at`` is the (step, epoch) it continues from;
    ``notes`` the kernel and compile-cache lines."""
    model, n, classes, amp = parts.model, len(parts.dataset), parts.classes, parts.amp_dtype
    log.info("%s run %s on %s%s: preset %s (%s parameters), %d images, %d classes, batch %d x %d, amp %s",
             "resuming" if resumed else "starting", run_dir.name, device,
             f" x{world_size}" if world_size > 1 else "", config.preset,
             f"{count_parameters(model):,}", n, len(classes), config.batch_size, world_size,
             str(amp).replace("torch.", "") if amp else "fp32")
    if resumed:
        log.info("continuing from step %d, epoch %d", *at)
    log.info("%s", parts.data_line)
    if parts.diffusion.kind == "edm":
        log.info("diffusion: EDM (Karras et al. 2022), %s", parts.diffusion.extra_repr())
    for note in notes:
        log.info("%s", note)
    if device.type == "cpu" and config.preset == "classic":
        log.warning("training the classic preset's (the original project's) %s-parameter network on a CPU is slow (hours per epoch of "
                    "14,000 images); --preset small or tiny are made for CPUs",
                    f"{count_parameters(model) / 1e6:.0f}M")
    signal_left = float(parts.diffusion.alpha_bars[-1].sqrt()) if parts.diffusion.kind == "vp" else 0.0
    if signal_left > 0.05:
        # Sampling starts from pure noise; here x_T still carries the image.
        log.warning("with T=%d and the %s schedule, x_T keeps %.0f%% of the image, so samples "
                    "(which start from pure noise) come out noisy; use T near 1000 or --schedule cosine",
                    config.T, config.schedule, 100 * signal_left)
