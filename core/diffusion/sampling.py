"""Samplers as plain functions over (model, diffusion), and the one sampling path.

Samplers (``SAMPLERS``): DDPM ancestral sampling (Ho et al. 2020), DDIM (Song et al. 2021),
DPM-Solver++(2M) (Lu et al. 2022: second-order multistep on the data prediction, in
log-SNR) and Heun (Karras et al. 2022: second order on the probability-flow ODE, here over
the model's own discrete timesteps). Each takes the model call convention
``model(x_t, t, labels) -> output``, where the output is whatever the diffusion's
``config.prediction`` says (eps, x0 or v); every conversion to x0/eps and the posterior goes
through ``Diffusion``'s methods with Python-int timesteps (float64 scalars, no gathers).

Samplers run under ``torch.inference_mode``, draw every random number from one
``torch.Generator`` (so a seed reproduces an image), and report progress two ways:
``callback(step)`` after every step, and the ``iter_*`` generator functions that yield a
:class:`SampleStep` per step, so a UI can show the image forming. The ``*_sample`` functions
run an iterator to the end and return the image. A zero-terminal-SNR schedule
(alpha_bar_T = 0) is handled by every sampler: no step divides by sqrt(alpha_bar).

The sampler arithmetic is float32 with float64 schedule coefficients; ``autocast`` only
affects the network's forward pass (its output is cast back to float32).

Class conditioning: ``labels=None`` runs the model unconditionally; labels with
``guidance == 1`` runs it conditionally; labels with any other guidance runs classifier-free
guidance, out = out_uncond + g * (out_cond - out_uncond), with the conditional and the
unconditional ("null label") halves batched into one forward pass of 2B. Every target is an
affine function of eps with the same coefficients for both halves, so guiding the raw
output is guiding eps.

:func:`generate` is the one path from a checkpoint (or a built model) and a
:class:`SampleRequest` to images, used by ``ddpm-tui sample``, the Sample screen and the
trainer's grids: it picks the weights, device, autocast, labels and sampler, runs any number
of images in batches (bounded memory) and reports which weights it used.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from core.diffusion.device import is_oom
from core.diffusion.process import Diffusion
from core.diffusion.registry import MAX_SEED, SAMPLER_NAMES, WEIGHT_NAMES

VARIANCES: tuple[str, ...] = ("small", "large")
SAMPLERS: tuple[str, ...] = SAMPLER_NAMES


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
    # Set by generate(): which batch of how many, the index of the batch's first image, the
    # weights used ("ema" | "raw"), and on a batch's last step its images as uint8 (B, H, W, C).
    batch: int = 0
    batches: int = 1
    first: int = 0
    weights: str | None = None
    images: torch.Tensor | None = None


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
        if key == "auto":
            raise ValueError("autocast 'auto' depends on the device: resolve it with core.diffusion.device.autocast_dtype")
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


class _Denoiser:
    """Calls the model once per step, with guidance batching and autocast; returns the raw
    (guided) output in float32, whatever the model predicts."""

    def __init__(self, model: nn.Module, labels: torch.Tensor | None, null: int | None,
                 guidance: float, device: torch.device, autocast: Any) -> None:
        self.model = model
        self.labels = labels
        self.guidance = float(guidance)
        if not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        self.device = device
        if isinstance(autocast, str) and autocast.strip().lower() == "auto":
            from core.diffusion.device import autocast_dtype

            self.dtype = autocast_dtype(device, "auto")
        else:
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


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


# One sampler step: (x at t, t, the next timestep or None after the last, the network,
# a fresh-noise function) -> (x at the next timestep, the x0 prediction at t).
StepRule = Callable[[torch.Tensor, int, "int | None", Callable, Callable[[], torch.Tensor]],
                    tuple[torch.Tensor, torch.Tensor]]


@torch.inference_mode()
def _drive(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], timesteps: list[int], rule: StepRule, *,
           generator: torch.Generator | None = None, seed: int | None = None, labels: LabelsLike = None,
           guidance: float = 1.0, callback: StepCallback | None = None,
           device: torch.device | str | None = None, autocast: Any = None) -> Iterator[SampleStep]:
    """What every sampler shares: arguments, x_T ~ N(0, I) from the generator, eval mode,
    one :class:`SampleStep` per timestep."""
    shape = _check_shape(shape)
    device = torch.device(device) if device is not None else _model_device(model)
    generator = _prepare_generator(generator, seed, device)
    lab, null = _prepare_labels(labels, shape[0], model, device)
    net = _Denoiser(model, lab, null, guidance, device, autocast)
    noise = lambda: _noise(shape, generator, device)  # noqa: E731
    with _eval_mode(model):
        x = noise()
        for index, t in enumerate(timesteps):
            nxt = timesteps[index + 1] if index + 1 < len(timesteps) else None
            x, x0 = rule(x, t, nxt, net, noise)
            step = SampleStep(index=index, total=len(timesteps), t=t, x_t=x, x0_pred=x0)
            if callback is not None:
                callback(step)
            yield step


# -- DDPM ----------------------------------------------------------------------------------


def iter_ddpm(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *, variance: str = "small",
              clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """Ancestral sampling through all T steps (Ho et al. 2020), yielding each step.

    variance "small" uses the true posterior variance beta~_t, "large" uses beta_t.
    clip_x0 clips the predicted x0 to [-1, 1] before the posterior mean (turn it off for data
    that is not in [-1, 1]). No noise is added at t = 0. ``common``: generator, seed,
    labels, guidance, callback, device, autocast (see the module docstring).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; use one of {', '.join(VARIANCES)}")

    def rule(x, t, nxt, net, noise):
        x0 = diffusion.model_x0(x, t, net(x, t))
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean, posterior_variance, _ = diffusion.q_posterior(x0, x, t)
        if t == 0:
            return mean, x0
        var = posterior_variance if variance == "small" else diffusion.coef("betas", t, x)
        return mean + math.sqrt(var) * noise(), x0

    return _drive(model, diffusion, shape, list(range(diffusion.T - 1, -1, -1)), rule, **common)


def ddpm_sample(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Run :func:`iter_ddpm` to the end and return the final sample (same keyword arguments)."""
    return _run(iter_ddpm(model, diffusion, shape, **kwargs))


# -- DDIM ----------------------------------------------------------------------------------


def ddim_timesteps(T: int, steps: int, sampler: str = "DDIM") -> list[int]:
    """``steps`` evenly spaced timesteps from T-1 down to 0 (both ends included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"{sampler} steps must be an integer in 1..{T}, got {steps!r}")
    if steps == 1:
        return [T - 1]
    # Spacing (T-1)/(steps-1) >= 1, so the rounded values are distinct.
    return [round(i * (T - 1) / (steps - 1)) for i in range(steps - 1, -1, -1)]


def iter_ddim(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *, steps: int = 50, eta: float = 0.0,
              clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """DDIM (Song et al. 2021) over ``steps`` evenly spaced timesteps, yielding each step.

    eta = 0 is deterministic given the starting noise; eta = 1 matches DDPM's posterior
    variance on the chosen sub-sequence. The last step lands on alpha_bar = 1, i.e. its
    output is the predicted x0. With clip_x0 the predicted x0 is clipped to [-1, 1] and eps
    is recomputed from it, so the step stays consistent. eta = 0 is the Euler step of the
    probability-flow ODE in (sigma / alpha) coordinates, which :func:`iter_heun` refines.
    """
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta!r}")
    ab = diffusion.schedule_table("alpha_bars")

    def rule(x, t, nxt, net, noise):
        x0, eps = diffusion.model_x0_eps(x, t, net(x, t), clip_x0)
        if nxt is None:
            return x0, x0  # alpha_bar_prev = 1: the output is the predicted clean image
        ab_t, ab_prev = ab[t], ab[nxt]
        sigma = float(eta) * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        direction = math.sqrt(max(1 - ab_prev - sigma * sigma, 0.0))
        x = math.sqrt(ab_prev) * x0 + direction * eps
        if sigma > 0:
            x = x + sigma * noise()
        return x, x0

    return _drive(model, diffusion, shape, ddim_timesteps(diffusion.T, steps), rule, **common)


def ddim_sample(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Run :func:`iter_ddim` to the end and return the final sample (same keyword arguments)."""
    return _run(iter_ddim(model, diffusion, shape, **kwargs))


# -- DPM-Solver++(2M) -----------------------------------------------------------------------


# The ODE samplers' grid (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) + i/(n-1)
# (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in EDM's sigma = sqrt(1 - ab) / sqrt(ab), each
# mapped to the timestep with the nearest log sigma. Measured on a fast-recipe model
# (`python -m bench.quality` sweep, README): DPM-Solver++(2M) at 20 steps, 500 samples, two
# seeds: rho 3 / 5 / 7 / 9 gave FID 3.71 / 3.74 / 4.04 / 3.91 (seed 0) against 4.52 for steps
# even in log-SNR and 3.85 for DDIM-100; rho 5 keeps the Gaussian oracle's error at 20 steps
# near 5 % where rho 3 has 16 %.
KARRAS_RHO = 5.0
KARRAS_SIGMA_MAX = 80.0  # EDM's: above it the cosine schedule's top timesteps hold nothing to integrate


def karras_timesteps(diffusion: Diffusion, steps: int, sampler: str = "DPM-Solver++",
                     rho: float = KARRAS_RHO, sigma_max: float = KARRAS_SIGMA_MAX) -> list[int]:
    """``steps`` distinct timesteps from T-1 down to 0 on Karras et al.'s sigma grid with
    exponent ``rho``, between min(sigma_max, sigma at T-1) and sigma at t = 0. The first
    timestep is always T-1 (where sampling starts; at zero terminal SNR its sigma is
    infinite and the grid proper starts at the next one) and the last is 0."""
    T = diffusion.config.T
    ddim_timesteps(T, steps, sampler)  # the same argument check
    if steps == 1:
        return [T - 1]
    ab = diffusion.schedule_table("alpha_bars")
    log_sigma = [0.5 * math.log((1 - a) / a) if a > 0 else math.inf for a in ab]  # increasing in t
    top = min(math.log(sigma_max), log_sigma[-1] if math.isfinite(log_sigma[-1]) else log_sigma[-2])
    hi, lo = math.exp(top / rho), math.exp(log_sigma[0] / rho)
    out = [T - 1]
    t = T - 1
    for i in range(1, steps):
        target = rho * math.log(hi + (lo - hi) * i / (steps - 1))  # log sigma_i
        while t > 0 and log_sigma[t - 1] >= target:  # the lowest timestep still at or above the target
            t -= 1
        if t > 0 and abs(log_sigma[t - 1] - target) < abs(log_sigma[t] - target):
            t -= 1
        # distinct and decreasing, with room left for the remaining steps
        t = max(min(t, out[-1] - 1), steps - 1 - i)
        out.append(t)
    out[-1] = 0
    return out


def _log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma); -inf at a zero-terminal-SNR step (alpha = 0)."""
    return math.log(alpha / sigma) if alpha > 0 else -math.inf


def iter_dpmpp2m(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *, steps: int = 20,
                 clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) over ``steps`` timesteps on Karras et al.'s
    sigma grid (:func:`karras_timesteps`).

    With alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t) and
    h = lambda_next - lambda_t, each step is
        x_next = (sigma_next / sigma_t) x - alpha_next expm1(-h) D,
    D = (1 + 1 / (2r)) x0_t - 1 / (2r) x0_prev with r = h_prev / h (D = x0_t on the first
    step: first order, i.e. DDIM). -alpha_next expm1(-h) is computed as
    alpha_next - alpha_t sigma_next / sigma_t, which stays finite when alpha_t = 0 (zero
    terminal SNR, where h_prev is infinite and the step falls back to first order). The last
    step lands on sigma = 0: its output is the predicted x0. One model call per step;
    deterministic given the starting noise.
    """
    alpha, sigma = diffusion.schedule_table("sqrt_alpha_bars"), diffusion.schedule_table("sqrt_one_minus_alpha_bars")
    memory: dict[str, Any] = {"x0": None, "h": math.inf}  # the previous step's x0 and h

    def rule(x, t, nxt, net, noise):
        x0 = diffusion.model_x0(x, t, net(x, t))
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if nxt is None:
            return x0, x0
        h = _log_snr(alpha[nxt], sigma[nxt]) - _log_snr(alpha[t], sigma[t])
        d = x0
        if memory["x0"] is not None and math.isfinite(memory["h"]):
            k = h / (2.0 * memory["h"])  # 1 / (2r)
            d = (1.0 + k) * x0 - k * memory["x0"]
        memory.update(x0=x0, h=h)
        ratio = sigma[nxt] / sigma[t]
        return ratio * x + (alpha[nxt] - alpha[t] * ratio) * d, x0

    return _drive(model, diffusion, shape, karras_timesteps(diffusion, steps), rule, **common)


def dpmpp2m_sample(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Run :func:`iter_dpmpp2m` to the end and return the final sample (same keyword arguments)."""
    return _run(iter_dpmpp2m(model, diffusion, shape, **kwargs))


# -- Heun (EDM) -----------------------------------------------------------------------------

# EDM integrates from sigma_max = 80 (in sigma / alpha units); from noisier timesteps a Heun
# correction spans a slope that changes by orders of magnitude (cosine: +370 % std on the
# Gaussian oracle at 20 steps), so those steps are Euler steps.
HEUN_SIGMA_MAX = 80.0


def iter_heun(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *, steps: int = 20,
              clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1,
    deterministic) over ``steps`` evenly spaced timesteps of the model.

    In EDM's coordinates y = x / alpha, s = sigma / alpha the ODE is dy/ds = eps(x). The
    Euler step from t to the next timestep t' is DDIM with eta = 0; Heun then evaluates eps
    at the Euler point and averages the two slopes:
        x_t' = x_euler + alpha_t' (s_t' - s_t) (eps_euler - eps_t) / 2.
    Steps from s > HEUN_SIGMA_MAX (EDM's sigma_max = 80; s = inf at zero terminal SNR) and
    the last step (to sigma = 0, the predicted x0) are Euler steps, as in EDM. At most
    2 * steps - 1 model calls; deterministic given the starting noise.
    """
    alpha, sigma = diffusion.schedule_table("sqrt_alpha_bars"), diffusion.schedule_table("sqrt_one_minus_alpha_bars")

    def rule(x, t, nxt, net, noise):
        x0, eps = diffusion.model_x0_eps(x, t, net(x, t), clip_x0)
        if nxt is None:
            return x0, x0
        x = alpha[nxt] * x0 + sigma[nxt] * eps  # Euler (= DDIM, eta 0)
        if alpha[t] > 0 and sigma[t] / alpha[t] <= HEUN_SIGMA_MAX:
            _, eps_next = diffusion.model_x0_eps(x, nxt, net(x, nxt), clip_x0)
            ds = sigma[nxt] / alpha[nxt] - sigma[t] / alpha[t]
            x = x + (0.5 * alpha[nxt] * ds) * (eps_next - eps)
        return x, x0

    return _drive(model, diffusion, shape, ddim_timesteps(diffusion.T, steps, "Heun"), rule, **common)


def heun_sample(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Run :func:`iter_heun` to the end and return the final sample (same keyword arguments)."""
    return _run(iter_heun(model, diffusion, shape, **kwargs))


def _run(steps: Iterator[SampleStep]) -> torch.Tensor:
    # Consume the iterator keeping only the last step; progress goes through the callback.
    (last,) = collections.deque(steps, maxlen=1)
    return last.x_t


# -- the one sampling path ------------------------------------------------------------------

WEIGHTS: tuple[str, ...] = WEIGHT_NAMES
DEFAULT_BATCH_SIZE = 32  # images a forward pass (2x that with guidance); fixed, so a seed gives the same images everywhere


class SamplingError(Exception):
    """Sampling cannot go on (out of memory, non-finite weights or output); one line for the user."""


@dataclass(frozen=True)
class SampleRequest:
    """What to draw. ``steps`` is for ddim/dpmpp2m/heun (capped at T); ddpm runs all T steps.

    Class-conditional models: ``breed`` (a class name, matched loosely) or ``label`` (an
    index) draws that class; neither draws the classes in turn (image i gets class i mod C);
    ``unconditional`` uses the null label. ``guidance`` applies to conditional draws only.
    Images are drawn ``batch_size`` at a time from one generator seeded with ``seed``, so the
    same request gives the same images on any caller (and, for n <= batch_size, the same as
    one call of the sampler with that seed).
    """

    n: int = 16
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 3.0
    label: int | None = None
    breed: str | None = None
    unconditional: bool = False
    seed: int = 0
    weights: str = "ema"
    amp: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    clip_x0: bool = True

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, low: int, high: int | None = None) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                span = f"{low}..{high}" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be an integer {span}, got {value!r}")

        whole("n", self.n, 1)
        whole("steps", self.steps, 1)
        whole("batch size", self.batch_size, 1)
        whole("seed", self.seed, 0, MAX_SEED)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; known samplers: {', '.join(SAMPLERS)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not (math.isfinite(float(self.guidance)) and float(self.guidance) >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance!r}")


@dataclass
class Sampleable:
    """A model ready to sample: the network (in eval mode), its diffusion, which weights it
    holds and how to say so, and what its checkpoint tells about it."""

    model: nn.Module
    diffusion: Diffusion
    weights: str  # "ema" | "raw": what the network actually holds
    weights_note: str  # for people: "EMA", "raw", "raw (this checkpoint has no EMA weights)"
    step: int = 0
    classes: list[str] = dataclasses.field(default_factory=list)
    path: Path | None = None


def load_for_sampling(path: str | os.PathLike, weights: str = "ema") -> Sampleable:
    """Read a checkpoint and build its model with the EMA or the raw weights.

    Asking for EMA weights from a checkpoint without them gives the raw ones, and says so.
    Raises CheckpointError (one line) for anything wrong with the file.
    """
    from core.diffusion.checkpoint import build_model_from_checkpoint, load_checkpoint

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    ckpt = load_checkpoint(path)
    use_ema = weights == "ema" and bool(ckpt.get("ema"))
    model, diffusion = build_model_from_checkpoint(ckpt, use_ema=use_ema)
    note = "EMA" if use_ema else ("raw (this checkpoint has no EMA weights)" if weights == "ema" else "raw")
    extra = ckpt.get("extra") or {}
    classes = [str(c) for c in (extra.get("classes") or [])]
    return Sampleable(model, diffusion, "ema" if use_ema else "raw", note, int(ckpt.get("step") or 0), classes, Path(path))


def breed_key(name: str) -> str:
    """'Golden Retriever', 'golden_retriever' and 'golden-retriever' name the same breed."""
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def resolve_labels(request: SampleRequest, num_classes: int, classes: Sequence[str] = ()) -> list[int] | None:
    """The class index of each of the n images, or None for an unconditional draw."""
    if request.breed is not None or request.label is not None:
        if num_classes == 0:
            raise ValueError("this model is unconditional; a breed needs a run trained with --conditional")
        names = list(classes) if len(classes) == num_classes else [str(i) for i in range(num_classes)]
        if request.breed is not None:
            matches = [i for i, b in enumerate(names) if breed_key(b) == breed_key(request.breed)]
            if not matches:
                raise ValueError(f"unknown breed {request.breed!r}; this run knows: {', '.join(names)}")
            label = matches[0]
        else:
            label = int(request.label)  # type: ignore[arg-type]
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} is out of range; the model knows classes 0..{num_classes - 1}")
        return [label] * request.n
    if num_classes == 0 or request.unconditional:
        return None
    return [i % num_classes for i in range(request.n)]


def _iterate(sampler: str, model, diffusion, shape, request: SampleRequest, **kw: Any) -> Iterator[SampleStep]:
    if sampler == "ddpm":
        return iter_ddpm(model, diffusion, shape, clip_x0=request.clip_x0, **kw)
    steps = min(request.steps, diffusion.T)
    if sampler == "ddim":
        return iter_ddim(model, diffusion, shape, steps=steps, eta=request.eta, clip_x0=request.clip_x0, **kw)
    fn = iter_dpmpp2m if sampler == "dpmpp2m" else iter_heun
    return fn(model, diffusion, shape, steps=steps, clip_x0=request.clip_x0, **kw)


def sampler_tag(request: SampleRequest, T: int) -> str:
    """A short name of the sampler and its steps for file names and messages: 'ddim50', 'ddpm1000'."""
    if request.sampler == "ddpm":
        return f"ddpm{T}"
    tag = f"{request.sampler}{min(request.steps, T)}"
    return tag + (f"-eta{request.eta:g}" if request.sampler == "ddim" and request.eta else "")


def generate(source: "str | os.PathLike | Sampleable | tuple[nn.Module, Diffusion]", request: SampleRequest, *,
             device: "torch.device | str | None" = None,
             progress: StepCallback | None = None) -> Iterator[SampleStep]:
    """Draw ``request.n`` images from ``source`` (a checkpoint path, a :class:`Sampleable`, or a
    ``(model, diffusion)`` pair whose weights the request names), ``request.batch_size`` at a
    time, yielding every sampler step of every batch.

    A step that ends a batch carries that batch's images as uint8 (B, H, W, C) in ``images``
    (``first`` is the index of its first image); every step carries ``weights``, the weights
    actually used. Only one batch is held at a time, so any n runs in bounded memory.
    Raises SamplingError for out-of-memory (any device) and for non-finite weights or
    output, ValueError for a bad request, CheckpointError for a bad checkpoint.
    """
    from core.diffusion.device import autocast_dtype, resolve_device
    from core.io.grid import to_uint8_images

    if isinstance(source, Sampleable):
        loaded = source
    elif isinstance(source, tuple):
        model, diffusion = source
        loaded = Sampleable(model, diffusion, request.weights, "EMA" if request.weights == "ema" else "raw")
    else:
        loaded = load_for_sampling(source, request.weights)
    model, diffusion = loaded.model, loaded.diffusion
    inner = model
    for _ in range(4):  # through DDP (.module) and torch.compile (._orig_mod) wrappers
        if hasattr(inner, "config"):
            break
        inner = getattr(inner, "_orig_mod", None) or getattr(inner, "module", None) or inner
    config = getattr(inner, "config", None)
    if config is None:
        raise ValueError("generate() needs a model with a .config (image_size, in_channels, num_classes)")
    num_classes = int(getattr(config, "num_classes", 0) or 0)
    labels = resolve_labels(request, num_classes, loaded.classes)
    dev = resolve_device(device if device is not None else "auto")
    amp = autocast_dtype(dev, request.amp)
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise SamplingError(f"the {loaded.weights} weights contain NaN or infinite values ({len(bad)} tensors, "
                            f"e.g. {bad[0]}): the training diverged; sample an earlier checkpoint")
    size, channels = config.image_size, config.in_channels
    batches = math.ceil(request.n / request.batch_size)
    generator = torch.Generator(device=dev).manual_seed(request.seed)
    first = 0
    try:
        model.to(dev)
        diffusion.to(dev)
        for batch in range(batches):
            b = min(request.batch_size, request.n - first)
            lab = labels[first:first + b] if labels is not None else None
            guidance = float(request.guidance) if lab is not None else 1.0
            it = _iterate(request.sampler, model, diffusion, (b, channels, size, size), request,
                          generator=generator, labels=lab, guidance=guidance, device=dev, autocast=amp)
            for step in it:
                step.batch, step.batches, step.first, step.weights = batch, batches, first, loaded.weights
                if step.index + 1 == step.total:
                    nonfinite = int((~torch.isfinite(step.x_t)).flatten(1).any(1).sum())
                    if nonfinite:
                        raise SamplingError(f"sampling produced NaN or infinite values in {nonfinite} of {b} "
                                            f"image(s) of batch {batch + 1}; try --amp off or another checkpoint")
                    step.images = to_uint8_images(step.x_t)
                if progress is not None:
                    progress(step)
                yield step
            first += b
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
        raise SamplingError(f"out of memory on {dev} drawing a batch of {min(request.batch_size, request.n)} "
                            f"image(s); use a smaller batch size") from None


def generate_images(source, request: SampleRequest, **kwargs: Any) -> tuple[torch.Tensor, str]:
    """Run :func:`generate` and return all n images as uint8 (n, H, W, C) and the weights used.
    For a few images (grids, the studio); a large n belongs with :func:`generate` itself."""
    parts: list[torch.Tensor] = []
    weights = request.weights
    for step in generate(source, request, **kwargs):
        weights = step.weights or weights
        if step.images is not None:
            parts.append(step.images)
    return torch.cat(parts), weights
