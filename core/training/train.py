"""The training loop: one code path for the CPU, one GPU and many GPUs (DDP under torchrun).

``train(config, run_dir)`` writes the run directory whose layout core/training/runs.py defines
(config.json, status.json, metrics.jsonl, checkpoints/, samples/, train.log) and returns
the final status. The options are declared in core/training/options.py.

Resume is automatic and exact. Every random number the loop draws comes from a
``torch.Generator`` seeded from (seed, epoch) for the data order and from (seed, step, rank)
for flips, label dropout, timesteps and noise; the checkpoint stores weights, EMA,
optimizer, step, epoch, the position inside the epoch and the global RNG states. So N steps,
a stop, and N more steps give the same weights as 2N steps in one go.

Stop rules (--stop-when-flat, --stop-at-kid, --stop-at-fid; core/training/stop_rules.py) end
the run ``finished`` after an evaluation that satisfies them. Stopping: SIGTERM/SIGINT (or ``stop_event``) finish the current step, save and mark the run
``stopped``. A second Ctrl-C aborts at once (the last checkpoint is kept). A NaN/inf loss
skips the step; ``max_nonfinite`` in a row saves the last good state and fails the run.

The parts live beside this module: config.py (TrainConfig), preflight.py (checks, claiming the
run, crash messages, signals), build.py (network, optimizer, compile), distributed.py (DDP),
records.py (status.json, metrics, progress events; their shapes in events.py) and saving.py
(checkpoints, sample grids, evaluation).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from pathlib import Path

import torch

from core.data.split import HOLDOUT_RULE
from core.diffusion.device import autocast_dtype, kernel_choices, set_cublas_deterministic
from core.diffusion.ema_snapshots import live_weights
from core.training import runs
from core.training.build import (
    Parts, TrainState, build_parts, compile_network, epoch_order, lr_at, params_finite, synchronize, weights_digest,
)
from core.training.config import LOGGER_NAME, REPORTED_BY_CALLER, TrainConfig, TrainError
from core.training.distributed import Dist, first_line, is_peer_gone, pick_rank_device
from core.training.init_from import InitWeights, load_source
from core.training.events import (
    BAD_FILES, COMPILED, COMPILING, FAILED, FINISHED, RUNNING, STEP, STOPPED, WROTE, RunStatus, eta_seconds,
)
from core.training.preflight import (
    check_resume, claim, crash_message, load_dataset, pinned_classes, preflight, rank_checkpoint, signals_to,
)
from core.training.records import ProgressFn, Reporter, Window, memory_mb, write_opening
from core.training.saving import Saver, write_examples
from core.training.step import Stepper
from core.training.stop_rules import STOP_RULE_PREFIX

# What callers import from here (the CLI, bench/, tests), beside train() itself.
__all__ = ["LOGGER_NAME", "TrainConfig", "TrainError", "compile_network", "epoch_order", "lr_at",
           "pick_rank_device", "train", "weights_digest"]


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    progress: ProgressFn | None = None,
    stop_event: threading.Event | None = None,
    examples: bool = False,
) -> RunStatus:
    """Train (or continue training) the run in ``run_dir``; return the final status dict.

    Raises TrainError before anything is written when the options, the dataset or an
    existing run's checkpoint make training impossible. Failures during training (NaN loss,
    out of memory) are recorded in status.json and returned with state "failed".
    """
    run_dir = Path(run_dir)
    try:
        config.validate()
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    stop_event = stop_event if stop_event is not None else threading.Event()
    log = logging.getLogger(LOGGER_NAME)
    # cuBLAS reads its workspace setting when CUDA makes its first handle: before Dist
    # (which may start CUDA and NCCL) and before any model exists.
    cublas_in_time = set_cublas_deterministic() if config.deterministic else True
    try:
        world = Dist(config.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    failed = True
    try:
        try:
            autocast_dtype(world.device, config.amp, training=True)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        with signals_to(stop_event, log), kernel_choices(config.deterministic) as kernels:
            trainer = Trainer(config, run_dir, world, log, progress, stop_event)
            trainer.kernel_notes = [kernels] if world.device.type != "cpu" or config.deterministic else []
            if not cublas_in_time:
                trainer.kernel_notes.append(
                    "CUDA was already in use in this process when --deterministic set CUBLAS_WORKSPACE_CONFIG; "
                    f"export CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']} before starting "
                    "Python for bit-exact matmuls")
            final = trainer.run(examples=examples)
        failed = final.get("state") == FAILED
        return final
    except RuntimeError as exc:
        if world.enabled and is_peer_gone(exc):
            raise TrainError(f"rank {world.rank}: another rank failed or left ({first_line(exc)}); "
                             "see rank 0's message") from None
        raise
    finally:
        world.close(failed=failed)



class Trainer:
    """One training session: pre-flight, build, the loop, the final status."""

    def __init__(self, config: TrainConfig, run_dir: Path, world: Dist, log: logging.Logger,
                 progress: ProgressFn | None, stop_event: threading.Event) -> None:
        self.config = config
        self.run_dir = run_dir
        self.world = world
        self.log = log
        self.progress = progress
        self.stop_event = stop_event
        self.device = world.device
        self.state = TrainState()
        self.records = Reporter(run_dir, world.is_main, progress, log)
        self.saver = Saver(config, run_dir, world, self.state, self.records, log, self._trained_seconds)
        self.stepper = Stepper(config, world, self.state)
        self.classes: list[str] = []
        self._resume_from: dict | None = None
        self._init: InitWeights | None = None  # --init-from's weights, until the network has them
        self.lock: runs.RunLock | None = None
        self.started = False  # the loop began: a TrainError from now on fails the run
        self.session_start = time.monotonic()
        self.total_steps = 0
        self.rate: float | None = None  # steps/s, smoothed, for the ETA
        self.session_windows = 0  # metrics lines written by this session
        self.window: Window | None = None
        self.epoch_len = 1
        self.bad_in_row = 0
        self.kernel_notes: list[str] = []  # train()'s kernel settings, for train.log
        self.compiled_sizes: set[int] = set()  # batch sizes the compiled network has seen
        self.compile_seconds = 0.0

    def run(self, *, examples: bool) -> RunStatus:
        world = self.world
        error = None
        ckpt = None
        refused = False
        if world.is_main:  # rank 0 checks and shares the verdict: every rank fails or starts together
            try:
                ckpt = preflight(self.config, self.run_dir)
                if ckpt is None and self.config.init_from:  # checked before anything is written
                    self._init = load_source(self.config, self.run_dir.parent)
                self.lock = claim(self.run_dir, ckpt, world, self.records, self.log)
            except TrainError as exc:
                error = str(exc)
        error = world.broadcast(error)
        if error:
            raise TrainError(error)
        if not world.is_main:
            ckpt = rank_checkpoint(self.run_dir, world)
            if ckpt is None and self.config.init_from:
                self._init = load_source(self.config, self.run_dir.parent)
        # Held only until the weights are restored: a classic-preset checkpoint is over a gigabyte.
        self._resume_from, ckpt = ckpt, None
        try:
            return self._session(examples)
        except KeyboardInterrupt:
            if world.is_main:
                self.records.status(state=STOPPED, force=True,
                                    message=f"aborted at step {self.state.step} without saving; "
                                            f"the last checkpoint (step {max(self.saver.last_saved_step, 0)}) is kept")
            raise
        except TrainError as exc:
            refused = not self.started
            if world.is_main:
                self.log.error("%s", exc, extra={REPORTED_BY_CALLER: True})
                if not refused:
                    self.records.final_status(state=FAILED, message=str(exc))
            raise
        except BaseException as exc:
            return self._crashed(exc)
        finally:
            self.records.close()
            if world.is_main:
                runs.close_run_logger(self.log)
            if self.lock is not None:
                self.lock.give_up() if refused else self.lock.release()  # refused: the run as it was

    def _crashed(self, exc: BaseException) -> RunStatus:
        world = self.world
        msg = crash_message(exc, self.config, self.device, self.run_dir, self.state.step)
        if msg is None and world.enabled and isinstance(exc, RuntimeError) and is_peer_gone(exc):
            msg = f"rank {world.rank}: another rank failed or left ({first_line(exc)}); see its message"
            if world.is_main:
                self.records.final_status(state=FAILED, message=msg)
            raise TrainError(msg) from None
        if msg is None:
            if world.is_main:
                self.log.exception("training crashed")
                first = (str(exc).splitlines() or [""])[0]
                self.records.final_status(state=FAILED, message=f"crashed: {type(exc).__name__}: {first}")
            raise exc
        self.log.error("%s", msg)
        if world.is_main:
            return self.records.final_status(state=FAILED, message=msg)
        return {"state": FAILED, "message": msg}

    def _trained_seconds(self) -> float:
        """Wall time spent in the loop over all sessions, up to now."""
        return self.state.train_seconds + (time.monotonic() - self.session_start)

    # -- building ----------------------------------------------------------------------

    def _session(self, examples: bool) -> RunStatus:
        ckpt, self._resume_from = self._resume_from, None
        if self.world.is_main:
            self.world.broadcast(ckpt is not None)  # see preflight.rank_checkpoint
        dataset = self._dataset(ckpt)
        parts, compile_note = build_parts(self.config, self.world, dataset, self.classes, ckpt, self.state, self.log,
                                          self._init)
        if getattr(parts.ema, "kind", "exp") == "power":  # grids and evaluations rebuild from the snapshots too
            parts.ema.rebuild = functools.partial(live_weights, parts.ema, runs.checkpoints_dir(self.run_dir))
        resumed = ckpt is not None
        if resumed:
            self.saver.last_saved_step = self.state.step
        elif self._init is not None:
            self.log.info("%s", self._init.describe())
        del ckpt
        if self.world.is_main:
            self._start_records(parts, resumed, examples, compile_note)
        return self._loop(parts)

    def _dataset(self, ckpt: dict | None):
        config, world = self.config, self.world
        pinned = pinned_classes(ckpt, config)
        if world.is_main:
            dataset = load_dataset(config, self.log, self.progress, pinned)
            world.barrier()  # others now find the decoded-image cache warm
        else:
            world.barrier()
            dataset = load_dataset(config, self.log, None, pinned)
        self.classes = list(dataset.classes)
        if world.is_main and ckpt is not None:
            check_resume(ckpt, config, self.classes, self.run_dir)  # the loaded set, not just the listing
        # The dataset logged each unreadable file (with its reason) into train.log.
        bad = [(str(p), r) for p, r in getattr(dataset, "bad_files", [])]
        if bad:
            self.records.emit({"event": BAD_FILES, "files": bad})
        self.records.status(bad_files=len(bad), force=True)
        if len(dataset) == 0:
            raise TrainError(f"dataset folder {config.data} has no readable images")
        return dataset

    def _start_records(self, parts: Parts, resumed: bool, examples: bool, compile_note: str) -> None:
        """Rank 0: config.json, the metrics file, the log's opening lines, the example images."""
        config, s = self.config, self.state
        notes = [f"kernels: {note}" for note in self.kernel_notes]
        if config.compile:
            notes.append(f"torch.compile: compile cache in {compile_note}")
        model, n = parts.model, len(parts.dataset)
        # --init-from's source: said when the run starts, kept in config.json by every session.
        initialized = self._init.record() if self._init else (runs.read_config(self.run_dir) or {}).get(
            "initialized_from")
        runs.write_config(self.run_dir, {
            **config.to_dict(), "model": model.config.to_dict(), "diffusion": parts.diffusion.config.to_dict(),
            "classes": parts.classes, "num_images": n, "world_size": self.world.world_size,
            **({"initialized_from": initialized} if initialized else {}),
            **({"holdout": {"fraction": config.eval_holdout, "rule": HOLDOUT_RULE,
                            "images": getattr(parts.dataset, "held_out_count", 0)}} if config.eval_holdout else {}),
        })
        self.records.open_metrics()
        if config.tensorboard:
            self.records.open_tensorboard()
        write_opening(config, parts, self.run_dir, self.world.world_size, self.device, resumed=resumed,
                      at=(s.step, s.epoch), notes=notes, log=self.log)
        if examples:
            for path in write_examples(parts.dataset, parts.diffusion, self.run_dir, seed=config.seed):
                self.log.info("wrote %s", path)
                self.records.emit({"event": WROTE, "path": str(path)})

    # -- the loop ----------------------------------------------------------------------

    def _loop(self, parts: Parts) -> RunStatus:
        config, world, s = self.config, self.world, self.state
        steps_per_epoch = math.ceil(math.ceil(len(parts.dataset) / world.world_size) / config.batch_size)
        self.total_steps = config.epochs * steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        if s.epoch >= config.epochs or (config.max_steps and s.step >= config.max_steps):
            msg = (f"already finished ({s.epoch} epochs, step {s.step}); "
                   "pass a larger --epochs or --max-steps to train further")
            self.log.info("%s", msg)
            return self.records.status(state=FINISHED, message=msg, step=s.step, epoch=s.epoch, force=True)

        gens = (torch.Generator(), torch.Generator(device=self.device) if self.device.type != "cpu"
                else torch.Generator())
        self.records.start_writer()
        self.session_start = time.monotonic()
        window = self.window = Window(time.monotonic(), self.device)
        stop_reason: str | None = None
        self.started = True
        ends_at = time.time() + config.max_time if config.max_time > 0 else None
        self.records.status(state=RUNNING, message="training", step=s.step, epoch=s.epoch,
                    total_steps=self.total_steps, epochs=config.epochs, time_budget_ends_at=ends_at, force=True)
        parts.model.train()
        while s.epoch < config.epochs and stop_reason is None:
            order = epoch_order(len(parts.dataset), config.seed, s.epoch, world.rank, world.world_size)
            self.epoch_len = len(order)
            while s.pos < len(order):
                if config.max_steps and s.step >= config.max_steps:
                    stop_reason = f"reached max_steps {config.max_steps}"
                    break
                batch = order[s.pos : s.pos + config.batch_size]
                if config.compile and not self.stepper.micro_sizes(batch) <= self.compiled_sizes:
                    self._compiling_step(parts, batch, gens, window)
                else:
                    self._step(parts, batch, gens, window)
                stop = False
                if s.step % config.log_every == 0 or s.pos >= len(order):
                    stop = self._log_window(parts, window, len(order))
                    if self.bad_in_row >= config.max_nonfinite:
                        return self._fail_nonfinite(parts)
                elif not world.enabled:  # one process: a stop needs no agreement, check every step
                    stop = self._local_stop()
                if config.save_every_steps and s.step % config.save_every_steps == 0:
                    self.saver.save(parts, samples=False, milestone=False)
                    window.start = time.monotonic()
                if config.eval_every and s.step % config.eval_every == 0:
                    # A stop rule's verdict (rank 0's) ends the run on every rank at this step.
                    ruled = world.broadcast(self.saver.evaluate(parts) if world.is_main else None)
                    window.start = time.monotonic()
                    if ruled:
                        stop_reason = ruled
                        break
                if stop:
                    stop_reason = self._stop_reason()
                    break
            if s.pos >= len(order):
                self._end_epoch(parts, window)
        return self._finish(parts, stop_reason)

    def _compiling_step(self, parts: Parts, idx: torch.Tensor, gens: tuple[torch.Generator, torch.Generator],
                        window: Window) -> None:
        """A step in which torch.compile builds the network for a new batch size (the first
        step, and the smaller last batch of an epoch): minutes on a GPU the first time,
        seconds from the compile cache. Said before, timed (one wait for the device) and
        said after, in train.log, status.json and the progress events; left out of images/s."""
        first = not self.compiled_sizes
        what = "first step" if first else f"batch of {len(idx)}"
        self.log.info("compiling the network (%s)...", what)
        self.records.status(message=f"compiling ({what})...", step=self.state.step, force=True)
        self.records.emit({"event": COMPILING, "step": self.state.step, "what": what})
        start = time.monotonic()
        self._step(parts, idx, gens, window)
        synchronize(self.device)
        seconds = time.monotonic() - start
        self.compiled_sizes |= self.stepper.micro_sizes(idx)
        window.untimed_s += seconds
        window.untimed_images += len(idx) * self.world.world_size
        window.untimed_steps += 1
        self.compile_seconds += seconds
        self.log.info("compiled in %.1f s (%s)", seconds, what)
        self.records.status(message=f"compiled in {seconds:.1f} s ({what}); training", compile_s=round(self.compile_seconds, 1),
                    force=True)
        self.records.emit({"event": COMPILED, "step": self.state.step, "what": what, "seconds": seconds})

    def _local_stop(self) -> bool:
        config = self.config
        return self.stop_event.is_set() or (
            config.max_time > 0 and time.monotonic() - self.session_start >= config.max_time)

    def _step(self, parts: Parts, idx: torch.Tensor, gens: tuple[torch.Generator, torch.Generator],
              window: Window) -> None:
        self.stepper.step(parts, idx, gens, window, self.total_steps)

    def _stop_reason(self) -> str:
        config = self.config
        timed_out = config.max_time > 0 and time.monotonic() - self.session_start >= config.max_time
        if self.stop_event.is_set() or not timed_out:
            return "stop requested"
        return f"time budget of {config.max_time:g} s reached"

    def _fail_nonfinite(self, parts: Parts) -> RunStatus:
        """Too many NaN/inf losses in a row: keep the weights only if they are still finite."""
        s = self.state
        msg = f"loss was NaN/inf for {self.bad_in_row} steps in a row at step {s.step}; "
        if params_finite(parts.model):
            self.saver.save(parts, samples=False, milestone=False)
            msg += "saved the last good weights. "
        else:
            msg += f"the weights are NaN too and were not saved (last checkpoint on disk: {self.saver.kept()}). "
        msg += "Try a lower --lr or --grad-clip 1.0"
        self.log.error("%s", msg)
        return self.records.status(state=FAILED, message=msg, step=s.step, epoch=s.epoch, force=True)

    def _log_window(self, parts: Parts, window: Window, epoch_len: int) -> bool:
        """The one host sync per metrics line: the window's loss and NaN counts (summed over
        ranks, with the ranks' stop requests), a metrics line, a progress event and a status
        write. Returns whether some rank asked to stop."""
        config, s = self.config, self.state
        loss_sum, steps, bad, norm_sum, stops = self._window_totals(window)
        if bad:
            first = s.step - (window.steps_total - 1)
            self.log.warning("steps %d-%d: %d NaN/inf loss%s, skipped (%d in a row)", first, s.step,
                             bad, "es" if bad != 1 else "", self.bad_in_row)
            s.nonfinite_total += bad
            parts.ema.uncount(bad)
        now = time.monotonic()
        steps_per_s, images_per_s = window.rates(now)
        if window.untimed_steps < window.steps_total:  # a window of compiling only says nothing of the speed
            self.rate = steps_per_s if self.rate is None else 0.7 * self.rate + 0.3 * steps_per_s
        eta = eta_seconds(self.total_steps - s.step, self.rate,  # --max-time counts per session
                          config.max_time - (now - self.session_start) if config.max_time > 0 else None)
        self.session_windows += 1
        record = {
            "step": s.step, "epoch": s.epoch + s.pos / epoch_len,
            "lr": parts.optimizer.param_groups[0]["lr"],
            "images_per_s": round(images_per_s, 2),
            "elapsed_s": round(s.train_seconds + now - self.session_start, 2),
            "device_mem_mb": memory_mb(self.device), "skipped": bad, "session_window": self.session_windows,
        }
        if steps:  # a window of skipped (NaN) steps has no loss to plot
            record["loss"] = loss_sum / self.world.world_size / steps
        self.records.metrics_line(record)
        if self.records.tensorboard is not None:
            norm = norm_sum / self.world.world_size / steps if steps else None
            self.records.tensorboard.training(s.step, record, norm)
        self.records.emit({"event": STEP, **record, "total_steps": self.total_steps, "eta_s": eta,
                   "epochs": config.epochs})
        self.records.status(state=RUNNING, message="training", step=s.step, epoch=s.epoch,
                    last_loss=record.get("loss"), images_per_s=record["images_per_s"], eta_s=eta,
                    total_steps=self.total_steps)
        window.reset(now)
        return stops > 0

    def _window_totals(self, window: Window) -> tuple[float, int, int, float, int]:
        """(loss sum over ranks, trained steps, skipped steps, gradient-norm sum over ranks,
        ranks asking to stop); also updates the run of NaN steps."""
        stop = torch.tensor(1.0 if self._local_stop() else 0.0, dtype=window.dtype, device=self.device)
        packed = self.world.sum_tensor(torch.stack([window.loss, window.ok, stop, window.grad_norm]))
        loss_sum, ok_steps, stops, norm_sum = packed.tolist()
        steps = int(round(ok_steps / self.world.world_size))  # every rank agreed on each skip
        bad = window.steps_total - steps
        # The run of NaN steps ending now: the window's own trailing run, plus the previous
        # run when the whole window was bad.
        trailing = int(window.trailing_bad.item())
        self.bad_in_row = self.bad_in_row + trailing if trailing == window.steps_total else trailing
        return loss_sum, steps, bad, norm_sum, int(stops)

    def _end_epoch(self, parts: Parts, window: Window) -> None:
        s, config = self.state, self.config
        s.epoch += 1
        s.pos = 0
        if s.epoch % config.save_frequency == 0 or s.epoch == config.epochs:
            self.saver.save(parts, samples=True, milestone=True)
            window.start = time.monotonic()

    def _finish(self, parts: Parts, stop_reason: str | None) -> RunStatus:
        """Save what is not saved yet, check the ranks agree, write the final status."""
        s, world, log = self.state, self.world, self.log
        if self.window is not None and self.window.steps_total:
            # Steps since the last metrics line (a stop between lines, one process only:
            # with several ranks a stop is agreed at a metrics line).
            self._log_window(parts, self.window, self.epoch_len)
        s.train_seconds += time.monotonic() - self.session_start
        self.session_start = time.monotonic()
        final_state = FINISHED
        if stop_reason is None:
            message = f"finished {s.epoch} epoch{'s' if s.epoch != 1 else ''} at step {s.step}"
        elif stop_reason.startswith(STOP_RULE_PREFIX):
            message = f"{stop_reason}; finished at step {s.step} (epoch {s.epoch})"
        elif stop_reason.startswith("reached max_steps"):
            message = f"{stop_reason} (epoch {s.epoch})"
        else:
            final_state = STOPPED
            message = f"{stop_reason} at step {s.step}; start the same run again to continue"
        if self.saver.last_saved_step != s.step:
            # A stop by signal saves only the checkpoint (be quick); budgets and the end sample too.
            self.saver.save(parts, samples=stop_reason != "stop requested", milestone=False)
        if self.saver.last_saved_step != s.step:  # the save failed (disk full...): say what is on disk
            final_state = FAILED
            message = f"could not save the checkpoint at step {s.step} ({self.saver.save_error}); last checkpoint on disk: {self.saver.kept()}"
        digests: list[str] = []
        if world.enabled:
            digests = world.gather(weights_digest(parts.model))
            if len(set(digests)) != 1:
                log.error("ranks disagree on the weights: %s", digests)
            else:
                log.info("all %d ranks hold identical weights (sha256 %s)", world.world_size, digests[0])
        log.info("%s", message)
        final = self.records.final_status(state=final_state, message=message, step=s.step, epoch=s.epoch,
                                   nonfinite_skipped=s.nonfinite_total, eta_s=None)
        if world.enabled:
            final = {**final, "weights_digests": digests}
        return final

