"""Beta (noise) schedules by name, computed in float64.

``linear``: betas evenly spaced from 1e-4 to 0.02, the seed's default. Like the seed, the
endpoints do not scale with T: any T gets 1e-4..0.02 (so a small T adds little noise in
total; use T near 1000 or the cosine schedule when T is small).

``cosine``: Nichol & Dhariwal (2021), alpha_bar(t) = f(t) / f(0) with
f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2, s = 0.008; each beta is
1 - alpha_bar(t + 1) / alpha_bar(t), capped at 0.999 to avoid a singular last step.
"""

from __future__ import annotations

import math

import torch

SCHEDULES: tuple[str, ...] = ("linear", "cosine")

LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
COSINE_S = 0.008
MAX_BETA = 0.999


def linear_betas(T: int) -> torch.Tensor:
    return torch.linspace(LINEAR_BETA_START, LINEAR_BETA_END, T, dtype=torch.float64)


def cosine_alpha_bar(t: torch.Tensor, T: int, s: float = COSINE_S) -> torch.Tensor:
    """The continuous cosine alpha_bar at (possibly fractional) times t in [0, T]."""
    f = torch.cos(((t.to(torch.float64) / T + s) / (1 + s)) * (math.pi / 2)) ** 2
    f0 = math.cos((s / (1 + s)) * (math.pi / 2)) ** 2
    return f / f0


def cosine_betas(T: int, s: float = COSINE_S, max_beta: float = MAX_BETA) -> torch.Tensor:
    steps = torch.arange(T + 1, dtype=torch.float64)
    ab = cosine_alpha_bar(steps, T, s)
    betas = 1.0 - ab[1:] / ab[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def make_betas(name: str, T: int) -> torch.Tensor:
    """Betas of schedule ``name`` for ``T`` steps: float64 tensor of shape (T,)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T must be a positive integer, got {T!r}")
    if name == "linear":
        return linear_betas(T)
    if name == "cosine":
        return cosine_betas(T)
    raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
