"""The diffusion vocabulary, torch-free: the names of presets, schedules, targets, loss
weightings, samplers, weights and autocast modes, so that `--help`, the studio's forms and
config.json validation never import torch.

Schedules, prediction targets, loss weightings and samplers are declared here once, each
name with a one-line help; the modules that implement them (schedules.py, process.py,
samplers.py) dispatch on these names, schedules.py and process.py check at import that they
implement exactly the declared ones (tests/core/diffusion/test_registry.py checks all four). Adding a sampler is one
:class:`SamplerSpec` entry in ``SAMPLER_SPECS`` plus its ``iter_*`` function."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

# The original project's (dogs-image-generator-DDPM's) training recipe, network preset and
# block design are called "classic"; before that rename they were "seed", and configs,
# checkpoints and command lines that say so still mean the same thing. Declared once here:
# recipes, presets and block designs all read former names through current_name.
FORMER_NAMES = {"seed": "classic"}
PRESET_NAMES = ("classic", "small", "tiny", "res-small", "res-tiny")
PRESET_IMAGE_SIZE = {"classic": 64, "small": 64, "tiny": 32, "res-small": 32, "res-tiny": 32}  # the size a preset is made for
BLOCK_NAMES = ("classic", "resnet")  # UNet block designs

# name -> one-line help, in the order shown in choices
SCHEDULE_HELP: dict[str, str] = {
    "linear": "betas evenly spaced from 1e-4 to 0.02 (the original's)",
    "cosine": "Nichol & Dhariwal (2021): alpha_bar follows a squared cosine",
    "sigmoid": "Jabri et al. (2023): alpha_bar follows a sigmoid",
}
PREDICTION_HELP: dict[str, str] = {
    "eps": "the noise eps (Ho et al. 2020)",
    "x0": "the clean image x0",
    "v": "the velocity v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)",
}
LOSS_WEIGHTING_HELP: dict[str, str] = {
    "uniform": "every timestep alike (Ho et al.'s simple loss)",
    "min_snr": "min-SNR-gamma (Hang et al. 2023): min(snr, gamma) times the x0 error",
}
# Which diffusion process a run trains (core.diffusion.process / core.diffusion.edm).
FORMULATION_HELP: dict[str, str] = {
    "vp": "the discrete variance-preserving process of Ho et al. 2020 (T, schedule, prediction, loss weighting)",
    "edm": "Karras et al. 2022 (EDM): continuous sigma, preconditioned network, log-normal noise levels",
}
SCHEDULE_NAMES = tuple(SCHEDULE_HELP)
FORMULATION_NAMES = tuple(FORMULATION_HELP)
PREDICTION_NAMES = tuple(PREDICTION_HELP)
LOSS_WEIGHTING_NAMES = tuple(LOSS_WEIGHTING_HELP)

AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICE_SUGGESTIONS = ("auto", "cpu", "cuda", "mps")
MAX_SEED = 2**63 - 1
# The most images one `sample` or `eval` draws: 50,000 is FID's customary sample size, and
# a bound keeps a typo (--n 1000000000000) from running for days.
MAX_IMAGES = 50_000
# One guidance default for every draw of a conditional model (`sample`, `eval`, and the
# trainer's grids and evaluations through its --sample-guidance, also 3), so that a FID
# describes the images one looks at. 1 is plain conditional sampling (what an unconditional
# model's draws record); evaluations at other guidances are compared only among themselves.
DEFAULT_GUIDANCE = 3.0
WEIGHT_NAMES = ("ema", "raw")
# Power EMA (core.diffusion.power_ema): the sigma_rel it tracks, and the largest one that exists
# (sigma_rel peaks near 0.29, at an exponent just below 0).
EMA_KINDS = ("exp", "power")
EMA_PROFILES = (0.05, 0.10)
MAX_SIGMA_REL = 0.28
EMA_SWEEP = (0.03, 0.05, 0.075, 0.10, 0.15, 0.20)  # eval --sweep-ema's default lengths


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler. ``function`` names its iterator as "module:attribute" (a generator
    function ``(model, diffusion, shape, *, clip_x0, [steps], [eta], **common)`` yielding
    SampleSteps), imported only when sampling, so this table stays torch-free.
    ``edm_function`` names the one for an EDM model (core.diffusion.edm); None: the sampler
    does not apply to EDM (it walks a VP model's discrete timesteps)."""

    name: str  # on the command line, in config and file names ("ddim50")
    function: str
    label: str  # for people: the studio's drop-down, messages
    help: str  # one line
    uses_steps: bool  # False: runs all T steps
    uses_eta: bool
    default_steps: int | None  # the function's own default; None when it runs all T steps
    edm_function: str | None = None

    def resolve(self, kind: str = "vp") -> Callable[..., Any]:
        """The iterator for a model of process ``kind`` ("vp" or "edm"); ValueError when
        this sampler does not apply to it."""
        name = self.function if kind == "vp" else self.edm_function
        if name is None:
            raise ValueError(f"{self.name} runs a VP model's T discrete steps; this is an EDM model "
                             f"(--recipe edm): sample it with {' or '.join(edm_sampler_names())}")
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)


SAMPLER_SPECS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ddpm", "core.diffusion.samplers:iter_ddpm", "DDPM",
                "ancestral sampling through all T steps, as the original", False, False, None),
    SamplerSpec("ddim", "core.diffusion.samplers:iter_ddim", "DDIM",
                "Song et al. 2021; deterministic at eta 0, DDPM-like at eta 1 (EDM models: Euler, eta 0)",
                True, True, 50, "core.diffusion.edm_samplers:iter_euler"),
    SamplerSpec("dpmpp2m", "core.diffusion.samplers:iter_dpmpp2m", "DPM-Solver++ 2M",
                "DPM-Solver++(2M), good in 10-20 steps", True, False, 20, "core.diffusion.edm_samplers:iter_dpmpp2m"),
    SamplerSpec("heun", "core.diffusion.samplers:iter_heun", "Heun",
                "Heun's 2nd order ODE step (2 model calls a step)", True, False, 20,
                "core.diffusion.edm_samplers:iter_heun"),
)}
SAMPLER_NAMES = tuple(SAMPLER_SPECS)  # the built-in ones; read SAMPLER_SPECS where a new entry must show
# The sampler every draw uses unless told otherwise (`sample`, `eval`, the Sample screen, the
# trainer's grids and evaluations for new runs), at its own default steps: DPM-Solver++(2M)
# at 20 steps came within a few percent of DDIM-100's FID with 5x fewer model calls
# (bench/RESULTS.md, "Samplers: FID against steps").
DEFAULT_SAMPLER = "dpmpp2m"


def edm_sampler_names() -> list[str]:
    """The samplers that take an EDM model."""
    return [s.name for s in SAMPLER_SPECS.values() if s.edm_function is not None]


def sampler_spec(name: str) -> SamplerSpec:
    """The table's entry for ``name``; ValueError naming the known samplers otherwise."""
    spec = SAMPLER_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLER_SPECS)}")
    return spec


def default_steps(name: str) -> int:
    """The steps a draw with sampler ``name`` takes when none are asked for (its own default;
    1 for a sampler that runs all T steps, where the number is not used)."""
    return sampler_spec(name).default_steps or 1


def sampler_help() -> str:
    """One line for --sampler: every sampler with its help."""
    return "; ".join(f"{s.name}: {s.help}" for s in SAMPLER_SPECS.values()) + f" (default: {DEFAULT_SAMPLER})"


def steps_help() -> str:
    """One line for --steps: which samplers take it."""
    takes = [s.name for s in SAMPLER_SPECS.values() if s.uses_steps]
    others = [s.name for s in SAMPLER_SPECS.values() if not s.uses_steps]
    defaults = ", ".join(f"{s.name} {s.default_steps}" for s in SAMPLER_SPECS.values() if s.uses_steps)
    return (f"steps for {', '.join(takes)}" + (f" ({', '.join(others)} uses T)" if others else "")
            + f"; default: the sampler's own ({defaults})")


def check_implemented(kind: str, declared: tuple[str, ...] | dict, implemented: dict) -> None:
    """Raise unless ``implemented`` covers exactly the ``declared`` names (at import of the
    implementing module, so a name cannot be declared without code or coded undeclared)."""
    if set(declared) != set(implemented):
        missing, extra = sorted(set(declared) - set(implemented)), sorted(set(implemented) - set(declared))
        raise ImportError(f"{kind}: declared but not implemented {missing}, implemented but not declared {extra}")


def current_name(name):
    """A recipe, preset or block name as spelled today: a former name (``seed``) gives its
    current one (``classic``); anything else (including a non-string) is returned as is."""
    return FORMER_NAMES.get(name, name) if isinstance(name, str) else name
