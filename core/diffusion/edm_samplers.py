"""The ODE samplers of an EDM model (core.diffusion.edm), under the names users already
type: the registry's ``SamplerSpec.edm_function`` maps ``ddim``, ``dpmpp2m`` and ``heun`` to
:func:`iter_euler`, :func:`iter_dpmpp2m` and :func:`iter_heun` here, and
core.diffusion.sampling.generate picks them for an EDM model (``ddpm``, which walks a VP
model's T discrete steps, is refused in one line). They share core.diffusion.samplers'
driver: arguments, the generator, guidance batching, SampleSteps.

All three integrate EDM's probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
(Karras et al. 2022, eq. 4 with s = 1, sigma(t) = t) deterministically over
``EDM.sigmas(steps)``: ``steps`` sigmas on the rho = 7 grid from sigma_max to sigma_min, then
0, starting from x ~ N(0, sigma_max^2 I). D is the preconditioned denoiser; classifier-free
guidance mixes the network outputs F of the conditional and unconditional halves, and D is
affine in F with the same coefficients for both, so that is guiding D. ``clip_x0`` clips D
to [-1, 1] (the images' range) before a step uses it.

- ``heun`` (EDM Algorithm 1, deterministic): an Euler step, then the slope at its end point
  averaged with the first; the last step (to sigma = 0) is Euler. 2 * steps - 1 model calls.
- ``ddim``: the Euler step, x' = D + (sigma' / sigma) (x - D): exactly DDIM's deterministic
  update in these coordinates. eta > 0 is refused (no stochastic EDM sampler here).
- ``dpmpp2m``: DPM-Solver++(2M) in lambda = -log sigma, as k-diffusion's
  sample_dpmpp_2m: x' = (sigma' / sigma) x - expm1(-h) D~ with h = lambda' - lambda and
  D~ = (1 + 1/(2r)) D - 1/(2r) D_prev, r = h_prev / h (first step and last step: D~ = D).

Each yields one SampleStep per step with ``t`` the step index (0 .. steps - 1).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from core.diffusion.edm import EDM
from core.diffusion.registry import SAMPLER_SPECS
from core.diffusion.samplers import SampleStep, _drive


def _denoiser(edm: EDM, net: Callable, clip_x0: bool) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """D(x; sigma) from the sampler's (guided) network call."""

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = net(edm.c_in(sigma) * x, edm.net_time(sigma))
        d = edm.c_skip(sigma) * x + edm.c_out(sigma) * out
        return d.clamp(-1.0, 1.0) if clip_x0 else d

    return denoise


def _run(model: nn.Module, edm: EDM, shape: Sequence[int], sigmas: list[float], step_rule: Callable,
         clip_x0: bool, common: dict[str, Any]) -> Iterator[SampleStep]:
    """Drive ``step_rule(x, D, sigma, sigma_next, index) -> (x_next, D(x; sigma))`` over the grid."""

    def rule(x, index, nxt, net, noise):
        return step_rule(x, _denoiser(edm, net, clip_x0), sigmas[index], sigmas[index + 1], index)

    return _drive(model, edm, shape, list(range(len(sigmas) - 1)), rule, start_scale=sigmas[0], **common)


def iter_heun(model: nn.Module, edm: EDM, shape: Sequence[int], *, steps: int = SAMPLER_SPECS["heun"].default_steps,
              clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """EDM Algorithm 1 (deterministic Heun) over ``steps`` sigmas."""

    def step(x, denoise, sigma, sigma_next, index):
        x0 = denoise(x, sigma)
        if sigma_next == 0:
            return x0, x0  # Euler to sigma = 0 lands on D
        d = (x - x0) / sigma
        x_euler = x + (sigma_next - sigma) * d
        d_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
        return x + (sigma_next - sigma) * 0.5 * (d + d_next), x0

    return _run(model, edm, shape, edm.sigmas(steps, "Heun"), step, clip_x0, common)


def iter_euler(model: nn.Module, edm: EDM, shape: Sequence[int], *, steps: int = SAMPLER_SPECS["ddim"].default_steps,
               eta: float = 0.0, clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """Euler on the probability-flow ODE (DDIM at eta 0) over ``steps`` sigmas."""
    if float(eta) != 0.0:
        raise ValueError(f"ddim on an EDM model is deterministic: eta must be 0, got {eta!r}")

    def step(x, denoise, sigma, sigma_next, index):
        x0 = denoise(x, sigma)
        return x0 + (sigma_next / sigma) * (x - x0), x0

    return _run(model, edm, shape, edm.sigmas(steps, "DDIM"), step, clip_x0, common)


def iter_dpmpp2m(model: nn.Module, edm: EDM, shape: Sequence[int], *,
                 steps: int = SAMPLER_SPECS["dpmpp2m"].default_steps,
                 clip_x0: bool = True, **common: Any) -> Iterator[SampleStep]:
    """DPM-Solver++(2M) in lambda = -log sigma (k-diffusion's form) over ``steps`` sigmas."""
    sigmas = edm.sigmas(steps, "DPM-Solver++")
    memory: dict[str, Any] = {"x0": None}

    def step(x, denoise, sigma, sigma_next, index):
        x0 = denoise(x, sigma)
        if sigma_next == 0:
            return x0, x0
        h = math.log(sigma / sigma_next)  # lambda' - lambda
        d = x0
        if memory["x0"] is not None:
            h_last = math.log(sigmas[index - 1] / sigma)
            k = h / (2.0 * h_last)  # 1 / (2r)
            d = (1.0 + k) * x0 - k * memory["x0"]
        memory["x0"] = x0
        return (sigma_next / sigma) * x - math.expm1(-h) * d, x0

    return _run(model, edm, shape, sigmas, step, clip_x0, common)
