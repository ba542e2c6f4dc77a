"""Beta (noise) schedules by name, computed in float64.

``linear``: betas evenly spaced from 1e-4 to 0.02, the original's default. Like the original, the
endpoints do not scale with T: any T gets 1e-4..0.02 (so a small T adds little noise in
total; use T near 1000 or the cosine schedule when T is small).

``cosine``: Nichol & Dhariwal (2021), alpha_bar(t) = f(t) / f(0) with
f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2, s = 0.008; each beta is
1 - alpha_bar(t + 1) / alpha_bar(t), capped at 0.999 to avoid a singular last step.

``sigmoid``: Jabri et al. (2023), as in lucidrains' denoising-diffusion-pytorch:
alpha_bar(t) = (sigmoid(e / tau) - sigmoid((t / T (e - s) + s) / tau)) / (sigmoid(e / tau) -
sigmoid(s / tau)) with s = -3, e = 3, tau = 1 (so alpha_bar(0) = 1 and alpha_bar(T) = 0); each
beta is 1 - alpha_bar(t + 1) / alpha_bar(t), capped at 0.999 like the cosine schedule.

``zero_terminal_snr`` (Lin et al. 2024, Alg. 1) rescales any schedule so that
sqrt(alpha_bar) is shifted and scaled to end at exactly 0 while keeping its first value:
the last step is then pure noise (alpha_bar_T = 0, beta_T = 1). A model must then predict
v or x0; eps alone cannot say anything about the image at t = T.
"""

from __future__ import annotations

import math

import torch

from core.diffusion.registry import SCHEDULE_NAMES, check_implemented

SCHEDULES: tuple[str, ...] = SCHEDULE_NAMES  # declared in the registry, with their help

LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
COSINE_S = 0.008
SIGMOID_START, SIGMOID_END, SIGMOID_TAU = -3.0, 3.0, 1.0
MAX_BETA = 0.999


def linear_betas(T: int) -> torch.Tensor:
    return torch.linspace(LINEAR_BETA_START, LINEAR_BETA_END, T, dtype=torch.float64)


def cosine_alpha_bar(t: torch.Tensor, T: int, s: float = COSINE_S) -> torch.Tensor:
    """The continuous cosine alpha_bar at (possibly fractional) times t in [0, T]."""
    f = torch.cos(((t.to(torch.float64) / T + s) / (1 + s)) * (math.pi / 2)) ** 2
    f0 = math.cos((s / (1 + s)) * (math.pi / 2)) ** 2
    return f / f0


def sigmoid_alpha_bar(t: torch.Tensor, T: int, start: float = SIGMOID_START, end: float = SIGMOID_END,
                      tau: float = SIGMOID_TAU) -> torch.Tensor:
    """The continuous sigmoid alpha_bar at times t in [0, T] (1 at t = 0, 0 at t = T)."""
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()
    u = t.to(torch.float64) / T
    return (v_end - ((u * (end - start) + start) / tau).sigmoid()) / (v_end - v_start)


def _betas_from_alpha_bar(ab: torch.Tensor, max_beta: float) -> torch.Tensor:
    return (1.0 - ab[1:] / ab[:-1]).clamp(min=0.0, max=max_beta)


def cosine_betas(T: int, s: float = COSINE_S, max_beta: float = MAX_BETA) -> torch.Tensor:
    return _betas_from_alpha_bar(cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64), T, s), max_beta)


def sigmoid_betas(T: int, max_beta: float = MAX_BETA) -> torch.Tensor:
    return _betas_from_alpha_bar(sigmoid_alpha_bar(torch.arange(T + 1, dtype=torch.float64), T), max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), Algorithm 1: the same schedule shape with alpha_bar_T = 0 exactly."""
    sqrt_ab = torch.cumprod(1.0 - betas.to(torch.float64), 0).sqrt()
    first, last = sqrt_ab[0].item(), sqrt_ab[-1].item()
    if len(sqrt_ab) < 2 or first == last:
        raise ValueError("zero terminal SNR needs a schedule with at least 2 distinct steps")
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    alphas[-1] = 0.0  # exactly, whatever the rounding of the subtraction above
    return 1.0 - alphas


BETAS = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}  # name -> betas(T)
check_implemented("schedules", SCHEDULES, BETAS)


def make_betas(name: str, T: int, zero_terminal_snr: bool = False) -> torch.Tensor:
    """Betas of schedule ``name`` for ``T`` steps: float64 tensor of shape (T,)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T must be a positive integer, got {T!r}")
    if name not in BETAS:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
    betas = BETAS[name](T)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas
