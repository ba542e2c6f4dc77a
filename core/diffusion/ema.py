"""Exponential moving average of a model's parameters (not its buffers).

``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step. With
``warmup_steps = W > 0`` the decay ramps up as ``min(decay, (1 + n) / (W + n))`` (n = updates
so far), so early, still-random weights are forgotten quickly; ``W = 10`` is the usual choice.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
import torch.nn as nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def swapped_in(model: nn.Module, params: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]):
    """``model`` (whose ``params`` these are) holding ``weights`` inside the block: storages
    swapped, nothing copied, and swapped back after, however the block ends."""
    for name, p in params.items():
        w = weights[name]
        if (w.dtype, w.device, w.shape) != (p.dtype, p.device, p.shape):
            raise ValueError(f"EMA weight {name!r} is {w.dtype} on {w.device}, the model's {p.dtype} on {p.device}")
    swapped: list[str] = []
    try:
        with torch.no_grad():
            for name, p in params.items():
                p.data, weights[name] = weights[name], p.data
                swapped.append(name)
        yield model
    finally:
        with torch.no_grad():
            for name in swapped:
                p = params[name]
                p.data, weights[name] = weights[name], p.data


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.995, warmup_steps: int = 0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"EMA warmup_steps must be >= 0, got {warmup_steps}")
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.num_updates = 0
        # float32 copies, detached, on the parameters' devices.
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone().float() for name, p in unwrap_model(model).named_parameters()
        }

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if self.warmup_steps <= 0:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (self.warmup_steps + n))

    def _params(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(unwrap_model(model).named_parameters())
        if params.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - params.keys())
            extra = sorted(params.keys() - self.shadow.keys())
            detail = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise ValueError(f"EMA does not match this model's parameters: {detail}")
        return params

    @torch.no_grad()
    def update(self, model: nn.Module, active: torch.Tensor | None = None) -> None:
        """One averaging step, as one foreach kernel over all parameters (not one per tensor).
        ``active``: a 0-dim 0/1 tensor on the parameters' device; 0 leaves the average as it
        is (a skipped training step) without the host having to look at it. Such a call still
        counts in ``num_updates``; the caller that skips corrects it with ``uncount``."""
        d = self.current_decay()
        shadows, sources = [], []
        for name, p in self._params(model).items():
            s = self.shadow[name]
            if s.device != p.device:  # model moved after the EMA was made
                s = self.shadow[name] = s.to(p.device)
            shadows.append(s)
            sources.append(p.detach() if p.dtype == torch.float32 else p.detach().float())
        if active is None:
            torch._foreach_lerp_(shadows, sources, 1.0 - d)
        else:
            weight = active.to(torch.float32) * (1.0 - d)
            torch._foreach_lerp_(shadows, sources, [weight] * len(shadows))
        self.num_updates += 1

    def uncount(self, n: int) -> None:
        """Forget ``n`` updates that ``active`` turned off (the warm-up counts real ones)."""
        self.num_updates = max(0, self.num_updates - int(n))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averaged ones (buffers untouched)."""
        for name, p in self._params(model).items():
            p.copy_(self.shadow[name])

    def applied(self, model: nn.Module):
        """``model`` holding the averaged weights inside the block and its own again after.
        The parameters' storages are swapped with the shadows, so nothing is copied and no
        second model is made (a deep copy of the classic network is ~373 MB)."""
        return swapped_in(model, self._params(model), self.shadow)

    def state_dict(self) -> dict[str, Any]:
        """Plain dict (floats, ints, tensors): safe for ``torch.load(weights_only=True)``."""
        return {
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "num_updates": self.num_updates,
            "shadow": {k: v.detach().clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            shadow = state["shadow"]
            decay = float(state["decay"])
            warmup = int(state.get("warmup_steps", 0))
            num_updates = int(state["num_updates"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an EMA state: missing or bad field {exc}") from None
        if shadow.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - shadow.keys())
            extra = sorted(shadow.keys() - self.shadow.keys())
            detail = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise ValueError(f"EMA state does not match this model: {detail}")
        for name, value in shadow.items():
            if tuple(value.shape) != tuple(self.shadow[name].shape):
                raise ValueError(
                    f"EMA state {name!r} has shape {tuple(value.shape)}, expected {tuple(self.shadow[name].shape)}"
                )
        self.shadow = {k: v.detach().to(self.shadow[k].device, torch.float32).clone() for k, v in shadow.items()}
        self.decay = decay
        self.warmup_steps = warmup
        self.num_updates = num_updates
