"""The forward process, its posterior, and the training loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.schedules import make_betas


def _ab64(schedule: str, T: int) -> torch.Tensor:
    return torch.cumprod(1 - make_betas(schedule, T), 0)


# -- config and buffers -------------------------------------------------------------------


def test_config_round_trip_and_errors() -> None:
    cfg = DiffusionConfig(T=250, schedule="cosine")
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict() == {"T": 250, "schedule": "cosine", "prediction": "eps", "loss_weighting": "uniform",
                             "min_snr_gamma": 5.0, "zero_terminal_snr": False, "kind": "vp"}
    with pytest.raises(ValueError, match="unknown diffusion config key.*bogus"):
        DiffusionConfig.from_dict({"T": 10, "bogus": 1})
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*linear, cosine, sigmoid"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ValueError, match="positive integer"):
        DiffusionConfig(T=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_tensors_are_float32_non_persistent_buffers(schedule: str) -> None:
    d = Diffusion(DiffusionConfig(T=100, schedule=schedule))
    assert list(d.parameters()) == []
    assert d.state_dict() == {}  # rebuilt from the config, never saved or averaged
    names = dict(d.named_buffers())
    for name in ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert names[name].dtype == torch.float32
        assert names[name].shape == (100,)
    ab = _ab64(schedule, 100)
    assert torch.allclose(d.alpha_bars.double(), ab, rtol=1e-6, atol=0)
    assert d.alpha_bars_prev[0].item() == 1.0
    assert torch.equal(d.alpha_bars_prev[1:], d.alpha_bars[:-1])
    assert d.T == 100 and d.config.schedule == schedule


# -- forward process ----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_q_sample_moments(schedule: str, t: int) -> None:
    d = Diffusion(DiffusionConfig(T=1000, schedule=schedule))
    gen = torch.Generator().manual_seed(t)
    x0 = torch.tensor([-0.9, 0.3, 0.7, 1.0]).reshape(1, 1, 2, 2)
    n = 50_000
    noise = torch.randn((n, 1, 2, 2), generator=gen)
    x_t = d.q_sample(x0.expand(n, -1, -1, -1), torch.full((n,), t), noise).double()
    ab = _ab64(schedule, 1000)[t].item()
    mean, var = x_t.mean(0).flatten(), x_t.var(0).flatten()
    exp_mean, exp_var = math.sqrt(ab) * x0.double().flatten(), 1 - ab
    # 5 standard errors: mean SE = sqrt(var/n); variance SE = var*sqrt(2/(n-1)).
    assert torch.all((mean - exp_mean).abs() <= 5 * math.sqrt(exp_var / n) + 1e-6)
    assert torch.all((var - exp_var).abs() <= 5 * exp_var * math.sqrt(2 / (n - 1)))


def test_q_sample_never_clamps() -> None:
    d = Diffusion(DiffusionConfig(T=1000))
    x0 = torch.ones(2, 3, 4, 4)
    x_t = d.q_sample(x0, torch.tensor([500, 999]), torch.full_like(x0, 3.0))
    assert x_t.max().item() > 2.5  # the original clamped x_t to [-1, 1]


@pytest.mark.parametrize("shape", [(3, 5), (3, 1, 4), (3, 2, 4, 4), (3, 2, 2, 2, 2)])
def test_coefficients_broadcast_over_any_rank(shape: tuple[int, ...]) -> None:
    d = Diffusion(DiffusionConfig(T=50))
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 20, 49])
    x_t = d.q_sample(x0, t, noise)
    for i in range(3):
        ab = d.alpha_bars[t[i]]
        assert torch.allclose(x_t[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * noise[i], atol=1e-6)
    # a scalar t applies to the whole batch
    assert torch.allclose(d.q_sample(x0, 7, noise), d.q_sample(x0, torch.full((3,), 7), noise))
    with pytest.raises(ValueError, match="t must have shape"):
        d.q_sample(x0, torch.tensor([1, 2]), noise)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_x0_eps_round_trip(schedule: str) -> None:
    d = Diffusion(DiffusionConfig(T=1000, schedule=schedule))
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand((8, 3, 4, 4), generator=gen) * 2 - 1
    eps = torch.randn((8, 3, 4, 4), generator=gen)
    t = torch.tensor([0, 1, 5, 100, 400, 700, 900, 998])
    x_t = d.q_sample(x0, t, eps)
    assert torch.allclose(d.predict_x0_from_eps(x_t, t, eps), x0, atol=2e-3)
    assert torch.allclose(d.predict_eps_from_x0(x_t, t, x0), eps, atol=2e-3)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_posterior_matches_gaussian_conditioning(schedule: str) -> None:
    """q(x_{t-1} | x_t, x0) from conditioning the joint Gaussian of (x_{t-1}, x_t) given x0."""
    T = 1000
    d = Diffusion(DiffusionConfig(T=T, schedule=schedule))
    ab = _ab64(schedule, T)
    gen = torch.Generator().manual_seed(5)
    t = torch.tensor([1, 2, 50, 300, 600, 999])
    x0 = torch.rand((6, 1, 3, 3), generator=gen, dtype=torch.float64) * 2 - 1
    x_t = torch.randn((6, 1, 3, 3), generator=gen, dtype=torch.float64)
    mean, var, log_var = d.to(torch.float64).q_posterior(x0, x_t, t)
    for i, ti in enumerate(t.tolist()):
        a_t, a_prev = ab[ti].item(), ab[ti - 1].item()
        alpha = a_t / a_prev
        # Cov(x_{t-1}, x_t | x0) = sqrt(alpha_t) (1 - ab_{t-1}); Var(x_t | x0) = 1 - ab_t
        cov, var_t = math.sqrt(alpha) * (1 - a_prev), 1 - a_t
        exp_mean = math.sqrt(a_prev) * x0[i] + cov / var_t * (x_t[i] - math.sqrt(a_t) * x0[i])
        exp_var = (1 - a_prev) - cov * cov / var_t
        assert torch.allclose(mean[i], exp_mean, rtol=1e-6, atol=1e-6)
        assert var[i].item() == pytest.approx(exp_var, rel=1e-5)
        assert log_var[i].item() == pytest.approx(math.log(exp_var), abs=1e-5)


def test_posterior_at_t0() -> None:
    d = Diffusion(DiffusionConfig(T=1000))
    x0, x_t = torch.full((1, 1, 2, 2), 0.25), torch.full((1, 1, 2, 2), 0.9)
    mean, var, log_var = d.q_posterior(x0, x_t, torch.tensor([0]))
    # at t = 0 the posterior collapses onto x0 (variance 0); the log is clipped to the t = 1 value
    assert torch.allclose(mean, x0, atol=1e-6)
    assert var.item() == 0.0
    assert log_var.item() == pytest.approx(math.log(d.posterior_variance[1].item()), rel=1e-5)


def test_single_step_diffusion_is_valid() -> None:
    d = Diffusion(DiffusionConfig(T=1, schedule="cosine"))
    assert torch.isfinite(d.posterior_log_variance_clipped).all()


# -- training loss --------------------------------------------------------------------------


class _RecordingZeroModel(nn.Module):
    """Predicts eps = 0 and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.detach().clone(), t.clone(), labels))
        return torch.zeros_like(x) + self.bias


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_training_loss_is_mse_on_the_true_noise(schedule: str) -> None:
    d = Diffusion(DiffusionConfig(T=1000, schedule=schedule)).to(torch.float64)
    model = _RecordingZeroModel().double()
    x0 = (torch.rand((16, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1)
    labels = torch.arange(16)
    loss = d.training_loss(model, x0, labels, generator=torch.Generator().manual_seed(1))
    (x_t, t, seen_labels), = model.calls
    assert seen_labels is labels
    assert t.dtype == torch.long and t.shape == (16,)
    sab, s1m = d.sqrt_alpha_bars[t].reshape(-1, 1, 1, 1), d.sqrt_one_minus_alpha_bars[t].reshape(-1, 1, 1, 1)
    noise = (x_t - sab * x0) / s1m  # the noise the loss used
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-6)  # loss is float32
    loss.backward()
    assert model.bias.grad is not None  # gradient reaches the model


def test_training_loss_reproducible_with_generator_and_t_uniform() -> None:
    T = 10
    d = Diffusion(DiffusionConfig(T=T))
    model = _RecordingZeroModel()
    x0 = torch.zeros(4000, 1, 1, 1)
    a = d.training_loss(model, x0, generator=torch.Generator().manual_seed(7))
    b = d.training_loss(model, x0, generator=torch.Generator().manual_seed(7))
    c = d.training_loss(model, x0, generator=torch.Generator().manual_seed(8))
    assert a.item() == b.item() != c.item()
    assert torch.equal(model.calls[0][1], model.calls[1][1])
    t = torch.cat([call[1] for call in model.calls])
    counts = torch.bincount(t, minlength=T).double()
    n, p = t.numel(), 1 / T
    assert t.min().item() == 0 and t.max().item() == T - 1
    assert torch.all((counts - n * p).abs() <= 5 * math.sqrt(n * p * (1 - p)))


def test_training_loss_does_not_clamp_x_t() -> None:
    d = Diffusion(DiffusionConfig(T=1000))
    model = _RecordingZeroModel()
    d.training_loss(model, torch.ones(64, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    assert model.calls[0][0].abs().max().item() > 1.5


def test_training_loss_rejects_wrong_model_output() -> None:
    d = Diffusion(DiffusionConfig(T=10))
    with pytest.raises(ValueError, match=r"model returned shape \(2, 1, 4, 4\), expected \(2, 3, 4, 4\)"):
        d.training_loss(lambda x, t, labels=None: x[:, :1], torch.zeros(2, 3, 4, 4))


# -- targets (eps / x0 / v), weighting, zero terminal SNR -----------------------------------

from core.diffusion.process import LOSS_WEIGHTINGS, PREDICTIONS  # noqa: E402

TARGET_CONFIGS = [(p, w, z) for p in PREDICTIONS for w in LOSS_WEIGHTINGS for z in (False, True)
                  if not (z and p == "eps")]


def test_old_configs_load_as_before() -> None:
    cfg = DiffusionConfig.from_dict({"T": 100, "schedule": "linear"})
    assert (cfg.prediction, cfg.loss_weighting, cfg.zero_terminal_snr) == ("eps", "uniform", False)
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("field,value,match", [
    ("prediction", "score", "unknown prediction 'score'; known predictions: eps, x0, v"),
    ("loss_weighting", "p2", "unknown loss weighting 'p2'; known loss weightings: uniform, min_snr"),
    ("min_snr_gamma", 0, "min_snr_gamma must be a positive number"),
    ("min_snr_gamma", float("nan"), "min_snr_gamma must be a positive number"),
    ("zero_terminal_snr", "yes", "zero_terminal_snr must be true or false"),
])
def test_new_fields_are_validated(field: str, value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**{field: value})


def test_zero_terminal_snr_refuses_eps_prediction() -> None:
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction 'v' or 'x0'"):
        DiffusionConfig(zero_terminal_snr=True)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_zero_terminal_snr_gives_alpha_bar_T_zero(schedule: str) -> None:
    d = Diffusion(DiffusionConfig(T=100, schedule=schedule, prediction="v", zero_terminal_snr=True))
    assert d.alpha_bars[-1].item() == 0.0 and d.sqrt_alpha_bars[-1].item() == 0.0
    assert d.sqrt_one_minus_alpha_bars[-1].item() == 1.0
    x_t = torch.randn(2, 3, 4, 4)
    x0 = torch.rand(2, 3, 4, 4)
    assert torch.equal(d.q_sample(x0, torch.tensor([99, 99]), x_t), x_t)  # pure noise
    # every conversion the samplers use stays finite at alpha_bar = 0
    for t in (99, torch.tensor([99, 99])):
        v = d.v_from_x0_eps(x0, t, x_t)
        assert torch.equal(v, -x0)
        assert torch.isfinite(d.predict_eps_from_x0(x_t, t, x0)).all()
        assert torch.allclose(d.predict_x0_from_v(x_t, t, v), x0) and torch.allclose(d.predict_eps_from_v(x_t, t, v), x_t)
        mean, var, _ = d.q_posterior(x0, x_t, t)
        assert torch.isfinite(mean).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("prediction,zero_snr", [(p, z) for p in PREDICTIONS for z in (False, True)
                                                 if not (z and p == "eps")])
def test_conversions_between_targets_round_trip_exactly(schedule: str, zero_snr: bool, prediction: str) -> None:
    """(x0, eps) -> (x_t, target) -> (x0, eps) to float64 rounding at int timesteps (float64
    coefficients), and the tensor-timestep path (float32 buffers) agrees with it."""
    cfg = DiffusionConfig(T=1000, schedule=schedule, prediction=prediction, zero_terminal_snr=zero_snr)
    d = Diffusion(cfg).double()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand((8, 3, 4, 4), generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn((8, 3, 4, 4), generator=gen, dtype=torch.float64)
    for t in [0, 1, 5, 100, 400, 700, 998, 999]:
        sab, s1m = d.coef("sqrt_alpha_bars", t, x0), d.coef("sqrt_one_minus_alpha_bars", t, x0)
        if prediction == "eps" and sab < 1e-3:
            continue  # x0 from eps divides by sqrt(ab): ill-conditioned at the noisiest steps
        x_t = d.q_sample(x0, t, eps)
        out = d.training_target(x0, t, eps)
        got_x0, got_eps = d.model_x0_eps(x_t, t, out)
        tol = 1e-13 / min(s1m, sab if prediction == "eps" else 1.0)
        assert torch.allclose(got_x0, x0, rtol=0, atol=tol), (t, (got_x0 - x0).abs().max())
        assert torch.allclose(got_eps, eps, rtol=0, atol=tol), (t, (got_eps - eps).abs().max())
        assert torch.allclose(d.v_from_x0_eps(x0, t, eps), sab * eps - s1m * x0, rtol=0, atol=1e-15)
        tt = torch.full((8,), t)
        assert torch.allclose(d.training_target(x0, tt, eps), out, rtol=0, atol=1e-6)


def _posterior_var_of_target(prediction: str, ab: torch.Tensor, s: float) -> torch.Tensor:
    """Var(target | x_t) for data N(mu, s^2): what the ideal predictor cannot remove."""
    denom = ab * s * s + 1 - ab
    return {"eps": ab * s * s / denom, "x0": s * s * (1 - ab) / denom, "v": s * s / denom}[prediction]


class _IdealPredictor(nn.Module):
    """E[target | x_t] for data N(mu, s^2) per pixel, in float64."""

    def __init__(self, d: Diffusion, mu: float, s: float) -> None:
        super().__init__()
        self.d, self.mu, self.s = d, mu, s
        self.ab = Diffusion.schedule_float64(d.config)["alpha_bars"]

    def forward(self, x, t, labels=None):
        ab = self.ab[t].reshape(-1, *([1] * (x.dim() - 1)))
        x = x.double()
        denom = ab * self.s**2 + 1 - ab
        x0 = self.mu + ab.sqrt() * self.s**2 * (x - ab.sqrt() * self.mu) / denom
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / denom
        return {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.d.prediction]


@pytest.mark.parametrize("prediction,weighting,zero_snr", TARGET_CONFIGS)
def test_ideal_predictor_loss_is_the_closed_form(prediction: str, weighting: str, zero_snr: bool) -> None:
    T, mu, s, n = 20, 0.3, 0.5, 400_000
    cfg = DiffusionConfig(T=T, schedule="cosine", prediction=prediction, loss_weighting=weighting,
                          min_snr_gamma=2.0, zero_terminal_snr=zero_snr)
    d = Diffusion(cfg).double()
    gen = torch.Generator().manual_seed(17)
    x0 = mu + s * torch.randn((n, 1, 1, 1), generator=gen, dtype=torch.float64)
    loss = d.training_loss(_IdealPredictor(d, mu, s), x0, generator=gen).item()

    ab = Diffusion.schedule_float64(cfg)["alpha_bars"]
    snr = ab / (1 - ab)
    var = _posterior_var_of_target(prediction, ab, s)
    x0_var = _posterior_var_of_target("x0", ab, s)

    def expected(weighting: str):
        if weighting == "uniform":
            w = torch.ones_like(snr)
        else:  # Hang et al.: min(snr, gamma) times the x0 error, whatever the target
            w = snr.clamp(max=2.0) * x0_var / var
        return (w * var).mean().item(), ((3 * (w * var) ** 2).mean() - (w * var).mean() ** 2).item()

    mean, second = expected(weighting)
    se = math.sqrt(second / n)
    assert abs(loss - mean) <= 5 * se, (loss, mean, se)
    other, _ = expected("min_snr" if weighting == "uniform" else "uniform")
    assert abs(other - mean) > 10 * se  # the test tells the two weightings apart
