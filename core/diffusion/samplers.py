"""Samplers as plain functions over (model, diffusion): the ``iter_*`` functions that
core.diffusion.registry's ``SAMPLER_SPECS`` names, and their ``*_sample`` shortcuts.

Samplers: DDPM ancestral sampling (Ho et al. 2020), DDIM (Song et al. 2021),
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

These samplers are the VP process's; an EDM model (core.diffusion.edm) is sampled under the
same names by core.diffusion.edm_samplers (the registry's ``SamplerSpec.edm_function``; generate
picks by the model's process), and the functions here refuse it in one line.

The one path from a checkpoint to images (batches, weights, labels) is
core.diffusion.sampling.generate.
"""

from __future__ import annotations

import collections
import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from core.diffusion.process import Diffusion
from core.diffusion.registry import SAMPLER_SPECS

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

    def __call__(self, x: torch.Tensor, t: int | float) -> torch.Tensor:
        """The model at timestep ``t``: an int (VP) or a float (EDM's continuous net time)."""
        batch = x.shape[0]
        dtype = torch.long if isinstance(t, int) else torch.float32
        if self.guided:
            tt = torch.full((2 * batch,), t, device=self.device, dtype=dtype)
            with self._autocast():
                out = self.model(torch.cat([x, x]), tt, self.labels2)
            cond, uncond = out.float().chunk(2)
            return uncond + self.guidance * (cond - uncond)
        tt = torch.full((batch,), t, device=self.device, dtype=dtype)
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
           device: torch.device | str | None = None, autocast: Any = None,
           start_scale: float = 1.0) -> Iterator[SampleStep]:
    """What every sampler shares: arguments, x_T ~ N(0, start_scale^2 I) from the generator,
    eval mode, one :class:`SampleStep` per timestep."""
    shape = _check_shape(shape)
    device = torch.device(device) if device is not None else _model_device(model)
    generator = _prepare_generator(generator, seed, device)
    lab, null = _prepare_labels(labels, shape[0], model, device)
    net = _Denoiser(model, lab, null, guidance, device, autocast)
    noise = lambda: _noise(shape, generator, device)  # noqa: E731
    with _eval_mode(model):
        x = noise() * start_scale if start_scale != 1.0 else noise()
        for index, t in enumerate(timesteps):
            nxt = timesteps[index + 1] if index + 1 < len(timesteps) else None
            x, x0 = rule(x, t, nxt, net, noise)
            step = SampleStep(index=index, total=len(timesteps), t=t, x_t=x, x0_pred=x0)
            if callback is not None:
                callback(step)
            yield step


def _vp_only(diffusion: Any, name: str) -> None:
    """The samplers here walk a VP model's timesteps; an EDM model has none."""
    if getattr(diffusion, "kind", "vp") != "vp":
        raise ValueError(f"{name} samples a VP model, not an EDM one: use core.diffusion.edm_samplers "
                         "(core.diffusion.sampling.generate picks by the model)")


# -- DDPM ----------------------------------------------------------------------------------


def iter_ddpm(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *, variance: str = "small",
              clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """Ancestral sampling through all T steps (Ho et al. 2020), yielding each step.

    variance "small" uses the true posterior variance beta~_t, "large" uses beta_t.
    clip_x0 clips the predicted x0 to [-1, 1] before the posterior mean (turn it off for data
    that is not in [-1, 1]). No noise is added at t = 0. ``common``: generator, seed,
    labels, guidance, callback, device, autocast (see the module docstring).
    """
    _vp_only(diffusion, "iter_ddpm")
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
    return run_to_end(iter_ddpm(model, diffusion, shape, **kwargs))


# -- DDIM ----------------------------------------------------------------------------------


def ddim_timesteps(T: int, steps: int, sampler: str = "DDIM") -> list[int]:
    """``steps`` evenly spaced timesteps from T-1 down to 0 (both ends included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"{sampler} steps must be an integer in 1..{T}, got {steps!r}")
    if steps == 1:
        return [T - 1]
    # Spacing (T-1)/(steps-1) >= 1, so the rounded values are distinct.
    return [round(i * (T - 1) / (steps - 1)) for i in range(steps - 1, -1, -1)]


def iter_ddim(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *, steps: int = SAMPLER_SPECS["ddim"].default_steps, eta: float = 0.0,
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
    _vp_only(diffusion, "iter_ddim")
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
    return run_to_end(iter_ddim(model, diffusion, shape, **kwargs))


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


def iter_dpmpp2m(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *,
                 steps: int = SAMPLER_SPECS["dpmpp2m"].default_steps,
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
    _vp_only(diffusion, "iter_dpmpp2m")
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
    return run_to_end(iter_dpmpp2m(model, diffusion, shape, **kwargs))


# -- Heun (EDM) -----------------------------------------------------------------------------

# EDM integrates from sigma_max = 80 (in sigma / alpha units); from noisier timesteps a Heun
# correction spans a slope that changes by orders of magnitude (cosine: +370 % std on the
# Gaussian oracle at 20 steps), so those steps are Euler steps.
HEUN_SIGMA_MAX = 80.0


def iter_heun(model: nn.Module, diffusion: Diffusion, shape: Sequence[int], *,
              steps: int = SAMPLER_SPECS["heun"].default_steps,
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
    _vp_only(diffusion, "iter_heun")
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
    return run_to_end(iter_heun(model, diffusion, shape, **kwargs))


def run_to_end(steps: Iterator[SampleStep]) -> torch.Tensor:
    """The final sample of a sampler's iterator (progress goes through its callback)."""
    (last,) = collections.deque(steps, maxlen=1)
    return last.x_t
