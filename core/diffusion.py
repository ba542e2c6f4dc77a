"""The forward (noising) process, its posterior, and the training objective.

All schedule tensors are computed in float64 and registered as float32 buffers with
``persistent=False``: they follow ``.to(device)`` but are never trained, never saved in a
state_dict and never part of an EMA (they are rebuilt from ``DiffusionConfig``).

Unlike the seed, x_t is never clamped: q(x_t | x0) is Gaussian and clamping it changes the
distribution the network is trained on and the one the sampler walks through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.schedules import SCHEDULES, make_betas

ModelFn = Callable[..., torch.Tensor]


@dataclass
class DiffusionConfig:
    T: int = 1000
    schedule: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"diffusion T must be a positive integer, got {self.T!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; known schedules: {', '.join(SCHEDULES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        if not isinstance(data, dict):
            raise ValueError(f"diffusion config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown diffusion config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


class Diffusion(nn.Module):
    """Gaussian diffusion with a fixed beta schedule (Ho et al. 2020)."""

    # Declared for type checkers; registered as buffers in __init__.
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    alpha_bars_prev: torch.Tensor
    sqrt_alpha_bars: torch.Tensor
    sqrt_one_minus_alpha_bars: torch.Tensor
    sqrt_recip_alpha_bars: torch.Tensor
    sqrt_recipm1_alpha_bars: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DiffusionConfig()
        self.T = self.config.T
        for name, value in self.schedule_float64(self.config).items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    @staticmethod
    def schedule_float64(config: DiffusionConfig) -> dict[str, torch.Tensor]:
        """Every per-timestep coefficient, in float64 (the samplers use these directly)."""
        betas = make_betas(config.schedule, config.T)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        one_minus = 1.0 - alpha_bars
        posterior_variance = betas * (1.0 - alpha_bars_prev) / one_minus
        # The variance is 0 at t = 0; like Ho et al., the log uses the t = 1 value there.
        first = posterior_variance[1:2] if config.T > 1 else betas[:1]
        posterior_log_variance_clipped = torch.log(torch.cat([first, posterior_variance[1:]]))
        return {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sqrt_one_minus_alpha_bars": one_minus.sqrt(),
            "sqrt_recip_alpha_bars": alpha_bars.rsqrt(),
            "sqrt_recipm1_alpha_bars": (1.0 / alpha_bars - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * alpha_bars_prev.sqrt() / one_minus,
            "posterior_mean_coef2": (1.0 - alpha_bars_prev) * alphas.sqrt() / one_minus,
        }

    # -- helpers -------------------------------------------------------------------------

    def _gather(self, buf: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """buf[t] shaped (B, 1, 1, ...) so it broadcasts over x of any rank."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t)
        t = t.to(device=buf.device, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")
        out = buf.gather(0, t)
        return out.to(x.device).reshape(x.shape[0], *([1] * (x.dim() - 1)))

    # -- forward process -----------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. Not clamped."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            self._gather(self.sqrt_alpha_bars, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alpha_bars, t, x0) * noise
        )

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            self._gather(self.sqrt_recip_alpha_bars, t, x_t) * x_t
            - self._gather(self.sqrt_recipm1_alpha_bars, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (
            self._gather(self.sqrt_recip_alpha_bars, t, x_t) * x_t - x0
        ) / self._gather(self.sqrt_recipm1_alpha_bars, t, x_t)

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
        mean = (
            self._gather(self.posterior_mean_coef1, t, x_t) * x0
            + self._gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._gather(self.posterior_variance, t, x_t)
        log_variance = self._gather(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- training objective --------------------------------------------------------------

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.T, (batch,), device=device, generator=generator)

    def training_loss(
        self,
        model: ModelFn,
        x0: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Simple DDPM loss: MSE between the true noise and model(x_t, t, labels).

        t ~ U{0..T-1} and noise ~ N(0, I), both drawn with ``generator`` (which must live on
        x0's device) when one is given. The loss is computed in float32 even when the model
        runs under autocast.
        """
        if generator is not None and generator.device.type != x0.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the batch is on {x0.device}; "
                "create the generator on the batch's device"
            )
        t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        pred = model(x_t, t, labels)
        if pred.shape != noise.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(noise.shape)}")
        return F.mse_loss(pred.float(), noise.float())

    def extra_repr(self) -> str:
        return f"T={self.T}, schedule={self.config.schedule!r}"

