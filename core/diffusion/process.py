"""The forward (noising) process, its posterior, and the training objective.

All schedule tensors are computed in float64 and registered as float32 buffers with
``persistent=False``: they follow ``.to(device)`` but are never trained, never saved in a
state_dict and never part of an EMA (they are rebuilt from ``DiffusionConfig``).

Unlike the original, x_t is never clamped: q(x_t | x0) is Gaussian and clamping it changes the
distribution the network is trained on and the one the sampler walks through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.diffusion.edm import EDM, EDMConfig
from core.diffusion.registry import LOSS_WEIGHTING_NAMES, PREDICTION_NAMES, check_implemented
from core.diffusion.schedules import SCHEDULES, make_betas
from core.io.jsonio import dataclass_from_dict

ModelFn = Callable[..., torch.Tensor]

# What the network predicts (Salimans & Ho 2022): the noise eps, the clean image x0, or the
# velocity v = sqrt(ab) eps - sqrt(1 - ab) x0. Declared in the registry.
PREDICTIONS: tuple[str, ...] = PREDICTION_NAMES
# How the per-timestep losses are weighted: "uniform" (Ho et al.'s simple loss) or min-SNR-gamma
# (Hang et al. 2023), adapted to the target so that each equals min(snr, gamma) times the x0 error.
LOSS_WEIGHTINGS: tuple[str, ...] = LOSS_WEIGHTING_NAMES
# min(snr, g) x0-error == the target's error times these (eps: snr, v: snr + 1 times x0's);
# (clipped snr, snr) -> weights, one per prediction target
_MIN_SNR_WEIGHTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "eps": lambda clipped, snr: clipped / snr,
    "x0": lambda clipped, snr: clipped,
    "v": lambda clipped, snr: clipped / (snr + 1.0),
}
# (snr, gamma) -> the per-timestep loss weights, one per loss weighting
_LOSS_WEIGHTS: dict[str, Callable[[torch.Tensor, float, str], torch.Tensor]] = {
    "uniform": lambda snr, gamma, prediction: torch.ones_like(snr),
    "min_snr": lambda snr, gamma, prediction: _MIN_SNR_WEIGHTS[prediction](snr.clamp(max=gamma), snr),
}
check_implemented("prediction targets", PREDICTIONS, _MIN_SNR_WEIGHTS)
check_implemented("loss weightings", LOSS_WEIGHTINGS, _LOSS_WEIGHTS)
MAX_T = 100_000  # far beyond any use (1000 is standard); a bound so a crafted config cannot exhaust memory


@dataclass
class DiffusionConfig:
    T: int = 1000
    schedule: str = "linear"
    prediction: str = "eps"
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    zero_terminal_snr: bool = False
    # Which process: always "vp" here (EDM's config says "edm"); a dict without it is "vp".
    kind: str = "vp"

    def __post_init__(self) -> None:
        if self.kind != "vp":
            raise ValueError(f"unknown diffusion kind {self.kind!r}; known kinds: vp, edm")
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"diffusion T must be a positive integer, got {self.T!r}")
        if self.T > MAX_T:
            raise ValueError(f"diffusion T must be at most {MAX_T:,}, got {self.T:,}")
        for name, value, known in (("schedule", self.schedule, SCHEDULES),
                                   ("prediction", self.prediction, PREDICTIONS),
                                   ("loss weighting", self.loss_weighting, LOSS_WEIGHTINGS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known {name}s: {', '.join(known)}")
        gamma = self.min_snr_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float("inf"):
            raise ValueError(f"min_snr_gamma must be a positive number, got {gamma!r}")
        self.min_snr_gamma = float(gamma)
        if not isinstance(self.zero_terminal_snr, bool):
            raise ValueError(f"zero_terminal_snr must be true or false, got {self.zero_terminal_snr!r}")
        if self.zero_terminal_snr and self.prediction == "eps":
            raise ValueError("zero_terminal_snr needs prediction 'v' or 'x0': at alpha_bar_T = 0 the "
                             "input is pure noise, so a noise prediction says nothing about the image")
        if self.zero_terminal_snr and self.T < 2:
            raise ValueError("zero_terminal_snr needs T >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        """Missing keys take their defaults, so configs written before a field existed load as then."""
        return dataclass_from_dict(cls, data, "diffusion config")


class Diffusion(nn.Module):
    """Gaussian diffusion with a fixed beta schedule (Ho et al. 2020).

    The one place for converting between what the network predicts (eps, x0 or v), the
    clean image and the noise, and for the posterior. Every method takes ``t`` either as a
    tensor of shape (B,) (training: per-sample timesteps, float32 buffers) or as a Python
    int (samplers: one timestep for the batch, float64 coefficients as Python scalars, which
    costs no extra kernel launch).
    """

    kind = "vp"
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
    loss_weights: torch.Tensor

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DiffusionConfig()
        self.T = self.config.T
        self.prediction = self.config.prediction
        table = self.schedule_float64(self.config)
        self._table = {name: value.tolist() for name, value in table.items()}
        for name, value in table.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    @staticmethod
    def schedule_float64(config: DiffusionConfig) -> dict[str, torch.Tensor]:
        """Every per-timestep coefficient, in float64."""
        betas = make_betas(config.schedule, config.T, zero_terminal_snr=config.zero_terminal_snr)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        if config.zero_terminal_snr:
            alpha_bars[-1] = 0.0  # exactly; the cumprod of an exact 0 is 0 already
        alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        one_minus = 1.0 - alpha_bars
        posterior_variance = betas * (1.0 - alpha_bars_prev) / one_minus
        # The variance is 0 at t = 0; like Ho et al., the log uses the t = 1 value there.
        first = posterior_variance[1:2] if config.T > 1 else betas[:1]
        posterior_log_variance_clipped = torch.log(torch.cat([first, posterior_variance[1:]]))
        snr = alpha_bars / one_minus
        loss_weights = _LOSS_WEIGHTS[config.loss_weighting](snr, config.min_snr_gamma, config.prediction)
        with torch.no_grad():  # 1 / sqrt(0) = inf at a zero-terminal-SNR step; never used there
            recip = alpha_bars.rsqrt()
            recipm1 = (1.0 / alpha_bars - 1.0).sqrt()
        return {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sqrt_one_minus_alpha_bars": one_minus.sqrt(),
            "sqrt_recip_alpha_bars": recip,
            "sqrt_recipm1_alpha_bars": recipm1,
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * alpha_bars_prev.sqrt() / one_minus,
            "posterior_mean_coef2": (1.0 - alpha_bars_prev) * alphas.sqrt() / one_minus,
            "loss_weights": loss_weights,
        }

    @property
    def max_sampler_steps(self) -> int:
        """The most steps a sampler can take: one per timestep."""
        return self.T

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

    def schedule_table(self, name: str) -> list[float]:
        """The float64 coefficients ``name`` as a list of Python floats (one per timestep)."""
        return self._table[name]

    def coef(self, name: str, t: torch.Tensor | int, x: torch.Tensor) -> Any:
        """Schedule coefficient ``name`` at ``t``: a float64 Python scalar for an int t, else a
        (B, 1, ...) tensor gathered from the float32 buffer."""
        if isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < self.T:
                raise ValueError(f"timestep {t} is outside 0..{self.T - 1}")
            return self._table[name][t]
        return self._gather(getattr(self, name), t, x)

    # -- forward process and conversions ---------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. Not clamped."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self.coef("sqrt_alpha_bars", t, x0) * x0 + self.coef("sqrt_one_minus_alpha_bars", t, x0) * noise

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab); undefined where ab = 0 (zero terminal SNR)."""
        return self.coef("sqrt_recip_alpha_bars", t, x_t) * x_t - self.coef("sqrt_recipm1_alpha_bars", t, x_t) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab); defined at every step (ab < 1 always)."""
        return (x_t - self.coef("sqrt_alpha_bars", t, x_t) * x0) / self.coef("sqrt_one_minus_alpha_bars", t, x_t)

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)."""
        return self.coef("sqrt_alpha_bars", t, x0) * eps - self.coef("sqrt_one_minus_alpha_bars", t, x0) * x0

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        return self.coef("sqrt_alpha_bars", t, x_t) * x_t - self.coef("sqrt_one_minus_alpha_bars", t, x_t) * v

    def predict_eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        return self.coef("sqrt_one_minus_alpha_bars", t, x_t) * x_t + self.coef("sqrt_alpha_bars", t, x_t) * v

    def training_target(self, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for (x0, eps) at t, by ``config.prediction``."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        if self.prediction != "v":
            raise ValueError(f"unknown prediction {self.prediction!r}")
        return self.v_from_x0_eps(x0, t, eps)

    def model_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, out: torch.Tensor) -> torch.Tensor:
        """The clean image implied by the network output ``out`` (whatever it predicts)."""
        if self.prediction == "eps":
            return self.predict_x0_from_eps(x_t, t, out)
        if self.prediction == "x0":
            return out
        if self.prediction != "v":
            raise ValueError(f"unknown prediction {self.prediction!r}")
        return self.predict_x0_from_v(x_t, t, out)

    def model_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, out: torch.Tensor) -> torch.Tensor:
        """The noise implied by the network output ``out`` (whatever it predicts)."""
        if self.prediction == "eps":
            return out
        if self.prediction == "x0":
            return self.predict_eps_from_x0(x_t, t, out)
        if self.prediction != "v":
            raise ValueError(f"unknown prediction {self.prediction!r}")
        return self.predict_eps_from_v(x_t, t, out)

    def model_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, out: torch.Tensor,
                     clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by ``out``. With clip_x0, x0 is clipped to [-1, 1] and eps is
        recomputed from it, so the pair stays consistent with x_t."""
        x0 = self.model_x0(x_t, t, out)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            return x0, self.predict_eps_from_x0(x_t, t, x0)
        return x0, self.model_eps(x_t, t, out)

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, Any, Any]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
        mean = self.coef("posterior_mean_coef1", t, x_t) * x0 + self.coef("posterior_mean_coef2", t, x_t) * x_t
        variance = self.coef("posterior_variance", t, x_t)
        log_variance = self.coef("posterior_log_variance_clipped", t, x_t)
        return mean, variance, log_variance

    # -- training objective --------------------------------------------------------------

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.T, (batch,), device=device, generator=generator)

    def draw_training_noise(self, x0: torch.Tensor,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t ~ U{0..T-1}, noise ~ N(0, I)) for the batch ``x0``, drawn in this order."""
        t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, noise

    def training_loss(
        self,
        model: ModelFn,
        x0: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        drawn: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """MSE between model(x_t, t, labels) and the target of ``config.prediction``.

        t ~ U{0..T-1} and noise ~ N(0, I), both drawn with ``generator`` (which must live on
        x0's device) when one is given. "uniform" weighting is Ho et al.'s simple loss (for eps:
        exactly the original's); "min_snr" weights each sample's mean squared error by
        ``loss_weights[t]``. The loss is computed in float32 even when the model runs under
        autocast. ``drawn``: (t, noise) already drawn by :meth:`draw_training_noise` for a larger
        batch this one is a slice of (gradient accumulation draws for the whole batch).
        """
        if generator is not None and generator.device.type != x0.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the batch is on {x0.device}; "
                "create the generator on the batch's device"
            )
        t, noise = drawn if drawn is not None else self.draw_training_noise(x0, generator)
        x_t = self.q_sample(x0, t, noise)
        pred = model(x_t, t, labels)
        if pred.shape != noise.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(noise.shape)}")
        target = self.training_target(x0, t, noise)
        if self.config.loss_weighting == "uniform":
            return F.mse_loss(pred.float(), target.float())
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        return (self.loss_weights.to(x0.device)[t].float() * per_sample).mean()

    def extra_repr(self) -> str:
        c = self.config
        return (f"T={self.T}, schedule={c.schedule!r}, prediction={c.prediction!r}, "
                f"loss_weighting={c.loss_weighting!r}, zero_terminal_snr={c.zero_terminal_snr}")



# -- both processes ----------------------------------------------------------------------------

ProcessConfig = DiffusionConfig | EDMConfig
Process = Diffusion | EDM


def config_from_dict(data: dict[str, Any]) -> ProcessConfig:
    """A stored diffusion config (config.json's "diffusion", a checkpoint's diffusion_config)
    as the config of its process: ``"kind": "edm"`` is EDM's, anything else (no kind, as
    every dict written before EDM) the VP one's, which checks its keys."""
    if isinstance(data, dict) and data.get("kind") == "edm":
        return EDMConfig.from_dict(data)
    return DiffusionConfig.from_dict(data)


def build_process(config: ProcessConfig) -> Process:
    """The process a config describes: :class:`EDM` or :class:`Diffusion`."""
    return EDM(config) if isinstance(config, EDMConfig) else Diffusion(config)
