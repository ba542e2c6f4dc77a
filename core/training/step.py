"""One optimisation step: the batch (flips, label dropout), the loss and its gradients in
--grad-accum micro-batches, clipping, the optimizer and EMA updates, all without waiting on
the device. Every random number comes from generators seeded by (seed, step, rank), drawn for
the whole batch, so a step is the same whatever N and whenever it is resumed."""

from __future__ import annotations

import contextlib

import torch

from core.diffusion.device import autocast_context
from core.training.build import Parts, TrainState, derive_seed, grad_norm, lr_at, micro_batches
from core.training.config import TrainConfig
from core.training.distributed import Dist
from core.training.records import Window


class Stepper:
    """The steps of one session (``state`` is the Trainer's, advanced here)."""

    def __init__(self, config: TrainConfig, world: Dist, state: TrainState) -> None:
        self.config, self.world, self.state = config, world, state

    def micro_sizes(self, idx: torch.Tensor) -> set[int]:
        """The batch sizes the network sees in a step of ``idx`` (several under --grad-accum)."""
        return {piece.stop - piece.start for piece in micro_batches(len(idx), self.config.grad_accum)}

    def step(self, parts: Parts, idx: torch.Tensor, gens: tuple[torch.Generator, torch.Generator],
             window: Window, total_steps: int) -> None:
        """One optimisation step, without waiting on the device: a NaN/inf loss (on any rank)
        turns the optimizer and EMA update off on the device, and is counted there; the host
        looks at the counts once per metrics line (Trainer._log_window)."""
        config, world, s = self.config, self.world, self.state
        data_gen, noise_gen = gens
        data_gen.manual_seed(derive_seed("data", config.seed, s.step, world.rank))
        noise_gen.manual_seed(derive_seed("noise", config.seed, s.step, world.rank))
        x, labels = self._batch(parts, idx, data_gen)
        # Drawn for the whole batch, as one big batch draws them: --grad-accum slices them.
        drawn = parts.diffusion.draw_training_noise(x, noise_gen)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr_at(config, s.step, total_steps)
        parts.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(parts, x, labels, drawn)
        bad = world.sum_tensor((~torch.isfinite(loss)).to(torch.float32))  # ranks with NaN/inf
        ok = (bad == 0).to(torch.float32)
        norm = None
        if config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), config.grad_clip)
        elif config.tensorboard:  # a figure for TensorBoard only: no clipping asked for
            norm = grad_norm(parts.model)
        if getattr(parts.optimizer, "defaults", {}).get("fused"):
            # The fused kernel skips the update (and its step count) where found_inf is 1:
            # the same switch GradScaler uses, decided on the device.
            parts.optimizer.found_inf = 1.0 - ok
            parts.optimizer.step()
        elif bool(ok):  # no fused kernel on this device: ask the host
            parts.optimizer.step()
        parts.ema.update(parts.model, active=ok)
        window.add(loss, ok, norm)
        s.pos += len(idx)
        s.step += 1
        s.images_seen += len(idx) * world.world_size
        window.images += len(idx) * world.world_size

    def _batch(self, parts: Parts, idx: torch.Tensor,
               data_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step's images (flipped) and labels (some dropped), on the device."""
        config, device = self.config, self.world.device
        # On the device when the images live there (core.data.dataset.batches_on); the flips and the
        # label dropout below are drawn from the CPU generator either way, in this order.
        x, labels = parts.batches.get_batch(idx, data_gen)
        if config.conditional and config.label_dropout > 0:
            drop = torch.rand(labels.shape[0], generator=data_gen) < config.label_dropout
            drop = drop.to(labels.device, non_blocking=True)
            labels = torch.where(drop, torch.full_like(labels, len(parts.classes)), labels)  # "no label"
        x = x.to(device, non_blocking=True)  # no-ops for batches built on the device
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True) if config.conditional else None
        return x, labels

    def _forward_backward(self, parts: Parts, x: torch.Tensor, labels: torch.Tensor | None,
                          drawn: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The batch's loss (detached) and its gradients, in --grad-accum micro-batches: each
        micro-batch's mean loss is weighted by its share of the batch, so the gradients add up
        to those of the whole batch's mean loss. Under DDP only the last micro-batch's backward
        all-reduces (no_sync on the others)."""
        n = x.shape[0]
        pieces = micro_batches(n, self.config.grad_accum)
        total = None
        for i, piece in enumerate(pieces):
            with self._grad_sync(parts, last=i == len(pieces) - 1):
                with autocast_context(self.world.device, parts.amp_dtype):
                    loss = parts.diffusion.training_loss(
                        parts.train_model, x[piece], labels[piece] if labels is not None else None,
                        drawn=(drawn[0][piece], drawn[1][piece]))
                if len(pieces) > 1:
                    loss = loss * ((piece.stop - piece.start) / n)
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def _grad_sync(self, parts: Parts, *, last: bool):
        if last or not self.world.enabled:
            return contextlib.nullcontext()
        ddp = getattr(parts.train_model, "_orig_mod", parts.train_model)  # under torch.compile
        return ddp.no_sync()
