"""Samplers as plain functions over (model, diffusion): DDPM ancestral sampling and DDIM.

Both take the model call convention ``model(x_t, t, labels) -> eps``, run under
``torch.inference_mode``, draw every random number from one ``torch.Generator`` (so a seed
reproduces an image), and report progress two ways: ``callback(step)`` after every step, and
the ``iter_*`` generator functions that yield a :class:`SampleStep` per step, so a UI can show
the image forming. The ``*_sample`` functions run an iterator to the end and return the image.

The sampler arithmetic is float32 with float64 schedule coefficients; ``autocast`` only
affects the network's forward pass (its output is cast back to float32).

Class conditioning: ``labels=None`` runs the model unconditionally; labels with
``guidance == 1`` runs it conditionally; labels with any other guidance runs classifier-free
guidance, eps = eps_uncond + g * (eps_cond - eps_uncond), with the conditional and the
unconditional ("null label") halves batched into one forward pass of 2B.
"""

from __future__ import annotations

import collections
import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from core.diffusion import Diffusion

VARIANCES: tuple[str, ...] = ("small", "large")


@dataclass
class SampleStep:
    """One finished sampler step.

    ``t`` is the timestep the model was evaluated at; ``x_t`` is the sample after this step
    (the state at the next, lower timestep; after the last step it is the final image);
    ``x0_pred`` is the model's current prediction of the clean image.
    """

    index: int
    total: int
    t: int
    x_t: torch.Tensor
    x0_pred: torch.Tensor


StepCallback = Callable[[SampleStep], Any]
LabelsLike = torch.Tensor | Sequence[int] | int | None


# -- argument handling ---------------------------------------------------------------------


def resolve_autocast(autocast: Any) -> torch.dtype | None:
    """None/False/"fp32" -> None (plain float32); True/"bf16" -> bfloat16; "fp16" -> float16."""
    if autocast is None or autocast is False:
        return None
    if autocast is True:
        return torch.bfloat16
    if isinstance(autocast, torch.dtype):
        if autocast == torch.float32:
            return None
        if autocast in (torch.bfloat16, torch.float16):
            return autocast
    if isinstance(autocast, str):
        key = autocast.lower()
        if key in ("fp32", "float32", "none", "off", "no"):
            return None
        if key in ("bf16", "bfloat16"):
            return torch.bfloat16
        if key in ("fp16", "float16", "half"):
            return torch.float16
    raise ValueError(f"unknown autocast mode {autocast!r}; use None, 'bf16' or 'fp16'")


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _null_label(model: nn.Module) -> int:
    """The "no label" index of a class-conditional model (UNet: num_classes)."""
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if m is None:
            continue
        null = getattr(m, "null_label", None)
        if null is None:
            null = getattr(getattr(m, "config", None), "num_classes", None)
        if null is not None:
            if int(null) <= 0:
                raise ValueError("labels were given but the model is not class-conditional (num_classes=0)")
            return int(null)
    raise ValueError("labels were given but the model has no null_label / config.num_classes")


def _prepare_labels(labels: LabelsLike, batch: int, model: nn.Module, device: torch.device) -> tuple[torch.Tensor | None, int | None]:
    if labels is None:
        return None, None
    null = _null_label(model)
    lab = torch.as_tensor(labels, dtype=torch.long)
    if lab.dim() == 0:
        lab = lab.expand(batch)
    if lab.dim() != 1 or lab.shape[0] != batch:
        raise ValueError(f"labels must be an int or have shape ({batch},), got shape {tuple(lab.shape)}")
    lab_cpu = lab.cpu()
    bad = lab_cpu[(lab_cpu < 0) | (lab_cpu >= null)]
    if bad.numel():
        raise ValueError(f"label {int(bad[0])} is out of range; the model knows classes 0..{null - 1}")
    return lab.to(device), null


def _prepare_generator(generator: torch.Generator | None, seed: int | None, device: torch.device) -> torch.Generator | None:
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but sampling runs on {device}")
    return generator


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"sample shape must be (batch, channels, ...) with positive sizes, got {shape}")
    return shape


class _EpsPredictor:
    """Calls the model once per step, with guidance batching and autocast."""

    def __init__(self, model: nn.Module, labels: torch.Tensor | None, null: int | None,
                 guidance: float, device: torch.device, autocast: Any) -> None:
        self.model = model
        self.labels = labels
        self.guidance = float(guidance)
        if not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        self.device = device
        self.dtype = resolve_autocast(autocast)
        self.guided = labels is not None and self.guidance != 1.0
        if self.guided:
            assert labels is not None and null is not None
            self.labels2 = torch.cat([labels, torch.full_like(labels, null)])

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        batch = x.shape[0]
        if self.guided:
            tt = torch.full((2 * batch,), t, device=self.device, dtype=torch.long)
            with self._autocast():
                out = self.model(torch.cat([x, x]), tt, self.labels2)
            cond, uncond = out.float().chunk(2)
            return uncond + self.guidance * (cond - uncond)
        tt = torch.full((batch,), t, device=self.device, dtype=torch.long)
        with self._autocast():
            out = self.model(x, tt, self.labels)
        return out.float()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _setup(model, diffusion, shape, generator, seed, labels, guidance, device, autocast):
    shape = _check_shape(shape)
    device = torch.device(device) if device is not None else _model_device(model)
    generator = _prepare_generator(generator, seed, device)
    lab, null = _prepare_labels(labels, shape[0], model, device)
    eps_fn = _EpsPredictor(model, lab, null, guidance, device, autocast)
    table = {k: v.tolist() for k, v in Diffusion.schedule_float64(diffusion.config).items()}
    return shape, device, generator, eps_fn, table


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


# -- DDPM ----------------------------------------------------------------------------------


@torch.inference_mode()
def iter_ddpm(
    model: nn.Module,
    diffusion: Diffusion,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    labels: LabelsLike = None,
    guidance: float = 1.0,
    variance: str = "small",
    clip_x0: bool = True,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    autocast: Any = None,
) -> Iterator[SampleStep]:
    """Ancestral sampling through all T steps (Ho et al. 2020), yielding each step.

    variance "small" uses the true posterior variance beta~_t, "large" uses beta_t.
    clip_x0 clips the predicted x0 to [-1, 1] before the posterior mean (turn it off for data
    that is not in [-1, 1]). No noise is added at t = 0.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; use one of {', '.join(VARIANCES)}")
    shape, device, generator, eps_fn, tab = _setup(
        model, diffusion, shape, generator, seed, labels, guidance, device, autocast)
    stds = [math.sqrt(v) for v in (tab["posterior_variance"] if variance == "small" else tab["betas"])]
    T = diffusion.config.T
    with _eval_mode(model):
        x = _noise(shape, generator, device)
        for index, t in enumerate(range(T - 1, -1, -1)):
            eps = eps_fn(x, t)
            x0 = tab["sqrt_recip_alpha_bars"][t] * x - tab["sqrt_recipm1_alpha_bars"][t] * eps
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            mean = tab["posterior_mean_coef1"][t] * x0 + tab["posterior_mean_coef2"][t] * x
            x = mean + stds[t] * _noise(shape, generator, device) if t > 0 else mean
            step = SampleStep(index=index, total=T, t=t, x_t=x, x0_pred=x0)
            if callback is not None:
                callback(step)
            yield step


def ddpm_sample(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Run :func:`iter_ddpm` to the end and return the final sample (same keyword arguments)."""
    return _run(iter_ddpm(model, diffusion, shape, **kwargs))


# -- DDIM ----------------------------------------------------------------------------------


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from T-1 down to 0 (both ends included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"DDIM steps must be an integer in 1..{T}, got {steps!r}")
    if steps == 1:
        return [T - 1]
    # Spacing (T-1)/(steps-1) >= 1, so the rounded values are distinct.
    return [round(i * (T - 1) / (steps - 1)) for i in range(steps - 1, -1, -1)]


@torch.inference_mode()
def iter_ddim(
    model: nn.Module,
    diffusion: Diffusion,
    shape: Sequence[int],
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    labels: LabelsLike = None,
    guidance: float = 1.0,
    clip_x0: bool = True,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    autocast: Any = None,
) -> Iterator[SampleStep]:
    """DDIM (Song et al. 2021) over ``steps`` evenly spaced timesteps, yielding each step.

    eta = 0 is deterministic given the starting noise; eta = 1 matches DDPM's posterior
    variance on the chosen sub-sequence. The last step lands on alpha_bar = 1, i.e. its
    output is the predicted x0. With clip_x0 the predicted x0 is clipped to [-1, 1] and eps
    is recomputed from it, so the step stays consistent.
    """
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta!r}")
    T = diffusion.config.T
    timesteps = ddim_timesteps(T, steps)
    shape, device, generator, eps_fn, tab = _setup(
        model, diffusion, shape, generator, seed, labels, guidance, device, autocast)
    ab = tab["alpha_bars"]
    with _eval_mode(model):
        x = _noise(shape, generator, device)
        for index, t in enumerate(timesteps):
            eps = eps_fn(x, t)
            x0 = tab["sqrt_recip_alpha_bars"][t] * x - tab["sqrt_recipm1_alpha_bars"][t] * eps
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (tab["sqrt_recip_alpha_bars"][t] * x - x0) / tab["sqrt_recipm1_alpha_bars"][t]
            if index + 1 == len(timesteps):
                x = x0  # alpha_bar_prev = 1: the output is the predicted clean image
            else:
                ab_t, ab_prev = ab[t], ab[timesteps[index + 1]]
                sigma = float(eta) * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
                direction = math.sqrt(max(1 - ab_prev - sigma * sigma, 0.0))
                x = math.sqrt(ab_prev) * x0 + direction * eps
                if sigma > 0:
                    x = x + sigma * _noise(shape, generator, device)
            step = SampleStep(index=index, total=len(timesteps), t=t, x_t=x, x0_pred=x0)
            if callback is not None:
                callback(step)
            yield step


def ddim_sample(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Run :func:`iter_ddim` to the end and return the final sample (same keyword arguments)."""
    return _run(iter_ddim(model, diffusion, shape, **kwargs))


def _run(steps: Iterator[SampleStep]) -> torch.Tensor:
    # Consume the iterator keeping only the last step; progress goes through the callback.
    (last,) = collections.deque(steps, maxlen=1)
    return last.x_t
