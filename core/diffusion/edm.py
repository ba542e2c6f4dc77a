"""EDM: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", as a second diffusion process beside the discrete VP one (core.diffusion.process),
over the SAME networks (core.diffusion.unet presets).

The data are noised as x = x0 + sigma n (variance exploding, no scaling), sigma continuous.
The network F is wrapped in EDM's preconditioning (Table 1, "Ours"), with sigma_data = 0.5
(the std of images in [-1, 1], roughly):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Training draws ln(sigma) ~ N(P_mean, P_std^2) (-1.2, 1.2) and minimises
lambda(sigma) c_out^2 ||F - (x0 - c_skip x) / c_out||^2 with
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2: the loss on F
is a plain (uniform) mean squared error against F's target, which is what
:meth:`EDM.training_loss` computes.

The time input. Our UNets embed a timestep with sin/cos at frequencies 10000^(-2i/dim),
made for t in [0, 1000). c_noise itself spans only about [-1.6, 1.1] over sigma in
[0.002, 80]: there even the fastest sinusoid (1 radian per unit) turns less than half a
turn and the slow ones not at all, so nearly every embedding channel would be constant and
the network could hardly tell noise levels apart. :meth:`EDM.net_time` maps c_noise
affinely so that sigma 0.002 -> 0 and sigma 80 -> 999 (a sigma drawn outside that range
lands a little outside [0, 999], which a sin/cos embedding takes as it comes). Affine in
c_noise, it is the same conditioning EDM describes; it only hands the network its input in
the units its embedding was built for. The network is unchanged.

Sampling (core.diffusion.edm_samplers) runs on EDM's sigma discretisation
sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
sigma_N = 0, rho = 7, sigma_min = 0.002, sigma_max = 80, from x ~ N(0, sigma_max^2 I).

The config dict (config.json's "diffusion", checkpoints' diffusion_config) says
``"kind": "edm"``; a dict without a kind, as every one written before EDM, is the VP
process (:func:`core.diffusion.process.config_from_dict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.io.jsonio import dataclass_from_dict

ModelFn = Callable[..., torch.Tensor]

# The sigma range mapped onto the network's timestep range [0, NET_T_MAX]: EDM's sampling
# range, fixed here (not read from the config) so the mapping a network was trained with
# never changes.
NET_SIGMA_LOW, NET_SIGMA_HIGH, NET_T_MAX = 0.002, 80.0, 999.0
# The most steps one EDM draw takes (the VP samplers' bound is T).
MAX_STEPS = 1000


@dataclass
class EDMConfig:
    kind: str = "edm"
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if self.kind != "edm":
            raise ValueError(f"EDM config kind must be 'edm', got {self.kind!r}")
        for f in fields(self):
            if f.name == "kind":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"EDM {f.name} must be a finite number, got {value!r}")
            setattr(self, f.name, float(value))
        for name in ("sigma_data", "p_std", "sigma_min", "sigma_max", "rho"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EDM {name} must be positive, got {getattr(self, name)!r}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"EDM sigma_min {self.sigma_min:g} must be below sigma_max {self.sigma_max:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EDMConfig":
        return dataclass_from_dict(cls, data, "EDM config")


def _as_column(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """A per-sample sigma (B,) shaped (B, 1, 1, ...) to broadcast over x; a float stays one."""
    if isinstance(sigma, torch.Tensor):
        return sigma.to(device=x.device, dtype=torch.float32).reshape(-1, *([1] * (x.dim() - 1)))
    return float(sigma)


class EDM(nn.Module):
    """EDM's preconditioned denoiser, training objective and noise levels (no buffers: every
    coefficient is a closed form of sigma)."""

    kind = "edm"

    def __init__(self, config: EDMConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else EDMConfig()
        self.sigma_data = self.config.sigma_data

    @property
    def max_sampler_steps(self) -> int:
        return MAX_STEPS

    # -- preconditioning (Table 1) -----------------------------------------------------------

    def c_skip(self, sigma):
        return self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def c_in(self, sigma):
        return 1.0 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    @staticmethod
    def c_noise(sigma):
        return (torch.log(sigma) if isinstance(sigma, torch.Tensor) else math.log(sigma)) / 4.0

    @classmethod
    def net_time(cls, sigma):
        """c_noise mapped affinely onto the network's timestep range (module docstring):
        sigma NET_SIGMA_LOW -> 0, NET_SIGMA_HIGH -> NET_T_MAX."""
        low, high = math.log(NET_SIGMA_LOW) / 4.0, math.log(NET_SIGMA_HIGH) / 4.0
        return (cls.c_noise(sigma) - low) * (NET_T_MAX / (high - low))

    @staticmethod
    def sigma_from_net_time(t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`net_time` (for oracles and tests)."""
        low, high = math.log(NET_SIGMA_LOW), math.log(NET_SIGMA_HIGH)
        return torch.exp(low + t.double() * ((high - low) / NET_T_MAX))

    def loss_weight(self, sigma):
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def denoise(self, model: ModelFn, x: torch.Tensor, sigma: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x; net_time(sigma)); sigma a float or (B,)."""
        s = _as_column(sigma, x)
        t = sigma if isinstance(sigma, torch.Tensor) else torch.full((x.shape[0],), float(sigma), device=x.device)
        out = model(self.c_in(s) * x, self.net_time(t.to(x.device, torch.float32)), labels)
        return self.c_skip(s) * x + self.c_out(s) * out.float()

    # -- training objective --------------------------------------------------------------------

    def draw_training_noise(self, x0: torch.Tensor,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma with ln sigma ~ N(P_mean, P_std^2), noise ~ N(0, I)) for the batch ``x0``,
        drawn in this order."""
        z = torch.randn((x0.shape[0],), generator=generator, device=x0.device, dtype=torch.float32)
        sigma = (self.config.p_mean + self.config.p_std * z).exp()
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return sigma, noise

    def training_target(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """F's target: (x0 - c_skip x) / c_out, so that D = x0 exactly when F hits it."""
        s = _as_column(sigma, x0)
        return (x0 - self.c_skip(s) * x) / self.c_out(s)

    def training_loss(
        self,
        model: ModelFn,
        x0: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        drawn: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """EDM's loss E[lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2], written as the mean
        squared error of F against its target (lambda c_out^2 = 1), in float32. ``drawn``:
        (sigma, noise) from :meth:`draw_training_noise` for a larger batch this one is a
        slice of, as Diffusion.training_loss takes (t, noise)."""
        if generator is not None and generator.device.type != x0.device.type:
            raise ValueError(f"generator is on {generator.device} but the batch is on {x0.device}; "
                             "create the generator on the batch's device")
        sigma, noise = drawn if drawn is not None else self.draw_training_noise(x0, generator)
        s = _as_column(sigma, x0)
        x = x0 + s * noise
        out = model(self.c_in(s) * x, self.net_time(sigma.float()), labels)
        if out.shape != noise.shape:
            raise ValueError(f"model returned shape {tuple(out.shape)}, expected {tuple(noise.shape)}")
        return F.mse_loss(out.float(), self.training_target(x0, x, sigma).float())

    # -- noise levels ----------------------------------------------------------------------------

    def sigmas(self, steps: int, sampler: str = "EDM") -> list[float]:
        """EDM's discretisation (eq. 5): ``steps`` sigmas from sigma_max down to sigma_min
        with exponent rho, then 0 (steps + 1 values)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"{sampler} steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
        c = self.config
        hi, lo = c.sigma_max ** (1.0 / c.rho), c.sigma_min ** (1.0 / c.rho)
        if steps == 1:
            return [c.sigma_max, 0.0]
        return [(hi + i / (steps - 1) * (lo - hi)) ** c.rho for i in range(steps)] + [0.0]

    def noised(self, x0: torch.Tensor, sigma: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
        """x = x0 + sigma n."""
        return x0 + _as_column(sigma, x0) * noise

    def extra_repr(self) -> str:
        c = self.config
        return (f"sigma_data={c.sigma_data:g}, P_mean={c.p_mean:g}, P_std={c.p_std:g}, "
                f"sigma in [{c.sigma_min:g}, {c.sigma_max:g}], rho={c.rho:g}")
