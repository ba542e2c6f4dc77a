"""EDM (core.diffusion.edm, core.diffusion.edm_samplers): the preconditioning's closed forms,
the loss's minimiser on Gaussian data, the samplers' Gaussian oracle, and the config's kind.

Gaussian data x0 ~ N(mu, s^2) per pixel, noised x = x0 + sigma n: the ideal denoiser is
D*(x; sigma) = E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu). Through the preconditioning
it is the network output F* = (D* - c_skip x) / c_out. EDM's loss on F is the mean squared
error against (x0 - c_skip x) / c_out, whose expectation given x is F*: the loss's gradient
w.r.t. F vanishes at F* and only there.

The samplers with D* are affine in their start x_T = sigma_max z: the output is
mu + A (sigma_max z - mu), A from a scalar recursion written here independently of the
implementation (``_gain``), so the samples must have mean mu (1 - A) and std sigma_max A
(checked within 4.5 standard errors over 65,536 pixels), and that must be near (mu, s): the
rho = 7 grid's own discretisation error for this Gaussian (s = 0.8) is, in std, Heun-18
+4.8 %, DPM-Solver++(2M)-18 +5.8 %, Euler (ddim)-40 -6.3 %; each allowance sits just above.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.diffusion.edm import EDM, EDMConfig
from core.diffusion.process import Diffusion, DiffusionConfig, build_process, config_from_dict
from core.diffusion.edm_samplers import iter_dpmpp2m, iter_euler, iter_heun
from core.diffusion.registry import sampler_spec
from core.diffusion.samplers import iter_ddim, iter_ddpm, run_to_end

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MU, S, SD = -0.5, 0.8, 0.5
N = 65_536
SHAPE = (16, 1, 64, 64)


# -- closed forms ----------------------------------------------------------------------------


def _c(sigma: float) -> tuple[float, float, float]:
    """(c_skip, c_out, c_in) of EDM's Table 1, sigma_data 0.5."""
    return SD**2 / (sigma**2 + SD**2), sigma * SD / math.sqrt(sigma**2 + SD**2), 1 / math.sqrt(sigma**2 + SD**2)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 1.0, 80.0])
def test_preconditioning_closed_forms(sigma: float) -> None:
    edm = EDM()
    c_skip, c_out, c_in = _c(sigma)
    assert edm.c_skip(sigma) == pytest.approx(c_skip, rel=1e-12)
    assert edm.c_out(sigma) == pytest.approx(c_out, rel=1e-12)
    assert edm.c_in(sigma) == pytest.approx(c_in, rel=1e-12)
    assert edm.c_noise(sigma) == pytest.approx(math.log(sigma) / 4, rel=1e-12)
    assert edm.loss_weight(sigma) * c_out**2 == pytest.approx(1.0, rel=1e-12)  # the loss on F is uniform
    # net_time: affine in c_noise, sigma_min -> 0 and sigma_max -> 999, inverted exactly
    t = edm.net_time(torch.tensor([sigma], dtype=torch.float64))
    assert float(edm.sigma_from_net_time(t)) == pytest.approx(sigma, rel=1e-9)
    assert edm.net_time(0.002) == pytest.approx(0.0, abs=1e-9) and edm.net_time(80.0) == pytest.approx(999.0)
    assert _c(0.5)[0] == 0.5 and _c(0.5)[1] == pytest.approx(0.5 / math.sqrt(2))


def test_denoise_is_the_preconditioned_network() -> None:
    """D(x; sigma) = c_skip x + c_out F(c_in x; net_time(sigma)): with F* it is D*."""
    x = torch.linspace(-3, 3, 8, dtype=torch.float64).view(8, 1, 1, 1)
    for sigma in (0.05, 0.5, 7.0):
        d = EDM().denoise(GaussianOracleF(), x, torch.full((8,), sigma, dtype=torch.float64))
        assert torch.allclose(d.double(), MU + S**2 / (S**2 + sigma**2) * (x - MU), atol=1e-5)


def test_sigma_grid_is_edm_rho7() -> None:
    sig = EDM().sigmas(18)
    assert len(sig) == 19 and sig[-1] == 0.0
    assert sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002)
    expected = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)]
    assert sig[:-1] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="steps must be an integer"):
        EDM().sigmas(0)


class GaussianOracleF(nn.Module):
    """The network output F* realising D* through the preconditioning (closed forms above),
    times (1 + a) plus b, with a and b trainable scalars: at a = b = 0 it is F*. ``s`` lets a
    test use the ideal network of another data std (a wrong one)."""

    def __init__(self, s: float = S) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.s = s
        self.calls = 0

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        self.calls += 1
        sigma = EDM.sigma_from_net_time(t).view(-1, *([1] * (x_in.dim() - 1)))
        c_skip = SD**2 / (sigma**2 + SD**2)
        c_out = sigma * SD / (sigma**2 + SD**2).sqrt()
        x = x_in.double() * (sigma**2 + SD**2).sqrt()  # undo c_in
        d_star = MU + self.s**2 / (self.s**2 + sigma**2) * (x - MU)
        f_star = (d_star - c_skip * x) / c_out
        return f_star * (1 + self.a) + self.b


def _loss_gradient(model: GaussianOracleF, seed: int = 0) -> torch.Tensor:
    edm = EDM()
    gen = torch.Generator().manual_seed(seed)
    x0 = (MU + S * torch.randn((4096, 1, 8, 8), generator=gen, dtype=torch.float64))
    loss = edm.training_loss(model, x0, generator=gen)
    a, b = torch.autograd.grad(loss, [model.a, model.b])
    return torch.stack([a, b])


def test_loss_gradient_vanishes_at_the_ideal_denoiser_only() -> None:
    # 262,144 scalar terms, each gradient term of unit order: a standard error near 0.004
    at_ideal = _loss_gradient(GaussianOracleF())
    assert at_ideal.abs().max() < 0.02, at_ideal
    shifted = GaussianOracleF()
    with torch.no_grad():
        shifted.b.fill_(0.1)
    assert _loss_gradient(shifted)[1] == pytest.approx(0.2, abs=0.02)  # d/db of E(F* + b - target)^2 = 2b
    wrong_std = _loss_gradient(GaussianOracleF(s=0.6))  # the ideal network of other data
    assert wrong_std[0] < -0.05, wrong_std  # measured -0.084 (seed 0); the noise is near 0.005


def test_training_noise_is_log_normal_and_drawn_in_order() -> None:
    edm = EDM()
    x0 = torch.zeros(20_000, 1, 1, 1)
    sigma, noise = edm.draw_training_noise(x0, torch.Generator().manual_seed(3))
    assert sigma.shape == (20_000,) and noise.shape == x0.shape
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.03)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(sigma, (-1.2 + 1.2 * torch.randn(20_000, generator=gen)).exp())


# -- samplers: the Gaussian oracle -------------------------------------------------------------


def _grid(steps: int) -> list[float]:
    hi, lo = 80 ** (1 / 7), 0.002 ** (1 / 7)
    return [(hi + i / (steps - 1) * (lo - hi)) ** 7 for i in range(steps)] + [0.0]


def _gain(sampler: str, steps: int) -> float:
    """A with output - mu = A (x_T - mu) for D* (y = x - mu, D - mu = k y)."""
    sig, y, prev = _grid(steps), 1.0, None
    k = lambda s: S**2 / (S**2 + s**2)  # noqa: E731
    for i, (s, s2) in enumerate(zip(sig[:-1], sig[1:])):
        den = k(s) * y
        if s2 == 0:
            return den
        if sampler == "ddim":
            y = den + s2 / s * (y - den)
        elif sampler == "heun":
            d = (y - den) / s
            ye = y + (s2 - s) * d
            y = y + (s2 - s) * (d + (ye - k(s2) * ye) / s2) / 2
        else:  # dpmpp2m, in lambda = -log sigma
            h = math.log(s / s2)
            dd = den if prev is None else (1 + h / (2 * math.log(sig[i - 1] / s))) * den - h / (2 * math.log(sig[i - 1] / s)) * prev
            prev = den
            y = s2 / s * y - math.expm1(-h) * dd
    raise AssertionError("the grid ends at 0")


SAMPLERS = {"heun": iter_heun, "ddim": iter_euler, "dpmpp2m": iter_dpmpp2m}


def test_the_registry_names_these_for_edm() -> None:
    for name, fn in SAMPLERS.items():
        assert sampler_spec(name).resolve("edm") is fn


@pytest.mark.parametrize("sampler,steps,std_allow,calls", [("heun", 18, 0.055, 35), ("dpmpp2m", 18, 0.065, 18),
                                                           ("ddim", 40, 0.07, 40)])
def test_oracle_gaussian_edm(sampler: str, steps: int, std_allow: float, calls: int) -> None:
    model = GaussianOracleF()
    x = run_to_end(SAMPLERS[sampler](model, EDM(), SHAPE, steps=steps, seed=1234, clip_x0=False)).double()
    assert model.calls == calls  # Heun: 2 a step but the last
    gain = _gain(sampler, steps)
    exp_mean, exp_std = MU * (1 - gain), 80.0 * gain
    # 1. exactly this sampler (4.5 standard errors)
    assert abs(x.mean().item() - exp_mean) <= 4.5 * exp_std / math.sqrt(N)
    assert abs(x.std().item() - exp_std) <= 4.5 * exp_std / math.sqrt(2 * (N - 1))
    # 2. the data's distribution, up to the grid's known discretisation error
    assert abs(exp_mean - MU) < 0.01
    assert abs(exp_std - S) <= std_allow * S
    assert x.min().item() < -1.0  # clip_x0 off: nothing clipped


def test_guidance_guides_the_denoiser() -> None:
    """Classifier-free guidance on EDM: D_u + g (D_c - D_u), from one batched call."""

    class Labelled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.null_label = 2
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x, t, labels=None):
            shift = torch.where(labels == 2, 0.0, 0.1 * (labels.float() + 1)).view(-1, 1, 1, 1)
            return x * 0.5 + shift

    edm, shape = EDM(), (2, 1, 2, 2)
    lab = torch.tensor([0, 1])
    guided = run_to_end(iter_euler(Labelled(), edm, shape, steps=1, seed=5, labels=lab, guidance=3.0, clip_x0=False))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 80.0
    c_skip, c_out, c_in = _c(80.0)
    d_u = c_skip * x + c_out * (c_in * x * 0.5)
    d_c = d_u + c_out * 0.1 * (lab.float() + 1).view(-1, 1, 1, 1)
    assert torch.allclose(guided, d_u + 3.0 * (d_c - d_u), atol=1e-4)


def test_ddpm_and_eta_are_refused_for_edm() -> None:
    with pytest.raises(ValueError, match="EDM model.*ddim or dpmpp2m or heun"):
        sampler_spec("ddpm").resolve("edm")
    for fn in (iter_ddpm, iter_ddim):  # the VP samplers refuse an EDM process
        with pytest.raises(ValueError, match="samples a VP model"):
            fn(GaussianOracleF(), EDM(), SHAPE)
    with pytest.raises(ValueError, match="eta must be 0"):
        iter_euler(GaussianOracleF(), EDM(), SHAPE, steps=2, eta=0.5)


# -- the config's kind -------------------------------------------------------------------------


def test_config_kind_old_dicts_read_as_vp() -> None:
    old = {"T": 1000, "schedule": "linear", "prediction": "eps"}  # written before EDM: no kind
    assert config_from_dict(old) == DiffusionConfig()
    assert isinstance(build_process(config_from_dict(old)), Diffusion)
    assert config_from_dict({**old, "kind": "vp"}) == DiffusionConfig()
    edm = EDMConfig()
    assert config_from_dict(edm.to_dict()) == edm and edm.to_dict()["kind"] == "edm"
    assert isinstance(build_process(edm), EDM)
    with pytest.raises(ValueError, match="unknown diffusion kind 'xx'"):
        config_from_dict({"kind": "xx"})
    with pytest.raises(ValueError, match="unknown EDM config key.*T"):
        config_from_dict({"kind": "edm", "T": 10})
    with pytest.raises(ValueError, match="sigma_min"):
        EDMConfig(sigma_min=100.0)
