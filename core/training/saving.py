"""What a training session leaves on disk besides its records: checkpoints (last.pt, the
kept epoch milestones and, under a stop rule, best.pt), sample grids, the example images, and
evaluations into eval.jsonl with the stop rules' verdict on them."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import torch

from core.diffusion.checkpoint import CheckpointError, capture_rng_state, save_checkpoint
from core.diffusion.process import Process as Diffusion  # either process: VP or EDM
from core.diffusion.sampling import SampleRequest, generate_images
from core.io.grid import save_grid, save_uint8_grid
from core.training import runs
from core.training.build import Parts, TrainState, derive_seed
from core.training.config import TrainConfig
from core.training.distributed import Dist
from core.training.events import EVAL, EVALUATING, SAMPLING, SAVING, WROTE
from core.training.records import Reporter
from core.training.stop_rules import BEST_CHECKPOINT, StopRules


class Saver:
    """Checkpoints, sample grids and evaluations of one session. Rank 0 writes; every rank
    takes its word for what is on disk (``last_saved_step``)."""

    def __init__(self, config: TrainConfig, run_dir: Path, world: Dist, state: TrainState, reporter: Reporter,
                 log: logging.Logger, trained_seconds: Callable[[], float]) -> None:
        self.config, self.run_dir, self.world, self.state = config, run_dir, world, state
        self.reporter, self.log, self.trained_seconds = reporter, log, trained_seconds
        self.device = world.device
        self.last_saved_step = -1
        self.save_error = ""
        self.evaluator = None  # core.quality.evaluate.Evaluator, built at the first --eval-every
        self.rules = StopRules(config)

    def kept(self) -> str:
        """The last checkpoint on disk, for a message."""
        return f"step {self.last_saved_step}" if self.last_saved_step >= 0 else "none"

    def save(self, parts: Parts, *, samples: bool, milestone: bool) -> None:
        """Checkpoint (rank 0, atomic) and sample grids; every rank waits for it."""
        s, config = self.state, self.config
        if self.world.is_main:
            self.reporter.emit({"event": SAVING, "step": s.step})
            path = runs.checkpoints_dir(self.run_dir) / runs.LAST_CHECKPOINT
            try:
                # Already saved at this step (e.g. by save_every_steps): only add what is asked.
                if self.last_saved_step != s.step or not path.exists():
                    self._write_checkpoint(path, parts)
                if milestone and config.keep_milestones != 0:
                    self._milestone(path)
            except (CheckpointError, OSError) as exc:
                # The previous checkpoint is intact; keep training and say so.
                self.save_error = save_error_text(exc, path)
                self.log.error("could not write checkpoint %s: %s", path, self.save_error)
                try:
                    self.reporter.status(message=f"checkpoint failed: {self.save_error}", force=True)
                except OSError:
                    pass  # the same full disk; the final status says it
            if samples and config.samples > 0:
                self.reporter.emit({"event": SAMPLING, "step": s.step})
                try:
                    for path in self.sample_grids(parts):
                        self.log.info("wrote %s", path)
                        self.reporter.emit({"event": WROTE, "path": str(path)})
                except OSError as exc:
                    self.log.error("could not write samples: %s", exc)
            try:
                self.reporter.status(step=s.step, epoch=s.epoch, last_checkpoint_step=self.last_saved_step, force=True)
            except OSError as exc:  # a full disk: the final status says what is on disk
                self.log.error("could not write status.json: %s", exc.strerror or exc)
        # Every rank takes rank 0's word for what is on disk, so later decisions stay in step.
        self.last_saved_step = self.world.broadcast(self.last_saved_step)
        parts.model.train()

    def _write_checkpoint(self, path: Path, parts: Parts) -> None:
        self._checkpoint_to(path, parts)
        self.last_saved_step = self.state.step
        self.log.info("saved checkpoint at step %d (epoch %d)", self.state.step, self.state.epoch)
        if getattr(parts.ema, "kind", "exp") == "power":
            self._ema_snapshot(path.parent, parts)

    def _ema_snapshot(self, checkpoints: Path, parts: Parts) -> None:
        """The two power-EMA profiles at this step into checkpoints/ema/ (core.diffusion.ema_snapshots):
        what --ema-length rebuilds other averages from. Past --ema-snapshots files, those whose
        removal keeps the rest most evenly spread over the run go. A failure is logged; training goes on."""
        from core.diffusion.ema_snapshots import snapshots_to_remove, write_snapshot
        from core.diffusion.safetensors_file import WeightsFileError

        try:
            write_snapshot(checkpoints, parts.ema, self.state.step)
        except (WeightsFileError, OSError) as exc:
            self.log.error("could not write the EMA snapshot of step %d: %s", self.state.step, exc)
        for old in snapshots_to_remove(checkpoints, self.config.ema_snapshots):
            try:
                old.unlink()  # a snapshot this trainer wrote, beyond the number asked to keep
                self.log.info("removed EMA snapshot %s (--ema-snapshots %d keeps the rest spread over the run)",
                              old.name, self.config.ema_snapshots)
            except OSError as exc:
                self.log.error("could not remove EMA snapshot %s: %s", old.name, exc)

    def _checkpoint_to(self, path: Path, parts: Parts) -> None:
        """The whole training state at this step into ``path`` (atomic: a new file replaces the old)."""
        s, config = self.state, self.config
        seconds = self.trained_seconds()
        save_checkpoint(
            path, model_config=parts.model.config, diffusion_config=parts.diffusion.config,
            model_state=parts.model.state_dict(), ema_state=parts.ema.state_dict(),
            optimizer_state=parts.optimizer.state_dict(), step=s.step, epoch=s.epoch,
            rng_state=capture_rng_state(),
            extra={"pos": s.pos, "images_seen": s.images_seen, "nonfinite_total": s.nonfinite_total,
                   "train_seconds": seconds, "world_size": self.world.world_size,
                   "batch_size": config.batch_size, "classes": list(parts.classes),
                   "seed": config.seed, "host": socket.gethostname()},
        )

    def _milestone(self, last: Path) -> None:
        """epoch_NNNN.pt beside last.pt: a hard link (no copy, and last.pt is later replaced
        by a new file, not rewritten) or a copy where links are not possible."""
        target = last.with_name(f"epoch_{self.state.epoch:04d}.pt")
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            if tmp.exists():
                tmp.unlink()  # our own leftover from a killed run
            try:
                os.link(last, tmp)
            except OSError:
                shutil.copy2(last, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            self.log.error("could not keep milestone %s: %s", target.name, exc)
            return
        if self.config.keep_milestones > 0:
            kept = sorted(last.parent.glob("epoch_*.pt"))
            for old in kept[: -self.config.keep_milestones]:
                old.unlink()  # a milestone this trainer made, beyond the number asked to keep
                self.log.info("removed old milestone %s", old.name)

    def sample_grids(self, parts: Parts) -> list[Path]:
        """Grids from the raw and the EMA weights, same seed for both, drawn through the one
        sampling path (core.diffusion.sampling.generate)."""
        config, s, model = self.config, self.state, parts.model
        num_classes = model.config.num_classes
        tag = f"epoch_{s.epoch:04d}" if s.pos == 0 else f"step_{s.step:07d}"
        out = runs.samples_dir(self.run_dir)
        nrow = min(config.samples, num_classes) if num_classes and num_classes <= 10 else None
        written = []
        for prefix, weights in (("", "raw"), ("ema_", "ema")):
            request = SampleRequest(n=config.samples, sampler=config.sample_sampler, steps=config.sample_steps, guidance=config.sample_guidance,
                                    seed=derive_seed("samples", config.seed), weights=weights, amp=config.amp)
            with parts.ema.applied(model) if weights == "ema" else contextlib.nullcontext():
                images, _ = generate_images((model, parts.diffusion), request, device=self.device)
            written.append(save_uint8_grid(images, out / f"{prefix}{tag}.png", nrow=nrow))
            if self.reporter.tensorboard is not None:
                self.reporter.tensorboard.grid(s.step, weights, written[-1])
        return written

    def evaluate(self, parts: Parts) -> str | None:
        """FID, KID, precision/recall of the EMA weights into eval.jsonl (rank 0). The real
        side (feature net, real features) is built once; a failure is logged and training
        goes on. Returns a stop rule's message when one says the run is done."""
        from core.quality.evaluate import EvalError, EvalSettings, Evaluator

        config, s = self.config, self.state
        self.reporter.emit({"event": EVALUATING, "step": s.step})
        try:
            if self.evaluator is None:
                self.evaluator = Evaluator(config.data, image_size=config.image_size, resize=config.resize,
                                           classes=parts.classes if config.conditional else None,
                                           cache_dir=config.cache_dir or None, device=self.device,
                                           holdout=config.eval_holdout)
            settings = EvalSettings(n=config.eval_n, sampler=config.sample_sampler, steps=config.sample_steps,
                                    guidance=config.sample_guidance if config.conditional else 1.0,
                                    ema_length=config.ema_length if config.ema_kind == "power" else None)
            with parts.ema.applied(parts.model):
                result = self.evaluator.evaluate(parts.model, parts.diffusion, settings, step=s.step,
                                                 run_dir=self.run_dir, amp=config.amp)
        except (EvalError, OSError, ValueError) as exc:
            self.log.error("evaluation at step %d failed: %s", s.step, exc)
            return None
        finally:
            parts.model.train()
        values = ", ".join(f"{k} {v:.4g}" for k, v in result.values.items())
        self.log.info("evaluation at step %d (%d images, %.1f s): %s", s.step, config.eval_n, result.seconds, values)
        self._warn_overfitting()
        if self.reporter.tensorboard is not None:
            self.reporter.tensorboard.evaluation(s.step, result.values)
        self.reporter.emit({"event": EVAL, "step": s.step, **result.values})
        return self._judge(parts) if self.rules.enabled else None

    def _judge(self, parts: Parts) -> str | None:
        """The stop rules on the evaluation just recorded; best.pt when it is the best so far."""
        judgement = self.rules.judge(self.run_dir, self.state.step)
        if judgement.best:
            path = runs.checkpoints_dir(self.run_dir) / BEST_CHECKPOINT
            try:
                self._checkpoint_to(path, parts)
                self.log.info("kept %s: the best %s so far (step %d)", BEST_CHECKPOINT, self.rules.metric.upper(),
                              self.state.step)
            except (CheckpointError, OSError) as exc:
                self.log.error("could not write %s: %s", path, save_error_text(exc, path))
        if judgement.stop:
            self.log.info("%s", judgement.stop)
        return judgement.stop


    def _warn_overfitting(self) -> None:
        from core.quality.eval_log import read_eval
        from core.quality.overfitting import overfitting_warning

        try:
            warning = overfitting_warning(read_eval(self.run_dir)[0])
        except OSError:
            return
        if warning is not None and warning.step == self.state.step:  # said once, by the evaluation that set it off
            self.log.warning("%s", warning.message)


def write_examples(dataset: Any, diffusion: Diffusion, out_dir: Path, *, seed: int = 0, count: int = 16) -> list[Path]:
    """examples.png (a grid of training images as the model sees them) and
    forward_diffusion.png (one image noised at several t, left to right)."""
    gen = torch.Generator().manual_seed(derive_seed("examples", seed))
    n = min(count, len(dataset))
    idx = torch.randperm(len(dataset), generator=gen)[:n]
    x, _ = dataset.get_batch(idx, gen)
    paths = [save_grid(x, out_dir / "examples.png")]
    if diffusion.kind == "edm":  # sigma from sigma_min to sigma_max, shown as x / sqrt(1 + sigma^2)
        sigmas = torch.tensor(diffusion.sigmas(10)[:-1][::-1])
        x0 = x[:1].expand(len(sigmas), -1, -1, -1)
        noise = torch.randn(x0.shape, generator=gen)
        strip = diffusion.noised(x0, sigmas, noise) / (1 + sigmas ** 2).sqrt().view(-1, 1, 1, 1)
    else:
        T = diffusion.T
        ts = sorted({min(T - 1, round(f * (T - 1))) for f in (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)})
        x0 = x[:1].expand(len(ts), -1, -1, -1)
        noise = torch.randn(x0.shape, generator=gen)
        strip = diffusion.q_sample(x0, torch.tensor(ts, dtype=torch.long), noise)
    paths.append(save_grid(strip, out_dir / "forward_diffusion.png", nrow=len(strip)))
    return paths



def save_error_text(exc: BaseException, path: Path) -> str:
    """torch reports a full disk as "[enforce fail at inline_container.cc] unexpected pos";
    say what happened instead."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "enforce fail" in text or "unexpected pos" in text:
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or (free is not None and free < 64 * 2**20):
            return f"No space left on device writing {path} ({free // 2**20 if free is not None else '?'} MB free)"
    return text
